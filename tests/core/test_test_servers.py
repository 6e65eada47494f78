"""The test servers' shared pieces: one fault queue and one way to apply a fault, per-API simulators on their own."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from st_workflow.testing import faults
from st_workflow.testing.arxiv import ArxivApi
from st_workflow.testing.cmr import CmrApi
from st_workflow.testing.http import ApiRequest, GetServer, QuietHandler, Reply
from st_workflow.testing.pds import PdsApi


class _Echo(GetServer):
    """The smallest server on the shared pieces: every GET answers its path, through the fault queue."""

    def __init__(self) -> None:
        self.faults = faults.FaultQueue()
        super().__init__("echo")

    def handle_get(self, handler: QuietHandler) -> None:
        fault = self.faults.take("echo")
        reply = faults.apply(
            fault,
            handler,
            lambda: Reply(200, json.dumps({"path": handler.path}).encode(), "application/json"),
            closing=self.closing,
            partial=lambda r: r.but(body=b"{}", headers={"X-Partial": "1"}),
        )
        if reply is not None:
            handler.send_reply(reply)


def test_faults_apply_in_order_after_the_requests_let_through() -> None:
    with _Echo() as srv:
        srv.faults.inject("429", retry_after=2, after=1)
        srv.faults.inject("truncate", route="echo")
        srv.faults.inject("partial")
        srv.faults.inject("drop", route="elsewhere")  # another route's: never taken here
        with httpx.Client(base_url=srv.url) as client:
            assert client.get("/a").json() == {"path": "/a"}
            r = client.get("/b")
            assert r.status_code == 429 and r.headers["Retry-After"] == "2"
            assert r.json() == {"errors": ["injected 429"]}
            r = client.get("/c")
            assert r.status_code == 200 and r.content == b'{"path": "/c"}'[:7]
            r = client.get("/d")
            assert r.content == b"{}" and r.headers["X-Partial"] == "1"
        assert srv.faults.pending() == 1


def test_a_dropped_connection_sends_nothing_and_a_stall_ends_with_the_server() -> None:
    srv = _Echo().start()
    try:
        srv.faults.inject("drop")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{srv.url}/x", timeout=5)
        srv.faults.inject("stall", stall_s=600)
        got: list[object] = []
        t = threading.Thread(target=lambda: got.append(httpx.get(f"{srv.url}/y", timeout=30)))
        t.start()
        while srv.faults.pending():  # the stalled request has taken its fault
            threading.Event().wait(0.01)
    finally:
        srv.stop()
    t.join(timeout=30)
    assert not t.is_alive()


def test_unknown_fault_kinds_are_refused() -> None:
    q = faults.FaultQueue(("503",))
    with pytest.raises(ValueError, match="unknown fault 'drop'"):
        q.inject("drop")


def test_each_api_answers_without_a_server() -> None:
    """The simulators are plain objects: a request in, a reply out (the server only routes and applies faults)."""
    base = "http://127.0.0.1:1"
    cmr = CmrApi().answer(ApiRequest("/search/collections.umm_json", [("page_size", "3")], {}, base, 2))
    assert cmr.status == 200 and len(json.loads(cmr.body)["items"]) == 2 and cmr.headers["CMR-Hits"] == "1433"
    assert CmrApi.partial(cmr).headers["CMR-Time-Out"] == "true"
    pds = PdsApi().answer(ApiRequest("/api/search/1/products", [("q", "(title eq")], {}, base))
    assert pds.status == 400 and "q" in json.loads(pds.body)["message"]
    atom = ArxivApi().answer(
        ApiRequest("/api/query", [("search_query", "cat:gr-qc"), ("max_results", "2")], {}, base)
    )
    assert atom.ctype.startswith("application/atom+xml") and atom.body.count(b"<entry>") == 2
