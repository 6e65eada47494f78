"""NASA CMR collections: UMM-C records to documents, and the ``CMR-Search-After`` pager.

The pager follows the paging headers and nothing else: it sends each response's ``CMR-Search-After`` back as the next
request's header and stops on an empty page or a page without the header. It never infers the end from a short page
(CMR may return fewer items than ``page_size``) nor from ``CMR-Hits`` (which can change while paging); a mismatch with
``CMR-Hits`` is logged. A page marked ``CMR-Time-Out: true`` holds partial results and is asked again.

Example:
    >>> item = {"meta": {"concept-id": "C1-PODAAC", "provider-id": "PODAAC"},
    ...         "umm": {"EntryTitle": "Sea surface temperature", "Abstract": "Daily SST fields.",
    ...                 "ScienceKeywords": [{"Category": "EARTH SCIENCE", "Topic": "OCEANS", "Term": "SST"}]}}
    >>> c = umm_candidate(item, "dump:1")
    >>> c.id, c.metadata["science_keywords"]
    ('C1-PODAAC', ['EARTH SCIENCE > OCEANS > SST'])
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from st_workflow.ingest.documents import WRONG_TYPE, Candidate, Rejection
from st_workflow.ingest.httpclient import HttpSourceError, RetryableBody, RetryingClient
from st_workflow.ingest.logs import logger as get_logger
from st_workflow.ingest.readers import iter_jsonl

COLLECTIONS_PATH = "search/collections.umm_json"
DELETED_COLLECTIONS_PATH = "search/deleted-collections"
PUBLIC_CMR = "https://cmr.earthdata.nasa.gov"

_KEYWORD_LEVELS = (
    "Category",
    "Topic",
    "Term",
    "VariableLevel1",
    "VariableLevel2",
    "VariableLevel3",
    "DetailedVariable",
)
_LOCATION_LEVELS = ("Category", "Type", "Subregion1", "Subregion2", "Subregion3", "DetailedLocation")


def flatten_params(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Query parameters as CMR wants them: booleans lower-case, lists as repeated keys, ``None`` dropped.

    Example:
        >>> flatten_params({"cloud_hosted": True, "provider": ["A", "B"], "keyword": None})
        [('cloud_hosted', 'true'), ('provider', 'A'), ('provider', 'B')]
    """
    out: list[tuple[str, str]] = []
    for key, value in params.items():
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            if v is None:
                continue
            out.append((key, ("true" if v else "false") if isinstance(v, bool) else str(v)))
    return out


def _strs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str) and v.strip()]
    return []


def _named(entries: Any) -> list[str]:
    """``ShortName (LongName)`` of UMM platform/instrument/project entries."""
    out: list[str] = []
    for e in entries if isinstance(entries, list) else []:
        if not isinstance(e, dict):
            continue
        short, long_ = e.get("ShortName"), e.get("LongName")
        if isinstance(short, str) and short.strip():
            name = short.strip()
            if isinstance(long_, str) and long_.strip() and long_.strip() != name:
                name = f"{name} ({long_.strip()})"
            if name not in out:
                out.append(name)
    return out


def _hierarchy(entries: Any, levels: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for e in entries if isinstance(entries, list) else []:
        if isinstance(e, dict):
            parts = [e[k].strip() for k in levels if isinstance(e.get(k), str) and e[k].strip()]
            joined = " > ".join(parts)
            if joined and joined not in out:
                out.append(joined)
    return out


def umm_candidate(item: Any, locator: str, cmr_root: str = PUBLIC_CMR) -> Candidate | Rejection:
    """One ``items[]`` element of a ``collections.umm_json`` response as a document candidate.

    Kept: EntryTitle (title), Abstract (text), ShortName, Version, ScienceKeywords, Purpose, DOI, concept-id,
    revision id/date, provider, platforms with their instruments, projects, location/ancillary keywords.
    """
    if not isinstance(item, dict):
        return Rejection(
            WRONG_TYPE, None, f"item is a {type(item).__name__}, expected an object", locator, raw=item
        )
    meta, umm = item.get("meta"), item.get("umm")
    if not isinstance(meta, dict) or not isinstance(umm, dict):
        return Rejection(WRONG_TYPE, "meta/umm", "item has no 'meta' and 'umm' objects", locator, raw=item)
    cid = meta.get("concept-id")
    platforms = umm.get("Platforms")
    instruments: list[str] = []
    for p in platforms if isinstance(platforms, list) else []:
        if isinstance(p, dict):
            instruments += [i for i in _named(p.get("Instruments")) if i not in instruments]
    doi = umm.get("DOI")
    metadata: dict[str, Any] = {
        "kind": "cmr",
        "concept_id": cid,
        "revision_id": meta.get("revision-id"),
        "revision_date": meta.get("revision-date"),
        "provider": meta.get("provider-id"),
        "short_name": umm.get("ShortName"),
        "version": umm.get("Version"),
        "doi": doi.get("DOI") if isinstance(doi, dict) else None,
        "purpose": umm.get("Purpose") if isinstance(umm.get("Purpose"), str) else None,
        "science_keywords": _hierarchy(umm.get("ScienceKeywords"), _KEYWORD_LEVELS),
        "platforms": _named(platforms),
        "instruments": instruments,
        "projects": _named(umm.get("Projects")),
        "location_keywords": _hierarchy(umm.get("LocationKeywords"), _LOCATION_LEVELS),
        "ancillary_keywords": _strs(umm.get("AncillaryKeywords")),
        "iso_topic_categories": _strs(umm.get("ISOTopicCategories")),
        "collection_data_type": umm.get("CollectionDataType")
        if isinstance(umm.get("CollectionDataType"), str)
        else None,
    }
    metadata = {k: v for k, v in metadata.items() if v not in (None, [], "")}
    url = f"{cmr_root.rstrip('/')}/search/concepts/{cid}.html" if isinstance(cid, str) and cid else None
    return Candidate(cid, umm.get("EntryTitle"), umm.get("Abstract"), url, metadata, locator, raw=item)


def atom_candidate(entry: Any, locator: str, cmr_root: str = PUBLIC_CMR) -> Candidate | Rejection:
    """One ``feed.entry[]`` of the legacy ATOM-JSON ``collections.json`` format (title, summary, id)."""
    if not isinstance(entry, dict):
        return Rejection(
            WRONG_TYPE, None, f"entry is a {type(entry).__name__}, expected an object", locator, raw=entry
        )
    cid = entry.get("id")
    metadata = {
        "kind": "cmr",
        "concept_id": cid,
        "provider": entry.get("data_center"),
        "short_name": entry.get("short_name"),
        "version": entry.get("version_id"),
        "revision_date": entry.get("updated"),
    }
    metadata = {k: v for k, v in metadata.items() if v not in (None, "")}
    url = f"{cmr_root.rstrip('/')}/search/concepts/{cid}.html" if isinstance(cid, str) and cid else None
    return Candidate(cid, entry.get("title"), entry.get("summary"), url, metadata, locator, raw=entry)


def item_candidate(item: Any, locator: str, cmr_root: str = PUBLIC_CMR) -> Candidate | Rejection:
    """UMM-C item or ATOM entry, whichever ``item`` is."""
    if isinstance(item, dict) and "umm" not in item and "summary" in item:
        return atom_candidate(item, locator, cmr_root)
    return umm_candidate(item, locator, cmr_root)


def iter_file(path: Path, max_record_bytes: int) -> Iterator[tuple[Any, str] | Rejection]:
    """Items of a UMM-C dump: JSON Lines (one item per line) or a saved response (``{"items": [...]}``,
    ``{"feed": {"entry": [...]}}`` or a JSON list), by extension (``.jsonl`` / ``.json``)."""
    name = path.name
    if path.suffix.lower() != ".json":
        yield from iter_jsonl(path, max_record_bytes)
        return
    try:
        body = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    items = _items_of(body)
    if items is None:
        raise ValueError(
            f"{path}: expected a collections.umm_json response ('items'), an ATOM feed or a list"
        )
    for i, item in enumerate(items, 1):
        yield item, f"{name}#items[{i}]"


def _items_of(body: Any) -> list[Any] | None:
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        if isinstance(body.get("items"), list):
            return body["items"]
        feed = body.get("feed")
        if isinstance(feed, dict) and isinstance(feed.get("entry"), list):
            return feed["entry"]
    return None


def _parse_page(resp: httpx.Response) -> list[Any]:
    try:
        body = orjson.loads(resp.content)
    except orjson.JSONDecodeError as e:
        raise RetryableBody(f"body is not valid JSON ({len(resp.content)} bytes): {e}") from None
    items = _items_of(body)
    if items is None:
        raise RetryableBody("JSON body has neither 'items' nor 'feed.entry'")
    return items


def _timeout_check(resp: httpx.Response) -> str | None:
    if resp.headers.get("CMR-Time-Out", "").lower() == "true":
        return "CMR-Time-Out: true (partial results)"
    return None


@dataclass
class CmrPager:
    """Iterates every item of a CMR search, one page at a time, by ``CMR-Search-After``.

    After iteration ``hits`` (from ``CMR-Hits``), ``pages`` and ``items`` tell what happened.
    """

    client: RetryingClient
    base_url: str
    path: str = COLLECTIONS_PATH
    params: list[tuple[str, str]] | None = None
    page_size: int = 2000
    hits: int | None = None
    pages: int = 0
    items: int = 0

    def __iter__(self) -> Iterator[tuple[Any, str]]:
        url = f"{self.base_url.rstrip('/')}/{self.path.lstrip('/')}"
        params = [*(self.params or []), ("page_size", str(self.page_size))]
        search_after: str | None = None
        while True:
            headers = {"CMR-Search-After": search_after} if search_after else None
            resp = self.client.get(
                url, params=params, headers=headers, parse=_parse_page, check=_timeout_check
            )
            self.pages += 1
            if self.hits is None and resp.headers.get("CMR-Hits", "").strip().isdigit():
                self.hits = int(resp.headers["CMR-Hits"])
            items: list[Any] = resp.value
            for i, item in enumerate(items, 1):
                yield item, f"{self.path} page {self.pages} item {i}"
            self.items += len(items)
            nxt = resp.headers.get("CMR-Search-After")
            if not items or not nxt:
                break
            if nxt == search_after:
                raise HttpSourceError(f"{url}: CMR sent the same CMR-Search-After twice ({nxt}); stopping")
            search_after = nxt
        if self.hits is not None and self.items != self.hits:
            get_logger().warning(
                "CMR %s: CMR-Hits said %d but the Search-After chain gave %d items",
                url,
                self.hits,
                self.items,
            )


def _parse_references(resp: httpx.Response) -> list[str]:
    """Concept ids of an XML references response (``<results><references><reference><id>``)."""
    try:
        root = ET.fromstring(resp.content)
    except ET.ParseError as e:
        raise RetryableBody(f"body is not well-formed XML ({len(resp.content)} bytes): {e}") from None
    if root.tag != "results":
        raise RetryableBody(f"XML body is a <{root.tag}>, expected <results> with references")
    return [r.findtext("id", "").strip() for r in root.iter("reference") if (r.findtext("id") or "").strip()]


def deleted_collections(client: RetryingClient, base_url: str, since: str) -> list[str]:
    """Concept ids of the collections CMR deleted at or after ``since`` (and that were not ingested again).

    ``GET /search/deleted-collections?revision_date=<since>``: the whole list in one response (no paging); XML
    references are the only format (``Accept: application/json`` is a 400) and ``revision_date`` the only
    parameter (a start date, no range), so the list covers every provider and the caller intersects it with its own.
    """
    url = f"{base_url.rstrip('/')}/{DELETED_COLLECTIONS_PATH}"
    resp = client.get(
        url,
        params=[("revision_date", since)],
        headers={"Accept": "application/xml"},
        parse=_parse_references,
    )
    return list(dict.fromkeys(resp.value))
