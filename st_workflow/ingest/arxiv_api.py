"""The arXiv export API (Atom): recent papers, newest first, at most one request every ``min_interval_s``.

Incremental runs ask with ``sortBy=lastUpdatedDate&sortOrder=descending`` and stop paging once entries are older than
the newest ``updated`` time of the last successful ingest. The API is known to return an empty page now and then
before ``totalResults`` is reached; such a page is asked again (bounded by the retry policy), never taken as the end.

Example:
    >>> base_id("http://arxiv.org/abs/2101.00001v3")
    '2101.00001'
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from st_workflow.ingest.arxiv import ABS_URL, FILTERED, MAX_AUTHORS_CHARS, category_matches
from st_workflow.ingest.documents import Candidate
from st_workflow.ingest.httpclient import HttpSourceError, RetryableBody, RetryingClient
from st_workflow.ingest.logs import logger as get_logger

if TYPE_CHECKING:
    from st_workflow.ingest.sources.arxiv import ArxivApiConfig

ATOM = "{http://www.w3.org/2005/Atom}"
ARXIV = "{http://arxiv.org/schemas/atom}"
OPENSEARCH = "{http://a9.com/-/spec/opensearch/1.1/}"
_VERSION = re.compile(r"v\d+$")


def base_id(entry_id: str) -> str:
    """The arXiv id without the ``http://arxiv.org/abs/`` prefix and the version suffix."""
    return _VERSION.sub("", entry_id.rsplit("/abs/", 1)[-1].strip())


@dataclass
class Feed:
    """One parsed Atom page."""

    total: int
    start: int
    entries: list[dict[str, Any]] = field(default_factory=list)


def _text(el: ET.Element | None) -> str | None:
    return el.text if el is not None and el.text is not None else None


def parse_feed(resp: httpx.Response) -> Feed:
    """Atom page -> :class:`Feed`; an unparsable (truncated) page asks for a retry, an API error entry fails."""
    try:
        root = ET.fromstring(resp.content)
    except ET.ParseError as e:
        raise RetryableBody(f"Atom feed does not parse: {e}") from None
    total = int(_text(root.find(f"{OPENSEARCH}totalResults")) or 0)
    start = int(_text(root.find(f"{OPENSEARCH}startIndex")) or 0)
    entries = []
    for entry in root.findall(f"{ATOM}entry"):
        eid = _text(entry.find(f"{ATOM}id")) or ""
        if "/api/errors" in eid:
            raise HttpSourceError(f"arXiv API error: {_text(entry.find(f'{ATOM}summary')) or eid}")
        doi = _text(entry.find(f"{ARXIV}doi"))
        entries.append(
            {
                "id": base_id(eid),
                "version_id": eid.rsplit("/abs/", 1)[-1],
                "title": _text(entry.find(f"{ATOM}title")),
                "summary": _text(entry.find(f"{ATOM}summary")),
                "published": _text(entry.find(f"{ATOM}published")),
                "updated": _text(entry.find(f"{ATOM}updated")),
                "authors": [n for a in entry.findall(f"{ATOM}author") if (n := _text(a.find(f"{ATOM}name")))],
                "categories": [c.get("term") for c in entry.findall(f"{ATOM}category") if c.get("term")],
                "doi": doi,
                "journal_ref": _text(entry.find(f"{ARXIV}journal_ref")),
            }
        )
    return Feed(total=total, start=start, entries=entries)


def entry_candidate(e: dict[str, Any], locator: str) -> Candidate:
    """One Atom entry as a candidate (same metadata keys as a snapshot line, ``format: api``)."""
    metadata = {
        "kind": "arxiv",
        "format": "api",
        "categories": e["categories"],
        "authors": ", ".join(e["authors"])[:MAX_AUTHORS_CHARS] or None,
        "doi": e.get("doi"),
        "journal_ref": e.get("journal_ref"),
        "created": e.get("published"),
        "update_date": e.get("updated"),
        "version": e.get("version_id"),
    }
    metadata = {k: v for k, v in metadata.items() if v not in (None, [], "")}
    url = ABS_URL + e["id"] if e.get("id") else None
    return Candidate(e.get("id"), e.get("title"), e.get("summary"), url, metadata, locator, raw=e)


@dataclass
class ArxivApiPager:
    """Pages through one API query; stops at ``max_results``, at ``since`` (incremental) or at the end.

    Yields candidates, or :data:`~st_workflow.ingest.arxiv.FILTERED` for entries outside ``categories``.
    """

    client: RetryingClient
    cfg: ArxivApiConfig
    since: str | None = None
    categories: tuple[str, ...] = ()
    newest: str | None = None
    """Newest ``updated`` time seen (the next run's watermark)."""
    pages: int = 0
    total: int | None = None
    complete: bool = True
    """False when ``max_results`` cut the listing short (the next run cannot be incremental from it)."""

    def __iter__(self) -> Iterator[Candidate | object]:
        cfg = self.cfg
        start, got = 0, 0
        empty_retries = 0
        while got < cfg.max_results:
            size = min(cfg.page_size, cfg.max_results - got)
            params = {"search_query": cfg.search_query, "start": start, "max_results": size}
            if cfg.incremental:
                params |= {"sortBy": "lastUpdatedDate", "sortOrder": "descending"}
            feed: Feed = self.client.get(cfg.base_url, params=params, parse=parse_feed).value
            self.pages += 1
            self.total = feed.total
            if not feed.entries:
                if start < feed.total and empty_retries + 1 < cfg.retry.max_attempts:
                    empty_retries += 1
                    get_logger().warning(
                        "arXiv API: empty page at start=%d of %d; asking again", start, feed.total
                    )
                    continue
                break
            empty_retries = 0
            stop = False
            for i, e in enumerate(feed.entries, 1):
                updated = e.get("updated") or ""
                if self.since and cfg.incremental and updated and updated < self.since:
                    stop = True
                    break
                if updated and (self.newest is None or updated > self.newest):
                    self.newest = updated
                got += 1
                if self.categories and not category_matches(e["categories"], self.categories):
                    yield FILTERED
                    continue
                yield entry_candidate(e, f"api start={start} entry {i}")
            start += len(feed.entries)
            if stop or start >= feed.total:
                self.complete = True
                return
        self.complete = self.total is not None and start >= self.total
