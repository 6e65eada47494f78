"""CMR simulator: collection search over the bundled UMM-C records, recorded responses, deleted collections.

* ``GET /search/collections.umm_json``: the 1,433 bundled UMM-C records, filtered by ``provider``, ``short_name``,
  ``concept_id``, ``project``, ``keyword`` and ``revision_date[]`` (``start,end``, either side open), paged by
  ``page_size`` (0..2000, larger is the real 400 error) and ``CMR-Search-After`` (request header in, response header
  out), with ``CMR-Hits``/``CMR-Took``/``CMR-Request-Id``. A request that matches a recorded one exactly (MUR,
  POCLOUD) gets the recorded body and headers; ``/search/granules.umm_json`` replays the recorded three-page
  MOD02QKM ``CMR-Search-After`` chain and ``/search/collections.json`` the recorded SWOT ATOM pages.
* ``GET /search/deleted-collections?revision_date=<start>`` lists the collections deleted since then (and not
  ingested again) as XML references, the only format CMR offers for it.

A ``partial`` fault answers as CMR does when a query hits its internal timeout: half the page, ``CMR-Time-Out: true``.
:class:`CmrApi` is served by :class:`~st_workflow.testing.replay_server.ReplayServer`.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import json
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape

from st_workflow.testing.http import ApiRequest, Reply, json_reply
from st_workflow.testing.samples import load_jsonl, now_z, sample_path

__all__ = ["CMR_DUMP", "CMR_RECORDED", "CmrApi", "CmrCollections"]

CMR_DUMP = "cmr/collections.umm_json.nasa-cmr-inventory.dedup1433.trimmed.jsonl"
CMR_RECORDED = (
    "cmr/collections.umm_json.MUR-JPL-L4-GLOB-v4.1",
    "cmr/collections.umm_json.POCLOUD_cloud_hosted.page1.first5items",
    "cmr/collections.json.SWOT_L2_HR_RiverSP_reach_2.0.page_size0",
    "cmr/collections.json.SWOT_L2_HR_RiverSP_reach_2.0.page_size1",
    "cmr/granules.umm_json.MOD02QKM.search_after_page1",
    "cmr/granules.umm_json.MOD02QKM.search_after_page2",
    "cmr/granules.umm_json.MOD02QKM.search_after_page3",
)
UMM_CONTENT_TYPE = "application/vnd.nasa.cmr.umm_results+json;version=1.18.1; charset=utf-8"
CMR_PARAMS = {
    "page_size",
    "page_num",
    "provider",
    "provider[]",
    "provider_short_name",
    "short_name",
    "short_name[]",
    "concept_id",
    "concept_id[]",
    "project",
    "project[]",
    "keyword",
    "revision_date",
    "revision_date[]",
    "cloud_hosted",
    "temporal",
    "temporal[]",
    "sort_key",
    "sort_key[]",
    "version",
}


@dataclasses.dataclass(frozen=True)
class _Recorded:
    """A recorded exchange: the request it answers (path, sorted params, ``CMR-Search-After``) and the reply."""

    path: str
    params: list[tuple[str, str]]
    search_after: str | None
    reply: Reply


def _load_recorded(stem: str) -> _Recorded:
    base = sample_path(stem)
    meta = json.loads(Path(f"{base}.meta.json").read_text(encoding="utf-8"))
    uri = urlsplit(meta["request"]["uri"])
    request_headers = {k.lower(): v[0] for k, v in meta["request"]["headers"].items()}
    headers = {k: v[0] for k, v in meta["response"]["headers"].items()}
    reply = Reply(
        int(meta["response"]["status"]["code"]),
        Path(f"{base}.body.json").read_bytes(),
        headers.pop("Content-Type", "application/json"),
        headers,
    )
    return _Recorded(
        uri.path,
        sorted(parse_qsl(uri.query, keep_blank_values=True)),
        request_headers.get("cmr-search-after"),
        reply,
    )


class CmrCollections:
    """The CMR collection store the server searches; tests add, revise and delete records to exercise incremental
    ingest (a revision gets a new ``revision-id`` and ``revision-date``)."""

    def __init__(self, items: Iterable[dict[str, Any]]) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, dict[str, Any]] = {}
        #: concept-id -> (tombstone revision-date, the last live revision's item) of collections deleted and not
        #: ingested again: what ``/search/deleted-collections`` reports.
        self._tombstones: dict[str, tuple[str, dict[str, Any]]] = {}
        for item in items:
            self._items[item["meta"]["concept-id"]] = item

    def __len__(self) -> int:
        return len(self._items)

    def ids(self) -> list[str]:
        """Every concept-id held."""
        with self._lock:
            return sorted(self._items)

    def get(self, concept_id: str) -> dict[str, Any]:
        """A deep copy of one record."""
        with self._lock:
            return copy.deepcopy(self._items[concept_id])

    def put(self, item: dict[str, Any], revision_date: str | None = None) -> dict[str, Any]:
        """Add or revise a record: bumps ``revision-id`` and stamps ``revision-date`` (default: now, UTC)."""
        item = copy.deepcopy(item)
        cid = item["meta"]["concept-id"]
        with self._lock:
            old = self._items.get(cid)
            # Ingested again after a delete: no longer a deleted collection, and the tombstone took a revision.
            tomb = self._tombstones.pop(cid, None)
            if old is None and tomb is not None:
                revision = int(tomb[1]["meta"].get("revision-id", 0)) + 2
            else:
                revision = int((old or item)["meta"].get("revision-id", 0)) + (1 if old else 0)
            item["meta"]["revision-id"] = revision
            item["meta"]["revision-date"] = revision_date or now_z()
            self._items[cid] = item
        return item

    def delete(self, concept_id: str, revision_date: str | None = None) -> None:
        """Delete a record: it leaves the searches and leaves a tombstone dated ``revision_date`` (default now)."""
        with self._lock:
            old = self._items.pop(concept_id, None)
            if old is not None:
                self._tombstones[concept_id] = (revision_date or now_z(), old)

    def deleted_since(self, since: str) -> list[dict[str, Any]]:
        """The last live revision of each collection deleted at or after ``since`` (and not ingested again)."""
        with self._lock:
            tombs = list(self._tombstones.items())
        return [copy.deepcopy(last) for _, (when, last) in sorted(tombs) if _in_range(when, since, "")]

    def search(self, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """Records matching the query, in the server's stable sort order (entry title, then concept-id)."""
        with self._lock:
            items = list(self._items.values())
        for key, value in params:
            base = key.removesuffix("[]")
            if base in ("provider", "provider_short_name"):
                items = [i for i in items if _glob(i["meta"].get("provider-id", ""), value)]
            elif base == "short_name":
                items = [i for i in items if _glob(i["umm"].get("ShortName", ""), value)]
            elif base == "concept_id":
                items = [i for i in items if i["meta"]["concept-id"] == value]
            elif base == "version":
                items = [i for i in items if i["umm"].get("Version") == value]
            elif base == "project":
                items = [
                    i
                    for i in items
                    if any(_glob(p.get("ShortName", ""), value) for p in i["umm"].get("Projects", []))
                ]
            elif base == "keyword":
                items = [i for i in items if _keyword_match(i, value)]
            elif base == "revision_date":
                lo, _, hi = value.partition(",")
                items = [i for i in items if _in_range(i["meta"].get("revision-date", ""), lo, hi)]
        items.sort(key=_cmr_sort_key)
        return items


def _cmr_sort_key(item: dict[str, Any]) -> list[str]:
    return [str(item["umm"].get("EntryTitle", "")).lower(), item["meta"]["concept-id"]]


def _glob(value: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(value.lower(), pattern.lower())


def _keyword_match(item: dict[str, Any], value: str) -> bool:
    umm = item["umm"]
    hay = " ".join(
        [str(umm.get("EntryTitle", "")), str(umm.get("Abstract", "")), str(umm.get("ShortName", ""))]
        + [
            " ".join(str(v) for v in k.values())
            for k in umm.get("ScienceKeywords", [])
            if isinstance(k, dict)
        ]
    ).lower()
    words = value.lower().split()
    return all((fnmatch.fnmatchcase(hay, f"*{w}*")) for w in words)


def _in_range(ts: str, lo: str, hi: str) -> bool:
    def norm(x: str) -> str:
        return x.strip().replace("+00:00", "Z")

    return (not lo.strip() or norm(ts) >= norm(lo)) and (not hi.strip() or norm(ts) <= norm(hi))


class CmrApi:
    """The CMR search endpoints over a :class:`CmrCollections` store and the recorded responses."""

    route = "cmr"
    prefix = "/search/"

    def __init__(
        self, collections: CmrCollections | None = None, recorded: list[_Recorded] | None = None
    ) -> None:
        self.collections = (
            collections if collections is not None else CmrCollections(load_jsonl(sample_path(CMR_DUMP)))
        )
        self.recorded = recorded if recorded is not None else [_load_recorded(s) for s in CMR_RECORDED]

    def answer(self, req: ApiRequest) -> Reply:
        """The reply to one ``GET``."""
        if (recorded := self._recorded(req.path, req.params, req.headers)) is not None:
            return recorded
        if req.path == "/search/deleted-collections" or req.path.startswith("/search/deleted-collections."):
            return self._deleted(req)
        if req.path != "/search/collections.umm_json":
            return _error(404, f"The resource {req.path} was not found in this replay")
        return self._collections(req)

    @staticmethod
    def partial(reply: Reply) -> Reply:
        """CMR's answer to a query that hit its internal timeout: partial results, flagged by a header."""
        page = json.loads(reply.body)
        page["items"] = page.get("items", [])[: len(page.get("items", [])) // 2]
        return Reply(
            reply.status, json.dumps(page).encode(), reply.ctype, {**reply.headers, "CMR-Time-Out": "true"}
        )

    def _recorded(self, path: str, params: list[tuple[str, str]], headers: dict[str, str]) -> Reply | None:
        """The recorded reply to exactly this request, if any."""
        wanted = sorted(params)
        after = headers.get("cmr-search-after")
        for r in self.recorded:
            if r.path == path and r.params == wanted and r.search_after == after:
                return r.reply
        if after and path.startswith("/search/granules"):
            # The recorded chain ends after page 3: the next page is empty and carries no CMR-Search-After.
            body = json.dumps({"hits": 1404440, "took": 5, "items": []}).encode()
            return Reply(200, body, UMM_CONTENT_TYPE, {"CMR-Hits": "1404440"})
        return None

    def _deleted(self, req: ApiRequest) -> Reply:
        """``GET /search/deleted-collections``: XML references to the last live revision of every collection deleted
        since ``revision_date`` (a single start date), as CMR documents it. XML is the only format: an extension or
        an ``Accept`` header asking for anything else is a 400, as are other parameters and date ranges."""
        path, params = req.path, req.params
        ext = path.removeprefix("/search/deleted-collections").lstrip(".")
        accept = req.headers.get("accept", "").split(";")[0].strip()
        fmt = ext or {
            "application/json": "json",
            "application/vnd.nasa.cmr.umm_results+json": "umm_json",
        }.get(accept, "xml")
        if fmt != "xml":
            return _xml_error(
                400,
                f"Result format [{fmt}] is not supported by deleted collections search. "
                "The only format that is supported is xml.",
            )
        unknown = sorted({k for k, _ in params if k not in ("revision_date", "revision_date[]", "pretty")})
        if unknown:
            return _xml_error(400, f"Parameter [{unknown[0]}] was not recognized.")
        dates = [v for k, v in params if k in ("revision_date", "revision_date[]")]
        if len(dates) > 1:
            return _xml_error(400, f"Only one revision date is allowed, but {len(dates)} were provided.")
        if dates and "," in dates[0]:
            return _xml_error(
                400,
                "Invalid format for revision date, only a starting date is allowed for deleted collections "
                f"search, but was [{dates[0]}]",
            )
        gone = self.collections.deleted_since(dates[0] if dates else "")
        refs = "".join(
            "<reference>"
            f"<name>{escape(str(g['umm'].get('EntryTitle', '')))}</name>"
            f"<id>{escape(g['meta']['concept-id'])}</id>"
            f"<location>{req.base_url}/search/concepts/{escape(g['meta']['concept-id'])}/"
            f"{g['meta'].get('revision-id', 1)}</location>"
            f"<revision-id>{g['meta'].get('revision-id', 1)}</revision-id>"
            "</reference>"
            for g in gone
        )
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<results><hits>{len(gone)}</hits><took>1</took><references>{refs}</references></results>"
        ).encode()
        return Reply(200, body, "application/xml; charset=UTF-8", {"CMR-Hits": str(len(gone))})

    def _collections(self, req: ApiRequest) -> Reply:
        params = req.params
        unknown = sorted({k for k, _ in params if k not in CMR_PARAMS})
        if unknown:
            return _error(400, f"Parameter [{unknown[0]}] was not recognized.")
        get = dict(params)
        raw_size = get.get("page_size", "10")
        if not raw_size.isdigit() or not 0 <= int(raw_size) <= 2000:
            return _error(400, "page_size must be a number between 0 and 2000")
        after_raw = req.headers.get("cmr-search-after")
        if after_raw and ("page_num" in get or "offset" in get):
            return _error(400, "page_num and offset are not allowed with search-after")
        t0 = time.perf_counter()
        items = self.collections.search(params)
        hits = len(items)
        if after_raw:
            try:
                after = json.loads(after_raw)
            except json.JSONDecodeError:
                return _error(400, f"The search-after value [{after_raw}] is not a valid JSON array.")
            items = [i for i in items if _cmr_sort_key(i) > after]
        elif "page_num" in get:
            items = items[(int(get["page_num"]) - 1) * int(raw_size) :]
        size = int(raw_size)
        if req.max_page_items is not None:
            size = min(size, req.max_page_items)
        page = items[:size]
        out_headers = {
            "CMR-Hits": str(hits),
            "CMR-Took": str(int((time.perf_counter() - t0) * 1000)),
            "CMR-Request-Id": str(uuid.uuid4()),
        }
        if page:
            out_headers["CMR-Search-After"] = json.dumps(_cmr_sort_key(page[-1]))
        body = json.dumps({"hits": hits, "took": 1, "items": page}, ensure_ascii=False).encode("utf-8")
        return Reply(200, body, UMM_CONTENT_TYPE, out_headers)


def _error(status: int, message: str) -> Reply:
    return json_reply(
        status, {"errors": [message]}, {"CMR-Request-Id": str(uuid.uuid4())}, "application/json;charset=utf-8"
    )


def _xml_error(status: int, message: str) -> Reply:
    body = f'<?xml version="1.0" encoding="UTF-8"?><errors><error>{escape(message)}</error></errors>'
    return Reply(
        status, body.encode("utf-8"), "application/xml; charset=UTF-8", {"CMR-Request-Id": str(uuid.uuid4())}
    )
