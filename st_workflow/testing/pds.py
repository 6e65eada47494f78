"""PDS Search API simulator: the bundled context products, collections and bundles, and the PDS query language.

* ``GET /api/search/1/{products,collections,bundles}`` (and ``/classes/<name>``): the 1,651 bundled context
  products rendered as Search API ``application/json`` items (descriptions re-wrapped the way labels are, harvest
  times assigned in file order, three products per harvest batch sharing one time) plus the recorded collection and
  bundle items;
* ``q`` (the PDS query language: ``eq ne gt ge lt le like``, ``and or not``, parentheses; a ``q`` that does not parse
  is the real 400), ``keywords``, ``limit``, ``start``, ``sort`` + ``search-after`` (one value per sort field,
  strictly after on the whole sort tuple, as the registry's OpenSearch does: items tying with the values sent are not
  returned).

A ``partial`` fault answers as a registry with a failed shard does: every other item of the page missing, unflagged.
:class:`PdsApi` is served by :class:`~st_workflow.testing.replay_server.ReplayServer`.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import fnmatch
import json
import re
import textwrap
import threading
from collections.abc import Callable
from typing import Any

from st_workflow.testing.http import ApiRequest, Reply, json_reply
from st_workflow.testing.samples import load_jsonl, now_z, sample_path

__all__ = [
    "PDS_HARVEST_BATCH",
    "PdsApi",
    "PdsProducts",
    "PdsQueryError",
    "context_to_api_item",
    "parse_pds_query",
]

PDS_CONTEXT = "pds/context-pds4.product_context.1651.extracted.jsonl"
PDS_COLLECTIONS = "pds/collections.limit20.first5.api_client_to_dict.json"
PDS_BUNDLES = "pds/bundles.q_lidvid_insight_documents.api_client_to_dict.json"

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
        item.setdefault("properties", {})["ops:Harvest_Info.ops:harvest_date_time"] = [harvest or now_z()]
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


class PdsApi:
    """The Search API endpoints over a :class:`PdsProducts` store."""

    route = "pds"
    prefix = "/api/search/"

    def __init__(self, products: PdsProducts | None = None, harvest_batch: int = PDS_HARVEST_BATCH) -> None:
        if products is None:
            collections = json.loads(sample_path(PDS_COLLECTIONS).read_text(encoding="utf-8"))["data"]
            bundles = json.loads(sample_path(PDS_BUNDLES).read_text(encoding="utf-8"))["data"]
            products = PdsProducts(load_jsonl(sample_path(PDS_CONTEXT)), collections, bundles, harvest_batch)
        self.products = products

    def answer(self, req: ApiRequest) -> Reply:
        """The reply to ``GET path?params``; a bad ``q``, ``sort`` or ``search-after`` is the real 400."""
        rest = req.path[len("/api/search/1/") :].strip("/")
        if rest.startswith("classes/"):
            rest = rest[len("classes/") :]
        endpoint = {
            "products": "products",
            "any": "products",
            "collections": "collections",
            "bundles": "bundles",
        }.get(rest)
        if endpoint is None:
            return json_reply(404, {"message": f"no endpoint {req.path}"})
        try:
            page, summary = self.products.search(endpoint, req.params)
        except PdsQueryError as e:
            return json_reply(400, {"message": str(e)})
        if req.max_page_items is not None:
            page = page[: req.max_page_items]
        return json_reply(200, {"summary": summary, "data": page})

    @staticmethod
    def partial(reply: Reply) -> Reply:
        """A registry shard failing mid-query: OpenSearch answers with the other shards' hits and the Search API
        passes that on unflagged. Every other item of the page is missing; the last one is still there."""
        page = json.loads(reply.body)
        data = page.get("data", [])
        page["data"] = [d for i, d in enumerate(data) if i % 2 == 0 or i == len(data) - 1]
        return reply.but(body=json.dumps(page).encode())
