"""A local HTTP server that speaks CMR, the PDS Search API and the arXiv export API, built from the bundled samples.

It exists so that the real HTTP code paths (paging, retries, incremental ingest) run offline — in tests, in the
end-to-end flow test and in demo-like configs. It is a real ``ThreadingHTTPServer`` on ``127.0.0.1``:

* **CMR** ``GET /search/collections.umm_json``: the 1,433 bundled UMM-C records, filtered by ``provider``,
  ``short_name``, ``concept_id``, ``project``, ``keyword`` and ``revision_date[]`` (``start,end``, either side open),
  paged by ``page_size`` (0..2000, larger is the real 400 error) and ``CMR-Search-After`` (request header in,
  response header out), with ``CMR-Hits``/``CMR-Took``/``CMR-Request-Id``. A request that matches a recorded one
  exactly (MUR, POCLOUD) gets the recorded body and headers; ``/search/granules.umm_json`` replays the recorded
  three-page MOD02QKM ``CMR-Search-After`` chain and ``/search/collections.json`` the recorded SWOT ATOM pages.
  ``GET /search/deleted-collections?revision_date=<start>`` lists the collections deleted since then (and not
  ingested again) as XML references, the only format CMR offers for it.
* **PDS** ``GET /api/search/1/{products,collections,bundles}`` (and ``/classes/<name>``): the 1,651 bundled context
  products rendered as Search API ``application/json`` items (descriptions re-wrapped the way labels are, harvest times
  assigned in file order, three products per harvest batch sharing one time) plus the recorded collection and bundle
  items; ``q`` (the PDS query language: ``eq ne gt ge lt le like``, ``and or not``, parentheses), ``keywords``,
  ``limit``, ``start``, ``sort`` + ``search-after`` (one value per sort field, strictly after on the whole sort tuple,
  as the registry's OpenSearch does: items tying with the values sent are not returned).
* **arXiv** ``GET /api/query``: Atom feeds of the bundled Kaggle-format papers with ``search_query`` (``cat:``,
  ``ti:``, ``abs:``, ``all:``, ``AND``/``OR``, ``*`` wildcards), ``start``, ``max_results``, ``sortBy``/``sortOrder``.

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
import contextlib
import copy
import dataclasses
import datetime as dt
import email.utils
import fnmatch
import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape

from st_workflow.resources import resolve_path
from st_workflow.testing.background import BackgroundHTTPServer

SAMPLES = "pkg://samples"
CMR_DUMP = "cmr/collections.umm_json.nasa-cmr-inventory.dedup1433.trimmed.jsonl"
PDS_CONTEXT = "pds/context-pds4.product_context.1651.extracted.jsonl"
PDS_COLLECTIONS = "pds/collections.limit20.first5.api_client_to_dict.json"
PDS_BUNDLES = "pds/bundles.q_lidvid_insight_documents.api_client_to_dict.json"
ARXIV_FILES = (
    "arxiv/arxiv-metadata-oai-snapshot.head60.jsonl",
    "arxiv/arxiv-browse.abs_converted.physics_astro.519.jsonl",
)
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
FAULT_KINDS = ("429", "503", "stall", "truncate", "drop", "partial")


# ================================================================================================ faults and logs
@dataclasses.dataclass
class Fault:
    """One injected failure, applied to the next request on ``route`` (``cmr``, ``pds``, ``arxiv`` or any)."""

    kind: str
    route: str | None = None
    retry_after: str | None = None
    stall_s: float = 5.0
    after: int = 0
    """Let this many matching requests through untouched before failing (e.g. fail mid-way through paging)."""


@dataclasses.dataclass
class LoggedRequest:
    """A request the server received (what the tests assert on)."""

    route: str
    path: str
    params: list[tuple[str, str]]
    headers: dict[str, str]
    at: float
    fault: str | None = None
    status: int | None = None

    def param(self, name: str) -> str | None:
        """First value of a query parameter."""
        return next((v for k, v in self.params if k == name), None)


# ================================================================================================ CMR
def _load_jsonl(path: Path) -> list[Any]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@dataclasses.dataclass
class _Recorded:
    method: str
    path: str
    params: list[tuple[str, str]]
    request_headers: dict[str, str]
    status: int
    headers: dict[str, str]
    body: bytes


def _load_recorded(stem: str) -> _Recorded:
    base = resolve_path(f"{SAMPLES}/{stem}")
    meta = json.loads(Path(f"{base}.meta.json").read_text(encoding="utf-8"))
    body = Path(f"{base}.body.json").read_bytes()
    uri = urlsplit(meta["request"]["uri"])
    return _Recorded(
        method=meta["request"]["method"],
        path=uri.path,
        params=sorted(parse_qsl(uri.query, keep_blank_values=True)),
        request_headers={k.lower(): v[0] for k, v in meta["request"]["headers"].items()},
        status=int(meta["response"]["status"]["code"]),
        headers={k: v[0] for k, v in meta["response"]["headers"].items()},
        body=body,
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
            item["meta"]["revision-date"] = revision_date or _now_z()
            self._items[cid] = item
        return item

    def delete(self, concept_id: str, revision_date: str | None = None) -> None:
        """Delete a record: it leaves the searches and leaves a tombstone dated ``revision_date`` (default now)."""
        with self._lock:
            old = self._items.pop(concept_id, None)
            if old is not None:
                self._tombstones[concept_id] = (revision_date or _now_z(), old)

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


def _now_z() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ================================================================================================ PDS
_TOKEN = re.compile(r'\s*(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|([^\s()"]+))')


class PdsQueryError(ValueError):
    """The ``q`` parameter does not parse (the server answers 400, as the real one does)."""


def parse_pds_query(q: str) -> Callable[[dict[str, Any]], bool]:
    """Compile a PDS query-language string into a predicate on Search API items.

    Example:
        >>> pred = parse_pds_query('(title eq "Mars" or not (lidvid like "urn:*"))')
        >>> pred({"id": "urn:x::1.0", "title": "Mars", "properties": {}})
        True
    """
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(q):
        m = _TOKEN.match(q, pos)
        if not m or m.end() == pos:
            if q[pos:].strip():
                raise PdsQueryError(f"cannot parse q near {q[pos : pos + 20]!r}")
            break
        pos = m.end()
        if m.group(1):
            tokens.append(("(", "("))
        elif m.group(2):
            tokens.append((")", ")"))
        elif m.group(3) is not None:
            tokens.append(("lit", m.group(3).replace('\\"', '"')))
        else:
            tokens.append(("word", m.group(4)))
    ops = {"eq", "ne", "gt", "ge", "lt", "le", "like"}
    idx = 0

    def peek() -> tuple[str, str] | None:
        return tokens[idx] if idx < len(tokens) else None

    def take() -> tuple[str, str]:
        nonlocal idx
        if idx >= len(tokens):
            raise PdsQueryError("q ends too early")
        idx += 1
        return tokens[idx - 1]

    def expr() -> Callable[[dict[str, Any]], bool]:
        left = term()
        while (t := peek()) is not None and t[0] == "word" and t[1].lower() in ("and", "or"):
            take()
            right = term()
            left = (
                (lambda a, b: lambda it: a(it) and b(it))(left, right)
                if t[1].lower() == "and"
                else (lambda a, b: lambda it: a(it) or b(it))(left, right)
            )
        return left

    def term() -> Callable[[dict[str, Any]], bool]:
        t = take()
        if t[0] == "word" and t[1].lower() == "not":
            inner = term()
            return lambda it: not inner(it)
        if t[0] == "(":
            inner = expr()
            if take()[0] != ")":
                raise PdsQueryError("missing ')' in q")
            return inner
        if t[0] != "word":
            raise PdsQueryError(f"expected a field name in q, got {t[1]!r}")
        op = take()
        if op[0] != "word" or op[1].lower() not in ops:
            raise PdsQueryError(f"expected one of {sorted(ops)} after {t[1]!r}, got {op[1]!r}")
        lit = take()
        if lit[0] not in ("lit", "word"):
            raise PdsQueryError(f"expected a value after {t[1]} {op[1]}")
        return _comparison(t[1], op[1].lower(), lit[1])

    if not tokens:
        return lambda it: True
    pred = expr()
    if idx != len(tokens):
        raise PdsQueryError(f"unexpected {tokens[idx][1]!r} in q")
    return pred


def _field_values(item: dict[str, Any], field: str) -> list[str]:
    props = item.get("properties") or {}
    if field in props:
        v = props[field]
        return [str(x) for x in (v if isinstance(v, list) else [v])]
    if field in ("lidvid", "id"):
        return [str(item.get("id", ""))]
    if field in ("title", "product_class") and item.get(field if field == "title" else "type") is not None:
        return [str(item.get(field if field == "title" else "type"))]
    return []


def _comparison(field: str, op: str, lit: str) -> Callable[[dict[str, Any]], bool]:
    def cmp(v: str) -> bool:
        a: Any = v
        b: Any = lit
        with contextlib.suppress(ValueError):
            a, b = float(v), float(lit)
        if op == "eq":
            return a == b
        if op == "ne":
            return a != b
        if op == "gt":
            return a > b
        if op == "ge":
            return a >= b
        if op == "lt":
            return a < b
        if op == "le":
            return a <= b
        return fnmatch.fnmatchcase(str(v).lower(), str(lit).lower())

    if op == "ne":
        return lambda it: all(cmp(v) for v in _field_values(it, field))
    return lambda it: any(cmp(v) for v in _field_values(it, field))


def _wrap(text: str, width: int = 76, indent: str = "      ") -> str:
    """Re-wrap each paragraph like a hand-edited PDS4 label (hard line breaks, indentation)."""
    import textwrap

    paras = [p for p in text.split("\n\n") if p]
    return (
        "\n"
        + "\n\n".join(
            textwrap.fill(
                p,
                width,
                initial_indent=indent,
                subsequent_indent=indent,
                break_long_words=False,
                break_on_hyphens=False,
            )
            for p in paras
        )
        + "\n    "
    )


_REF_TYPE = {
    "investigation": "{ctx}_to_investigation",
    "instrument_host": "instrument_to_instrument_host",
    "telescope": "instrument_to_telescope",
    "facility": "{ctx}_to_facility",
}


def context_to_api_item(rec: dict[str, Any], harvest: str, node: str = "PDS_ENG") -> dict[str, Any]:
    """An extracted PDS4 context product rendered as a Search API ``application/json`` item."""
    lidvid = rec["lidvid"]
    lid, _, vid = lidvid.partition("::")
    ctx = rec.get("context_type") or "Other"
    desc = _wrap(rec.get("description") or "")
    props: dict[str, list[str]] = {
        "lidvid": [lidvid],
        "lid": [lid],
        "vid": [vid],
        "title": [rec["title"]],
        "product_class": ["Product_Context"],
        "pds:Identification_Area.pds:title": [rec["title"]],
        "pds:Identification_Area.pds:logical_identifier": [lid],
        "pds:Identification_Area.pds:version_id": [vid],
        "pds:Identification_Area.pds:product_class": ["Product_Context"],
        f"pds:{ctx}.pds:name": [rec.get("name") or rec["title"]],
        f"pds:{ctx}.pds:description": [desc],
        "description": [desc],
        "ops:Harvest_Info.ops:harvest_date_time": [harvest],
        "ops:Harvest_Info.ops:node_name": [node],
        "ops:Tracking_Meta.ops:archive_status": ["archived"],
    }
    if rec.get("type"):
        props[f"pds:{ctx}.pds:type"] = [rec["type"]]
    if rec.get("alternate_titles"):
        props["pds:Alias.pds:alternate_title"] = list(rec["alternate_titles"])
    lids: list[str] = []
    types: list[str] = []
    for kind, targets in (rec.get("parents") or {}).items():
        props[f"ref_lid_{kind}"] = list(targets)
        for t in targets:
            lids.append(t)
            types.append(_REF_TYPE.get(kind, "{ctx}_to_" + kind).format(ctx=ctx.lower()))
    if lids:
        props["pds:Internal_Reference.pds:lid_reference"] = lids
        props["pds:Internal_Reference.pds:reference_type"] = types
    parents = rec.get("parents") or {}
    return {
        "id": lidvid,
        "type": "Product_Context",
        "title": rec["title"],
        "description": None,
        "start_date_time": None,
        "stop_date_time": None,
        "investigations": [
            {"id": x, "href": f"https://pds.nasa.gov/products/{x}"} for x in parents.get("investigation", [])
        ],
        "observing_system_components": [],
        "targets": [],
        "metadata": {"version": vid, "update_date_time": harvest, "label_url": None},
        "properties": props,
    }


#: Context products harvested per batch: a batch shares one harvest time, as products loaded together do.
PDS_HARVEST_BATCH = 3


class PdsProducts:
    """The PDS product store: context products plus the recorded collection and bundle items, by endpoint.

    Context products get harvest times in file order, ``harvest_batch`` products per batch sharing one time (the
    registry stamps a whole harvest run alike, so ties on ``ops:Harvest_Info.ops:harvest_date_time`` are the norm).
    """

    def __init__(
        self,
        context: list[dict[str, Any]],
        collections: list[dict[str, Any]],
        bundles: list[dict[str, Any]],
        harvest_batch: int = PDS_HARVEST_BATCH,
    ):
        self._lock = threading.Lock()
        start = dt.datetime(2023, 1, 1, tzinfo=dt.UTC)
        items = [
            context_to_api_item(
                r, (start + dt.timedelta(seconds=37 * (i // harvest_batch))).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            )
            for i, r in enumerate(context)
        ]
        self._items: dict[str, dict[str, Any]] = {it["id"]: it for it in items + collections + bundles}

    def __len__(self) -> int:
        return len(self._items)

    def ids(self, endpoint: str = "products") -> list[str]:
        """Ids served by an endpoint."""
        return sorted(it["id"] for it in self._select(endpoint))

    def get(self, lidvid: str) -> dict[str, Any]:
        """A deep copy of one item."""
        with self._lock:
            return copy.deepcopy(self._items[lidvid])

    def put(self, item: dict[str, Any], harvest: str | None = None) -> dict[str, Any]:
        """Add or re-harvest an item (stamps ``ops:Harvest_Info.ops:harvest_date_time``, default now)."""
        item = copy.deepcopy(item)
        item.setdefault("properties", {})["ops:Harvest_Info.ops:harvest_date_time"] = [harvest or _now_z()]
        with self._lock:
            self._items[item["id"]] = item
        return item

    def _select(self, endpoint: str) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._items.values())
        cls = {"collections": "Product_Collection", "bundles": "Product_Bundle"}.get(endpoint)
        if cls:
            items = [i for i in items if i.get("type") == cls]
        return items

    def search(
        self, endpoint: str, params: list[tuple[str, str]]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """One page of results and the summary, as the Search API computes them."""
        get = dict(params)
        pred = parse_pds_query(get.get("q", ""))
        items = [i for i in self._select(endpoint) if pred(i)]
        if get.get("keywords"):
            words = get["keywords"].lower().split()
            items = [
                i
                for i in items
                if all(
                    w in (str(i.get("title")) + " " + " ".join(_field_values(i, "description"))).lower()
                    for w in words
                )
            ]
        sort = [v for k, v in params if k == "sort"]
        after = [v for k, v in params if k == "search-after"]
        if after and not sort:
            raise PdsQueryError("sort argument must be provided if searchAfter argument is provided")
        if after and len(after) != len(sort):
            raise PdsQueryError("sort and searchAfter arguments must be of equal length if provided")

        def key(it: dict[str, Any]) -> list[str]:
            # Ascending on each sort field; a multi-valued field sorts by its smallest value (OpenSearch's default).
            return [min(_field_values(it, s), default="") for s in sort]

        # Ties on the whole sort tuple come in index order (the id here): stable, but not part of the tuple.
        items.sort(key=lambda it: [*key(it), str(it.get("id"))])
        hits = len(items)
        if after:
            # OpenSearch search_after: strictly after the given sort values, compared on the whole tuple. Items that
            # tie with them are not returned, which is why a client must sort on something unique.
            items = [i for i in items if key(i) > after]
        start = int(get.get("start", 0) or 0)
        limit = int(get.get("limit", 100))
        page = items[start : start + limit]
        summary = {
            "q": get.get("q", ""),
            "hits": hits,
            "took": 3,
            "start": start,
            "limit": limit,
            "sort": sort,
            "properties": [],
        }
        return page, summary


# ================================================================================================ arXiv
def _rfc2822_to_iso(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError):
        return None


class ArxivPapers:
    """Kaggle-format papers served as export-API Atom entries."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, dict[str, Any]] = {}
        for r in rows:
            self._rows.setdefault(r["id"], r)

    def __len__(self) -> int:
        return len(self._rows)

    def ids(self) -> list[str]:
        """Every paper id."""
        with self._lock:
            return sorted(self._rows)

    def put(self, row: dict[str, Any], updated: str | None = None) -> None:
        """Add or revise a paper (a new version dated ``updated``, default now)."""
        row = copy.deepcopy(row)
        when = email.utils.format_datetime(
            dt.datetime.fromisoformat(updated.replace("Z", "+00:00")) if updated else dt.datetime.now(dt.UTC),
            usegmt=True,
        )
        versions = list(row.get("versions") or [])
        versions.append({"version": f"v{len(versions) + 1}", "created": when})
        row["versions"] = versions
        with self._lock:
            self._rows[row["id"]] = row

    @staticmethod
    def _entry(r: dict[str, Any]) -> dict[str, Any]:
        versions = r.get("versions") or []
        published = _rfc2822_to_iso(versions[0]["created"]) if versions else None
        updated = _rfc2822_to_iso(versions[-1]["created"]) if versions else None
        return {
            **r,
            "_published": published or "2000-01-01T00:00:00Z",
            "_updated": updated or published or "2000-01-01T00:00:00Z",
            "_version": f"{r['id']}v{max(1, len(versions))}",
        }

    def search(self, params: dict[str, str]) -> tuple[list[dict[str, Any]], int, int]:
        """Entries of one page, the total and the start."""
        pred = _arxiv_query(params.get("search_query", "all:*"))
        with self._lock:
            rows = [self._entry(r) for r in self._rows.values()]
        rows = [r for r in rows if pred(r)]
        sort_by = params.get("sortBy", "relevance")
        field = {"lastUpdatedDate": "_updated", "submittedDate": "_published"}.get(sort_by)
        rows.sort(
            key=(lambda r: (r[field], r["id"])) if field else (lambda r: r["id"]),
            reverse=params.get("sortOrder", "descending") == "descending" and field is not None,
        )
        start, size = int(params.get("start", 0)), min(int(params.get("max_results", 10)), 2000)
        return rows[start : start + size], len(rows), start


def _arxiv_query(q: str) -> Callable[[dict[str, Any]], bool]:
    clauses = re.split(r"\s+(AND|OR|ANDNOT)\s+", q.strip())

    def one(c: str) -> Callable[[dict[str, Any]], bool]:
        prefix, _, value = c.partition(":")
        value = value.strip().strip('"').lower()
        pattern = value

        def hay(r: dict[str, Any]) -> list[str]:
            if prefix == "cat":
                return str(r.get("categories", "")).lower().split()
            if prefix == "ti":
                return [str(r.get("title", "")).lower()]
            if prefix == "abs":
                return [str(r.get("abstract", "")).lower()]
            if prefix == "au":
                return [str(r.get("authors", "")).lower()]
            return [f"{r.get('title', '')} {r.get('abstract', '')} {r.get('categories', '')}".lower()]

        if prefix == "cat":
            return lambda r: any(fnmatch.fnmatchcase(h, pattern) for h in hay(r))
        return lambda r: value == "*" or any(fnmatch.fnmatchcase(h, f"*{pattern}*") for h in hay(r))

    pred = one(clauses[0])
    for i in range(1, len(clauses), 2):
        op, nxt = clauses[i], one(clauses[i + 1])
        if op == "AND":
            pred = (lambda a, b: lambda r: a(r) and b(r))(pred, nxt)
        elif op == "OR":
            pred = (lambda a, b: lambda r: a(r) or b(r))(pred, nxt)
        else:
            pred = (lambda a, b: lambda r: a(r) and not b(r))(pred, nxt)
    return pred


def _atom(entries: list[dict[str, Any]], total: int, start: int, query: str) -> bytes:
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<feed xmlns="http://www.w3.org/2005/Atom" xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/" '
        'xmlns:arxiv="http://arxiv.org/schemas/atom">',
        f"<title>arXiv Query: {escape(query)}</title>",
        f"<opensearch:totalResults>{total}</opensearch:totalResults>",
        f"<opensearch:startIndex>{start}</opensearch:startIndex>",
        f"<opensearch:itemsPerPage>{len(entries)}</opensearch:itemsPerPage>",
    ]
    for e in entries:
        out.append("<entry>")
        out.append(f"<id>http://arxiv.org/abs/{escape(e['_version'])}</id>")
        out.append(f"<updated>{e['_updated']}</updated><published>{e['_published']}</published>")
        out.append(f"<title>{escape(e.get('title') or '')}</title>")
        out.append(f"<summary>{escape(e.get('abstract') or '')}</summary>")
        for name in re.split(r",\s*|\s+and\s+", e.get("authors") or ""):
            if name.strip():
                out.append(f"<author><name>{escape(name.strip())}</name></author>")
        if e.get("doi"):
            out.append(f"<arxiv:doi>{escape(e['doi'])}</arxiv:doi>")
        if e.get("journal-ref"):
            out.append(f"<arxiv:journal_ref>{escape(e['journal-ref'])}</arxiv:journal_ref>")
        cats = str(e.get("categories") or "").split()
        if cats:
            out.append(f'<arxiv:primary_category term="{escape(cats[0])}"/>')
        out.extend(f'<category term="{escape(c)}"/>' for c in cats)
        out.append("</entry>")
    out.append("</feed>")
    return "\n".join(out).encode("utf-8")


# ================================================================================================ the server
class ReplayServer(BackgroundHTTPServer):
    """CMR + PDS + arXiv replay on ``127.0.0.1`` (a free port unless ``port`` is given); a context manager.

    Attributes:
        cmr: the searchable CMR collection store (add/revise/delete records between ingests).
        pds: the PDS product store.
        arxiv: the arXiv paper store.
        requests: every request received, in order.
        max_page_items: cap on items per page (fewer than asked), or None.
    """

    def __init__(
        self, port: int = 0, *, max_page_items: int | None = None, pds_harvest_batch: int = PDS_HARVEST_BATCH
    ) -> None:
        self.cmr = CmrCollections(_load_jsonl(resolve_path(f"{SAMPLES}/{CMR_DUMP}")))
        collections = json.loads(resolve_path(f"{SAMPLES}/{PDS_COLLECTIONS}").read_text(encoding="utf-8"))[
            "data"
        ]
        bundles = json.loads(resolve_path(f"{SAMPLES}/{PDS_BUNDLES}").read_text(encoding="utf-8"))["data"]
        self.pds = PdsProducts(
            _load_jsonl(resolve_path(f"{SAMPLES}/{PDS_CONTEXT}")), collections, bundles, pds_harvest_batch
        )
        rows: list[dict[str, Any]] = []
        for f in ARXIV_FILES:
            rows += _load_jsonl(resolve_path(f"{SAMPLES}/{f}"))
        self.arxiv = ArxivPapers(rows)
        self.recorded = [_load_recorded(s) for s in CMR_RECORDED]
        self.max_page_items = max_page_items
        self.requests: list[LoggedRequest] = []
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        httpd.daemon_threads = True
        super().__init__(httpd, "replay-server")

    # ------------------------------------------------------------------ addresses
    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

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

    def stop(self) -> None:
        """Stop serving and release the port (stalled responses are cut short)."""
        self._closing.set()
        super().stop()

    # ------------------------------------------------------------------ faults
    def inject(
        self,
        kind: str,
        *,
        route: str | None = None,
        times: int = 1,
        after: int = 0,
        retry_after: str | int | None = None,
        stall_s: float = 5.0,
    ) -> None:
        """Make ``times`` requests on ``route`` (``cmr``/``pds``/``arxiv``; None: any) fail with ``kind``, after
        letting ``after`` matching requests through (``after=1``: the first page succeeds, the next ones fail)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; use one of {FAULT_KINDS}")
        ra = None if retry_after is None else str(retry_after)
        with self._lock:
            for i in range(times):
                self._faults.append(Fault(kind, route, ra, stall_s, after if i == 0 else 0))

    def pending_faults(self) -> int:
        """Injected faults not yet consumed."""
        with self._lock:
            return len(self._faults)

    def requests_to(self, route: str) -> list[LoggedRequest]:
        """Requests received on one route."""
        with self._lock:
            return [r for r in self.requests if r.route == route]

    def _take_fault(self, route: str) -> Fault | None:
        with self._lock:
            for i, f in enumerate(self._faults):
                if f.route in (None, route):
                    if f.after > 0:
                        f.after -= 1
                        return None
                    del self._faults[i]
                    return f
        return None

    # ------------------------------------------------------------------ handlers
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:  # silence the default stderr access log
                pass

            def do_GET(self) -> None:
                server._handle(self)

        return Handler

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        params = parse_qsl(parts.query, keep_blank_values=True)
        path = parts.path
        route = (
            "cmr"
            if path.startswith("/search/")
            else "pds"
            if path.startswith("/api/search/")
            else ("arxiv" if path.startswith("/api/query") else "other")
        )
        logged = LoggedRequest(route, path, params, {k.lower(): v for k, v in h.headers.items()}, time.time())
        with self._lock:
            self.requests.append(logged)
        fault = self._take_fault(route)
        logged.fault = fault.kind if fault else None
        if fault is not None and fault.kind == "drop":
            h.close_connection = True
            return
        if fault is not None and fault.kind in ("429", "503"):
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            body = json.dumps({"errors": [f"injected {fault.kind}"]}).encode()
            self._send(h, logged, int(fault.kind), body, "application/json", headers)
            return
        try:
            status, body, ctype, headers = self._route(route, path, params, logged.headers)
        except PdsQueryError as e:
            status, body, ctype, headers = (
                400,
                json.dumps({"message": str(e)}).encode(),
                "application/json",
                {},
            )
        if fault is not None and fault.kind == "stall":
            self._closing.wait(fault.stall_s)
        if fault is not None and fault.kind == "truncate":
            body = body[: max(1, len(body) // 2)]
        if fault is not None and fault.kind == "partial" and route == "cmr" and status == 200:
            # CMR's answer to a query that hit its internal timeout: partial results, flagged by a header.
            page = json.loads(body)
            page["items"] = page.get("items", [])[: len(page.get("items", [])) // 2]
            body = json.dumps(page).encode()
            headers = {**headers, "CMR-Time-Out": "true"}
        if fault is not None and fault.kind == "partial" and route == "pds" and status == 200:
            # A registry shard failing mid-query: OpenSearch answers with the other shards' hits and the Search API
            # passes that on unflagged. Every other item of the page is missing; the last one is still there.
            page = json.loads(body)
            data = page.get("data", [])
            page["data"] = [d for i, d in enumerate(data) if i % 2 == 0 or i == len(data) - 1]
            body = json.dumps(page).encode()
        self._send(h, logged, status, body, ctype, headers)

    def _send(
        self,
        h: BaseHTTPRequestHandler,
        logged: LoggedRequest,
        status: int,
        body: bytes,
        ctype: str,
        headers: dict[str, str],
    ) -> None:
        logged.status = status
        try:
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True

    def _route(
        self, route: str, path: str, params: list[tuple[str, str]], headers: dict[str, str]
    ) -> tuple[int, bytes, str, dict[str, str]]:
        recorded = self._recorded(path, params, headers)
        if recorded is not None:
            return (
                recorded.status,
                recorded.body,
                recorded.headers.get("Content-Type", "application/json"),
                {k: v for k, v in recorded.headers.items() if k != "Content-Type"},
            )
        if route == "cmr":
            return self._cmr(path, params, headers)
        if route == "pds":
            return self._pds(path, params)
        if route == "arxiv":
            return self._arxiv(params)
        return 404, json.dumps({"errors": [f"not found: {path}"]}).encode(), "application/json", {}

    def _recorded(
        self, path: str, params: list[tuple[str, str]], headers: dict[str, str]
    ) -> _Recorded | None:
        wanted = sorted(params)
        after = headers.get("cmr-search-after")
        for r in self.recorded:
            if r.path == path and r.params == wanted and r.request_headers.get("cmr-search-after") == after:
                return r
        if after and path.startswith("/search/granules"):
            # The recorded chain ends after page 3: the next page is empty and carries no CMR-Search-After.
            return _Recorded(
                "GET",
                path,
                wanted,
                {},
                200,
                {"CMR-Hits": "1404440", "Content-Type": UMM_CONTENT_TYPE},
                json.dumps({"hits": 1404440, "took": 5, "items": []}).encode(),
            )
        return None

    def _cmr_error(self, status: int, message: str) -> tuple[int, bytes, str, dict[str, str]]:
        return (
            status,
            json.dumps({"errors": [message]}).encode(),
            "application/json;charset=utf-8",
            {"CMR-Request-Id": str(uuid.uuid4())},
        )

    def _cmr_deleted(
        self, path: str, params: list[tuple[str, str]], headers: dict[str, str]
    ) -> tuple[int, bytes, str, dict[str, str]]:
        """``GET /search/deleted-collections``: XML references to the last live revision of every collection deleted
        since ``revision_date`` (a single start date), as CMR documents it. XML is the only format: an extension or
        an ``Accept`` header asking for anything else is a 400, as are other parameters and date ranges."""
        ext = path.removeprefix("/search/deleted-collections").lstrip(".")
        accept = headers.get("accept", "").split(";")[0].strip()
        fmt = ext or {
            "application/json": "json",
            "application/vnd.nasa.cmr.umm_results+json": "umm_json",
        }.get(accept, "xml")
        if fmt != "xml":
            return self._cmr_xml_error(
                400,
                f"Result format [{fmt}] is not supported by deleted collections search. "
                "The only format that is supported is xml.",
            )
        unknown = sorted({k for k, _ in params if k not in ("revision_date", "revision_date[]", "pretty")})
        if unknown:
            return self._cmr_xml_error(400, f"Parameter [{unknown[0]}] was not recognized.")
        dates = [v for k, v in params if k in ("revision_date", "revision_date[]")]
        if len(dates) > 1:
            return self._cmr_xml_error(
                400, f"Only one revision date is allowed, but {len(dates)} were provided."
            )
        if dates and "," in dates[0]:
            return self._cmr_xml_error(
                400,
                "Invalid format for revision date, only a starting date is allowed for deleted collections "
                f"search, but was [{dates[0]}]",
            )
        gone = self.cmr.deleted_since(dates[0] if dates else "")
        refs = "".join(
            "<reference>"
            f"<name>{escape(str(g['umm'].get('EntryTitle', '')))}</name>"
            f"<id>{escape(g['meta']['concept-id'])}</id>"
            f"<location>{self.url}/search/concepts/{escape(g['meta']['concept-id'])}/"
            f"{g['meta'].get('revision-id', 1)}</location>"
            f"<revision-id>{g['meta'].get('revision-id', 1)}</revision-id>"
            "</reference>"
            for g in gone
        )
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<results><hits>{len(gone)}</hits><took>1</took><references>{refs}</references></results>"
        ).encode()
        return 200, body, "application/xml; charset=UTF-8", {"CMR-Hits": str(len(gone))}

    def _cmr_xml_error(self, status: int, message: str) -> tuple[int, bytes, str, dict[str, str]]:
        body = f'<?xml version="1.0" encoding="UTF-8"?><errors><error>{escape(message)}</error></errors>'
        return (
            status,
            body.encode("utf-8"),
            "application/xml; charset=UTF-8",
            {"CMR-Request-Id": str(uuid.uuid4())},
        )

    def _cmr(
        self, path: str, params: list[tuple[str, str]], headers: dict[str, str]
    ) -> tuple[int, bytes, str, dict[str, str]]:
        if path == "/search/deleted-collections" or path.startswith("/search/deleted-collections."):
            return self._cmr_deleted(path, params, headers)
        if path != "/search/collections.umm_json":
            return self._cmr_error(404, f"The resource {path} was not found in this replay")
        unknown = sorted({k for k, _ in params if k not in CMR_PARAMS})
        if unknown:
            return self._cmr_error(400, f"Parameter [{unknown[0]}] was not recognized.")
        get = dict(params)
        raw_size = get.get("page_size", "10")
        if not raw_size.isdigit() or not 0 <= int(raw_size) <= 2000:
            return self._cmr_error(400, "page_size must be a number between 0 and 2000")
        after_raw = headers.get("cmr-search-after")
        if after_raw and ("page_num" in get or "offset" in get):
            return self._cmr_error(400, "page_num and offset are not allowed with search-after")
        t0 = time.perf_counter()
        items = self.cmr.search(params)
        hits = len(items)
        if after_raw:
            try:
                after = json.loads(after_raw)
            except json.JSONDecodeError:
                return self._cmr_error(
                    400, f"The search-after value [{after_raw}] is not a valid JSON array."
                )
            items = [i for i in items if _cmr_sort_key(i) > after]
        elif "page_num" in get:
            items = items[(int(get["page_num"]) - 1) * int(raw_size) :]
        size = int(raw_size)
        if self.max_page_items is not None:
            size = min(size, self.max_page_items)
        page = items[:size]
        out_headers = {
            "CMR-Hits": str(hits),
            "CMR-Took": str(int((time.perf_counter() - t0) * 1000)),
            "CMR-Request-Id": str(uuid.uuid4()),
        }
        if page:
            out_headers["CMR-Search-After"] = json.dumps(_cmr_sort_key(page[-1]))
        body = json.dumps({"hits": hits, "took": 1, "items": page}, ensure_ascii=False).encode("utf-8")
        return 200, body, UMM_CONTENT_TYPE, out_headers

    def _pds(self, path: str, params: list[tuple[str, str]]) -> tuple[int, bytes, str, dict[str, str]]:
        rest = path[len("/api/search/1/") :].strip("/")
        if rest.startswith("classes/"):
            rest = rest[len("classes/") :]
        endpoint = {
            "products": "products",
            "any": "products",
            "collections": "collections",
            "bundles": "bundles",
        }.get(rest)
        if endpoint is None:
            return 404, json.dumps({"message": f"no endpoint {path}"}).encode(), "application/json", {}
        page, summary = self.pds.search(endpoint, params)
        if self.max_page_items is not None and len(page) > self.max_page_items:
            page = page[: self.max_page_items]
        body = json.dumps({"summary": summary, "data": page}, ensure_ascii=False).encode("utf-8")
        return 200, body, "application/json", {}

    def _arxiv(self, params: list[tuple[str, str]]) -> tuple[int, bytes, str, dict[str, str]]:
        get = dict(params)
        entries, total, start = self.arxiv.search(get)
        if self.max_page_items is not None:
            entries = entries[: self.max_page_items]
        return (
            200,
            _atom(entries, total, start, get.get("search_query", "")),
            "application/atom+xml; charset=utf-8",
            {},
        )


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
