"""A local HTTP server that speaks CMR, the PDS Search API and the arXiv export API, built from the bundled samples.

This module puts the three simulators on one port with the shared fault injection
(:mod:`st_workflow.testing.faults`); the names that lived here before the split are re-exported from it.

It exists so that the real HTTP code paths (paging, retries, incremental ingest) run offline — in tests, in the
end-to-end flow test and in demo-like configs. It is a real ``ThreadingHTTPServer`` on ``127.0.0.1``:

* **CMR** (``/search/...``): :mod:`st_workflow.testing.cmr`;
* **PDS** (``/api/search/1/...``): :mod:`st_workflow.testing.pds`;
* **arXiv** (``/api/query``): :mod:`st_workflow.testing.arxiv`.

Faults are injected on demand, consumed first-in first-out by the next matching requests: ``429`` (with
``Retry-After``), ``503``, ``stall`` (hold the response past the client's timeout), ``truncate`` (send half the body
with a matching ``Content-Length``), ``drop`` (close the connection without answering), ``partial`` (CMR: half the
page with ``CMR-Time-Out: true``; PDS: every other item of the page missing, unflagged, as a failed registry shard
gives). ``max_page_items`` makes every page shorter than asked, as real servers may. Every request is logged in
``requests``.

Example (tests, flows)::

    with ReplayServer() as srv:
        srv.inject("429", route="cmr", retry_after=1)
        cfg = load_config("configs/tiny.yaml", [f"ingest.sources.cmr.base_url={srv.cmr_url}",
                                                "ingest.sources.cmr.from_file=null"])

Standalone (demo-like configs)::

    python -m st_workflow.testing.replay_server --port 8765
    # CmrSource.base_url: http://127.0.0.1:8765          (CMR root; /search/collections.umm_json is appended)
    # PdsSource.base_url: http://127.0.0.1:8765/api/search/1
    # ArxivApiConfig.base_url: http://127.0.0.1:8765/api/query
"""

from __future__ import annotations

import argparse
import threading
import time
from urllib.parse import parse_qsl, urlsplit

from st_workflow.testing import faults as _faults
from st_workflow.testing.arxiv import ARXIV_FILES, ArxivApi, ArxivPapers, atom_feed
from st_workflow.testing.cmr import (
    CMR_DUMP,
    CMR_PARAMS,
    CMR_RECORDED,
    UMM_CONTENT_TYPE,
    CmrApi,
    CmrCollections,
)
from st_workflow.testing.faults import FAULT_KINDS, Fault, FaultQueue
from st_workflow.testing.http import ApiRequest, GetServer, LoggedRequest, QuietHandler, Reply, json_reply
from st_workflow.testing.pds import (
    PDS_BUNDLES,
    PDS_COLLECTIONS,
    PDS_CONTEXT,
    PDS_HARVEST_BATCH,
    PdsApi,
    PdsProducts,
    PdsQueryError,
    context_to_api_item,
    parse_pds_query,
)
from st_workflow.testing.samples import SAMPLES

__all__ = [
    "ARXIV_FILES",
    "CMR_DUMP",
    "CMR_PARAMS",
    "CMR_RECORDED",
    "FAULT_KINDS",
    "PDS_BUNDLES",
    "PDS_COLLECTIONS",
    "PDS_CONTEXT",
    "PDS_HARVEST_BATCH",
    "SAMPLES",
    "UMM_CONTENT_TYPE",
    "ArxivPapers",
    "CmrCollections",
    "Fault",
    "LoggedRequest",
    "PdsProducts",
    "PdsQueryError",
    "ReplayServer",
    "atom_feed",
    "context_to_api_item",
    "main",
    "parse_pds_query",
]


class ReplayServer(GetServer):
    """CMR + PDS + arXiv replay on ``127.0.0.1`` (a free port unless ``port`` is given); a context manager.

    Attributes:
        cmr: the searchable CMR collection store (add/revise/delete records between ingests).
        pds: the PDS product store.
        arxiv: the arXiv paper store.
        faults: the injected faults; :meth:`inject` is its :meth:`~st_workflow.testing.faults.FaultQueue.inject`
            (routes ``cmr``, ``pds``, ``arxiv``) and :meth:`pending_faults` its ``pending``.
        requests: every request received, in order.
        max_page_items: cap on items per page (fewer than asked), or None.
    """

    def __init__(
        self, port: int = 0, *, max_page_items: int | None = None, pds_harvest_batch: int = PDS_HARVEST_BATCH
    ) -> None:
        cmr, pds, arxiv = CmrApi(), PdsApi(harvest_batch=pds_harvest_batch), ArxivApi()
        self.apis: tuple[CmrApi | PdsApi | ArxivApi, ...] = (cmr, pds, arxiv)
        self.cmr = cmr.collections
        self.pds = pds.products
        self.arxiv = arxiv.papers
        self.recorded = cmr.recorded
        self.max_page_items = max_page_items
        self.requests: list[LoggedRequest] = []
        self.faults = FaultQueue()
        self.inject = self.faults.inject
        self.pending_faults = self.faults.pending
        self._lock = threading.Lock()
        super().__init__("replay-server", port)

    @property
    def cmr_url(self) -> str:
        """Value for ``CmrSource.base_url``."""
        return self.url

    @property
    def pds_url(self) -> str:
        """Value for ``PdsSource.base_url``."""
        return f"{self.url}/api/search/1"

    @property
    def arxiv_url(self) -> str:
        """Value for ``ArxivApiConfig.base_url``."""
        return f"{self.url}/api/query"

    def requests_to(self, route: str) -> list[LoggedRequest]:
        """Requests received on one route."""
        with self._lock:
            return [r for r in self.requests if r.route == route]

    def handle_get(self, handler: QuietHandler) -> None:
        """Log the request, route it by path prefix, apply the next matching fault and send the answer."""
        parts = urlsplit(handler.path)
        req = ApiRequest(
            parts.path,
            parse_qsl(parts.query, keep_blank_values=True),
            {k.lower(): v for k, v in handler.headers.items()},
            self.url,
            self.max_page_items,
        )
        api = next((a for a in self.apis if req.path.startswith(a.prefix)), None)
        logged = LoggedRequest(api.route if api else "other", req.path, req.params, req.headers, time.time())
        with self._lock:
            self.requests.append(logged)
        fault = self.faults.take(logged.route)
        logged.fault = fault.kind if fault else None

        def answer() -> Reply:
            if api is None:
                return json_reply(404, {"errors": [f"not found: {req.path}"]})
            return api.answer(req)

        reply = _faults.apply(
            fault, handler, answer, closing=self.closing, partial=api.partial if api else None
        )
        if reply is not None:
            logged.status = reply.status
            handler.send_reply(reply)


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted: ``python -m st_workflow.testing.replay_server --port 8765``."""
    parser = argparse.ArgumentParser(
        description="Replay CMR, PDS and arXiv API responses built from the bundled samples."
    )
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument(
        "--max-page-items", type=int, default=None, help="return at most this many items per page"
    )
    args = parser.parse_args(argv)
    srv = ReplayServer(args.port, max_page_items=args.max_page_items).start()
    print(f"replay server on {srv.url}")
    print(f"  CMR   base_url: {srv.cmr_url}   ({len(srv.cmr)} collections)")
    print(f"  PDS   base_url: {srv.pds_url}   ({len(srv.pds)} products)")
    print(f"  arXiv base_url: {srv.arxiv_url}   ({len(srv.arxiv)} papers)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
