"""NASA PDS: Search API items, extracted PDS4 context products and PDS4 XML labels, all to one document shape.

Three inputs, one output. A Search API item (``/products``, ``/collections``, ``/bundles``; ``application/json``), a
line of the bundled extracted context products and a raw ``Product_Context`` XML label all become a candidate with the
same title, the same normalised description and the same metadata keys:

``kind, lidvid, lid, product_class, context_type, type, target, investigation, instrument, instrument_host,
telescope, facility, keywords, node, alternate_titles, refs`` (``refs`` keeps the referenced LIDs by kind).

Names that a record only references by LID (an instrument's mission, a telescope's facility) are filled in by
:func:`resolve_references` from the titles of the other records of the same ingest, so the structured "Label: value"
descriptions can say "Investigation: Europa Clipper Mission" instead of a URN.

Paging (:class:`PdsPager`) follows the Search API's documented deep paging: ``sort`` on the harvest time plus
``search-after`` = the last item's sort value(s). It continues until a page comes back empty or ``summary.hits`` items
were received; a short page is not taken as the end.

``search-after`` is strict: the registry (OpenSearch) returns only items whose *whole* sort tuple is greater than the
values sent, and products are harvested in batches that share one harvest time. Sorting on the harvest time alone
therefore skips every product that ties with a page's last item. The pager always ends the sort with the unique
``lidvid`` (:data:`TIEBREAKER`) so that the sort tuple is unique and no tie can fall between two pages; ``hits``
versus ``items`` afterwards tells whether the listing came back whole.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from st_workflow.ingest.cmr import flatten_params
from st_workflow.ingest.documents import INVALID_JSON, TOO_LARGE, WRONG_TYPE, Candidate, Rejection, collapse
from st_workflow.ingest.httpclient import HttpSourceError, RetryableBody, RetryingClient
from st_workflow.ingest.readers import iter_jsonl

PUBLIC_PDS = "https://pds.nasa.gov/api/search/1"
HARVEST_TIME = "ops:Harvest_Info.ops:harvest_date_time"
#: A field unique per product: the last sort key, so that ``search-after`` never falls between tied items.
TIEBREAKER = "lidvid"
#: Child elements of ``Product_Context`` that describe the context object.
CONTEXT_CLASSES = (
    "Agency",
    "Facility",
    "Instrument",
    "Instrument_Host",
    "Investigation",
    "Node",
    "Other",
    "PDS_Affiliate",
    "PDS_Guest",
    "Resource",
    "Target",
    "Telescope",
)
#: Metadata keys holding names, in the order structured descriptions use them.
NAME_KINDS = ("target", "investigation", "instrument_host", "instrument", "telescope", "facility")
_REF_KINDS = {  # upward Internal_Reference types -> the kind of the referenced object
    "investigation": "investigation",
    "instrument_host": "instrument_host",
    "telescope": "telescope",
    "facility": "facility",
    "target": "target",
    "instrument": "instrument",
}
_OSC_KIND = {  # Observing_System_Component.type -> name kind
    "instrument": "instrument",
    "host": "instrument_host",
    "spacecraft": "instrument_host",
    "rover": "instrument_host",
    "lander": "instrument_host",
    "aircraft": "instrument_host",
    "balloon": "instrument_host",
    "telescope": "telescope",
    "observatory": "facility",
    "facility": "facility",
    "laboratory": "facility",
}
_MAX_ALIASES = 5


def _first(value: Any) -> str | None:
    if isinstance(value, list):
        value = next((v for v in value if isinstance(v, str) and v.strip()), None)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _list(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    out: list[str] = []
    for v in value if isinstance(value, list) else []:
        if isinstance(v, str) and v.strip() and collapse(v) not in out:
            out.append(collapse(v))
    return out


def lid_of(lidvid: str) -> str:
    """The logical identifier of a ``lid::vid`` string."""
    return lidvid.split("::", 1)[0]


def _clean(metadata: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metadata.items() if v not in (None, [], {}, "")}


# ---------------------------------------------------------------------------------------------- Search API items
def api_candidate(item: Any, locator: str, base_url: str = PUBLIC_PDS) -> Candidate | Rejection:
    """A Search API ``data[]`` item (``application/json``) as a candidate."""
    if not isinstance(item, dict):
        return Rejection(
            WRONG_TYPE, None, f"item is a {type(item).__name__}, expected an object", locator, raw=item
        )
    props = item.get("properties") if isinstance(item.get("properties"), dict) else {}
    lidvid = item.get("id") if item.get("id") is not None else _first(props.get("lidvid"))
    title = item.get("title") if item.get("title") is not None else _first(props.get("title"))
    product_class = item.get("type") or _first(props.get("product_class"))
    context_type = next((c for c in CONTEXT_CLASSES if f"pds:{c}.pds:description" in props), None)
    if context_type is None and product_class == "Product_Context":
        context_type = next((c for c in CONTEXT_CLASSES if f"pds:{c}.pds:name" in props), None)
    text = _description(item, props, context_type)
    names: dict[str, list[str]] = {k: [] for k in NAME_KINDS}
    names["target"] = _list(props.get("pds:Target_Identification.pds:name"))
    names["investigation"] = _list(props.get("pds:Investigation_Area.pds:name"))
    osc_names = props.get("pds:Observing_System_Component.pds:name")
    osc_types = props.get("pds:Observing_System_Component.pds:type")
    if isinstance(osc_names, list):
        types = (
            osc_types
            if isinstance(osc_types, list) and len(osc_types) == len(osc_names)
            else [None] * len(osc_names)
        )
        for name, typ in zip(osc_names, types, strict=True):
            kind = _OSC_KIND.get(str(typ).strip().lower(), "instrument") if typ else "instrument"
            for n in _list(name):
                if n not in names[kind]:
                    names[kind].append(n)
    refs: dict[str, list[str]] = {}
    for key, value in props.items():
        if key.startswith("ref_lid_"):
            kind = key[len("ref_lid_") :]
            if kind in _REF_KINDS:
                refs[_REF_KINDS[kind]] = _list(value)
    if not refs:
        refs = _refs_from_internal(props)
    type_ = None
    if context_type:
        type_ = _first(props.get(f"pds:{context_type}.pds:type"))
    elif _first(props.get("pds:Collection.pds:collection_type")):
        type_ = _first(props.get("pds:Collection.pds:collection_type"))
    name = _first(props.get(f"pds:{context_type}.pds:name")) if context_type else None
    metadata = {
        "kind": "pds",
        "lidvid": lidvid,
        "lid": lid_of(lidvid) if isinstance(lidvid, str) else None,
        "product_class": product_class,
        "context_type": context_type,
        "type": type_,
        "name": name if name and isinstance(title, str) and collapse(name) != collapse(title) else None,
        **names,
        "keywords": _list(props.get("pds:Citation_Information.pds:keyword")),
        "node": _first(props.get("ops:Harvest_Info.ops:node_name")),
        "alternate_titles": _list(props.get("pds:Alias.pds:alternate_title"))[:_MAX_ALIASES],
        "harvest_date_time": _first(props.get(HARVEST_TIME)),
        "refs": refs,
    }
    url = f"{base_url.rstrip('/')}/products/{lidvid}" if isinstance(lidvid, str) and lidvid else None
    return Candidate(lidvid, title, text, url, _clean(metadata), locator, raw=item)


def _description(item: dict[str, Any], props: dict[str, Any], context_type: str | None) -> Any:
    """The product's own description, not the change log or column descriptions PDS merges into ``description``."""
    if isinstance(item.get("description"), str) and item["description"].strip():
        return item["description"]
    for key in (
        f"pds:{context_type}.pds:description" if context_type else None,
        "pds:Citation_Information.pds:description",
        "pds:Primary_Result_Summary.pds:description",
    ):
        if key and _first(props.get(key)):
            return _raw_first(props[key])
    merged = props.get("description")
    if isinstance(merged, list):
        noise = {
            collapse(v)
            for k in (
                "pds:Modification_Detail.pds:description",
                "pds:Field_Delimited.pds:description",
                "pds:Field_Character.pds:description",
                "pds:Field_Binary.pds:description",
            )
            for v in _list(props.get(k))
        }
        for v in merged:
            if isinstance(v, str) and v.strip() and collapse(v) not in noise:
                return v
        return None
    return item.get("description") if item.get("description") is not None else merged


def _raw_first(value: Any) -> Any:
    if isinstance(value, list):
        return next((v for v in value if isinstance(v, str) and v.strip()), None)
    return value


def _refs_from_internal(props: Mapping[str, Any]) -> dict[str, list[str]]:
    lids, types = (
        props.get("pds:Internal_Reference.pds:lid_reference"),
        props.get("pds:Internal_Reference.pds:reference_type"),
    )
    refs: dict[str, list[str]] = {}
    if isinstance(lids, list) and isinstance(types, list) and len(lids) == len(types):
        for lid, typ in zip(lids, types, strict=True):
            kind = _upward_kind(str(typ))
            if kind and isinstance(lid, str):
                refs.setdefault(kind, [])
                if lid not in refs[kind]:
                    refs[kind].append(lid)
    return refs


def _upward_kind(reference_type: str) -> str | None:
    """``instrument_to_investigation`` -> ``investigation``; downward links (``investigation_to_*``) -> None."""
    if "_to_" not in reference_type:
        return None
    src, dst = reference_type.split("_to_", 1)
    upward = {
        ("instrument", "investigation"),
        ("instrument_host", "investigation"),
        ("instrument", "instrument_host"),
        ("instrument", "telescope"),
        ("telescope", "facility"),
        ("instrument", "facility"),
        ("target", "investigation"),
        ("facility", "investigation"),
        ("telescope", "investigation"),
    }
    return dst if (src, dst) in upward or (dst == "investigation" and src != "investigation") else None


# ---------------------------------------------------------------------------------------------- extracted records
def context_candidate(rec: Any, locator: str, base_url: str = PUBLIC_PDS) -> Candidate | Rejection:
    """A line of the extracted PDS4 context products (``st_workflow/data/samples/pds/SOURCE.md``)."""
    if not isinstance(rec, dict):
        return Rejection(
            WRONG_TYPE, None, f"record is a {type(rec).__name__}, expected an object", locator, raw=rec
        )
    lidvid = rec.get("lidvid")
    parents = rec.get("parents") if isinstance(rec.get("parents"), dict) else {}
    refs = {k: _list(v) for k, v in parents.items() if k in _REF_KINDS and _list(v)}
    title = rec.get("title")
    name = rec.get("name")
    metadata = {
        "kind": "pds",
        "lidvid": lidvid,
        "lid": lid_of(lidvid) if isinstance(lidvid, str) else None,
        "product_class": "Product_Context",
        "context_type": rec.get("context_type"),
        "type": rec.get("type") if isinstance(rec.get("type"), str) else None,
        "name": name
        if isinstance(name, str) and isinstance(title, str) and collapse(name) != collapse(title)
        else None,
        "alternate_titles": _list(rec.get("alternate_titles"))[:_MAX_ALIASES],
        "refs": refs,
        "label": rec.get("label"),
    }
    url = f"{base_url.rstrip('/')}/products/{lidvid}" if isinstance(lidvid, str) and lidvid else None
    return Candidate(lidvid, title, rec.get("description"), url, _clean(metadata), locator, raw=rec)


def record_candidate(rec: Any, locator: str, base_url: str = PUBLIC_PDS) -> Candidate | Rejection:
    """Extracted context record or Search API item, whichever ``rec`` is."""
    if isinstance(rec, dict) and "lidvid" in rec and "properties" not in rec:
        return context_candidate(rec, locator, base_url)
    return api_candidate(rec, locator, base_url)


# ---------------------------------------------------------------------------------------------- PDS4 XML labels
def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(el: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in el if _local(c.tag) == name), None)


def _text(el: ET.Element | None) -> str | None:
    return el.text if el is not None and el.text is not None else None


def parse_label(data: bytes, label: str = "") -> dict[str, Any]:
    """A ``Product_Context`` XML label as an extracted-format record (lidvid, title, context_type, type, name,
    description, alternate_titles, parents, label).

    Raises:
        ValueError: when the XML does not parse or is not a ``Product_Context`` with an identification area.
    """
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise ValueError(f"{label or 'label'}: not well-formed XML: {e}") from None
    ident = _child(root, "Identification_Area")
    if _local(root.tag) != "Product_Context" or ident is None:
        raise ValueError(f"{label or 'label'}: not a Product_Context label")
    lid, vid = _text(_child(ident, "logical_identifier")), _text(_child(ident, "version_id"))
    rec: dict[str, Any] = {
        "lidvid": f"{(lid or '').strip()}::{(vid or '').strip()}",
        "title": collapse(_text(_child(ident, "title")) or ""),
    }
    ctx = next((c for c in root if _local(c.tag) in CONTEXT_CLASSES), None)
    if ctx is not None:
        rec["context_type"] = _local(ctx.tag)
        typ = _child(
            ctx, "type"
        )  # the element's own type (as the bundled extraction took it), not ctli lists
        if _text(typ):
            rec["type"] = collapse(_text(typ) or "")
        name = _text(_child(ctx, "name"))
        if name and collapse(name) != rec["title"]:
            rec["name"] = collapse(name)
        rec["description"] = _text(_child(ctx, "description"))
    aliases = [
        collapse(e.text)
        for e in ident.iter()
        if _local(e.tag) == "alternate_title" and e.text and e.text.strip()
    ]
    if aliases:
        rec["alternate_titles"] = aliases[:_MAX_ALIASES]
    parents: dict[str, list[str]] = {}
    refs = _child(root, "Reference_List")
    for ref in refs if refs is not None else []:
        if _local(ref.tag) != "Internal_Reference":
            continue
        kind = _upward_kind((_text(_child(ref, "reference_type")) or "").strip())
        target = (_text(_child(ref, "lid_reference")) or _text(_child(ref, "lidvid_reference")) or "").strip()
        if kind and target:
            parents.setdefault(kind, [])
            if target not in parents[kind]:
                parents[kind].append(target)
    if parents:
        rec["parents"] = parents
    rec["label"] = label
    return rec


def iter_labels(path: Path, max_record_bytes: int) -> Iterator[tuple[Any, str] | Rejection]:
    """Records of one XML label or of every ``*.xml`` under a directory (sorted, so the order is stable)."""
    files = sorted(path.rglob("*.xml")) if path.is_dir() else [path]
    for f in files:
        rel = f.relative_to(path).as_posix() if path.is_dir() else f.name
        size = f.stat().st_size
        if size > max_record_bytes:
            yield Rejection(TOO_LARGE, None, f"label has {size} bytes, more than {max_record_bytes}", rel)
            continue
        try:
            yield parse_label(f.read_bytes(), rel), rel
        except ValueError as e:
            yield Rejection(INVALID_JSON if "XML" in str(e) else WRONG_TYPE, None, str(e), rel)


def iter_file(path: Path, max_record_bytes: int) -> Iterator[tuple[Any, str] | Rejection]:
    """Records of a PDS file: XML label(s), JSON Lines, or a saved Search API response (``{"data": [...]}``)."""
    if path.is_dir() or path.suffix.lower() == ".xml":
        yield from iter_labels(path, max_record_bytes)
        return
    name = path.name
    if path.suffix.lower() == ".json":
        try:
            body = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from None
        data = body.get("data") if isinstance(body, dict) else body
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a Search API response with a 'data' list, or a JSON list")
        for i, item in enumerate(data, 1):
            yield item, f"{name}#data[{i}]"
        return
    yield from iter_jsonl(path, max_record_bytes)


# ---------------------------------------------------------------------------------------------- references
def resolve_references(candidates: list[Candidate], extra_titles: Mapping[str, str] | None = None) -> None:
    """Fill empty name lists from referenced LIDs, using the titles of the records in this ingest (in place).

    A kind that already has names from the record itself (``Investigation_Area``...) keeps them.
    """
    titles: dict[str, str] = dict(extra_titles or {})
    for c in candidates:
        lid = c.metadata.get("lid")
        if isinstance(lid, str) and isinstance(c.title, str) and c.title.strip():
            titles.setdefault(lid, collapse(c.title))
    for c in candidates:
        refs = c.metadata.get("refs")
        if not isinstance(refs, dict):
            continue
        for kind, lids in refs.items():
            if kind not in NAME_KINDS or c.metadata.get(kind):
                continue
            names = [titles[lid_of(x)] for x in lids if lid_of(x) in titles]
            if names:
                c.metadata[kind] = list(dict.fromkeys(names))


# ---------------------------------------------------------------------------------------------- paging
def _parse_page(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = orjson.loads(resp.content)
    except orjson.JSONDecodeError as e:
        raise RetryableBody(f"body is not valid JSON ({len(resp.content)} bytes): {e}") from None
    if not isinstance(body, dict) or not isinstance(body.get("data", []), list):
        raise RetryableBody("JSON body is not a Search API response with a 'data' list")
    return body


def sort_value(item: Any, field: str) -> str | None:
    """The value of a sort field in an item (``properties`` lists, or a top-level key such as ``id``)."""
    if not isinstance(item, dict):
        return None
    props = item.get("properties") if isinstance(item.get("properties"), dict) else {}
    if field in props:
        return _first(props[field])
    if field == "lidvid":
        return item.get("id") if isinstance(item.get("id"), str) else None
    value = item.get(field)
    return value if isinstance(value, str) else None


def paging_sort(sort: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``sort`` with the unique :data:`TIEBREAKER` last (added when missing), so every sort tuple is unique.

    Example:
        >>> paging_sort(["ops:Harvest_Info.ops:harvest_date_time"])
        ('ops:Harvest_Info.ops:harvest_date_time', 'lidvid')
    """
    fields = tuple(dict.fromkeys(sort))
    return fields if TIEBREAKER in fields else (*fields, TIEBREAKER)


@dataclass
class PdsPager:
    """Iterates every item of a Search API query with ``sort`` + ``search-after`` paging.

    ``sort`` always ends with the unique :data:`TIEBREAKER` (see :func:`paging_sort`). After iteration ``hits``
    (``summary.hits`` of the first page), ``pages`` and ``items`` tell what happened; :attr:`shortfall` is how many
    announced items never arrived.
    """

    client: RetryingClient
    base_url: str
    endpoint: str = "products"
    params: list[tuple[str, str]] | None = None
    limit: int = 500
    sort: tuple[str, ...] = (HARVEST_TIME, TIEBREAKER)
    hits: int | None = None
    pages: int = 0
    items: int = 0

    def __post_init__(self) -> None:
        self.sort = paging_sort(self.sort)

    @property
    def shortfall(self) -> int:
        """Items ``summary.hits`` announced that the paging did not deliver (0 when unknown)."""
        return max(0, self.hits - self.items) if self.hits is not None else 0

    def __iter__(self) -> Iterator[tuple[Any, str]]:
        url = f"{self.base_url.rstrip('/')}/{self.endpoint.strip('/')}"
        base = [*(self.params or []), ("limit", str(self.limit)), *(("sort", s) for s in self.sort)]
        after: list[str] | None = None
        while True:
            params = base + [("search-after", v) for v in after or []]
            resp = self.client.get(
                url, params=params, headers={"Accept": "application/json"}, parse=_parse_page
            )
            self.pages += 1
            body = resp.value
            summary = body.get("summary") if isinstance(body.get("summary"), dict) else {}
            if self.hits is None and isinstance(summary.get("hits"), int):
                self.hits = summary["hits"]
            data: list[Any] = body.get("data") or []
            for i, item in enumerate(data, 1):
                yield item, f"{self.endpoint} page {self.pages} item {i}"
            self.items += len(data)
            if not data or (self.hits is not None and self.items >= self.hits):
                break
            last = [sort_value(data[-1], s) for s in self.sort]
            if any(v is None for v in last):
                raise HttpSourceError(
                    f"{url}: the last item of page {self.pages} has no value for sort field(s) {list(self.sort)}; "
                    "cannot continue with search-after"
                )
            if last == after:
                raise HttpSourceError(f"{url}: search-after did not advance past {last}; stopping")
            after = [v for v in last if v is not None]


def query_params(params: Mapping[str, Any], since: str | None) -> list[tuple[str, str]]:
    """Config parameters plus, for an incremental run, ``harvest_date_time ge <since>`` folded into ``q``.

    The query language wants every group in parentheses with a comparison first, hence the shape below.

    Example:
        >>> query_params({"q": 'target_name eq "Mars"'}, "2024-01-01T00:00:00Z")[0][1]
        '(ops:Harvest_Info.ops:harvest_date_time ge "2024-01-01T00:00:00Z" and (target_name eq "Mars"))'
    """
    flat = flatten_params(params)
    user = " ".join(v for k, v in flat if k == "q" and v.strip()).strip()
    rest = [(k, v) for k, v in flat if k != "q"]
    if since:
        mine = f'{HARVEST_TIME} ge "{since}"'
        if user:
            group = user if user.startswith("(") and user.endswith(")") else f"({user})"
            q = f"({mine} and {group})"
        else:
            q = f"({mine})"
        return [("q", q), *rest]
    return ([("q", user)] if user else []) + rest
