"""NASA ADS (Astrophysics Data System): the search API as a live source of title -> abstract documents.

``GET <base_url>/search/query`` with ``Authorization: Bearer <token>`` and Solr parameters ``q``, ``fq``, ``fl``,
``rows``, ``sort`` and ``cursorMark``: the first page asks ``cursorMark=*``, each next one the previous response's
``nextCursorMark``, and the listing ends when that mark comes back unchanged (Solr cursor semantics, which need a
sort that ends with a unique field: ``bibcode`` is appended when missing). The response is
``{"responseHeader": ..., "response": {"numFound": N, "docs": [...]}, "nextCursorMark": "..."}``.

Rate limits: every response carries ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset``
(epoch seconds); an exhausted quota answers HTTP 429. When ``Remaining`` reaches 0 the pager waits until the reset
before asking again, and a 429 is retried after the reset; both waits are bounded by ``retry.backoff_max_s`` (a
quota that resets later than that fails the run with an error that says when it resets).

Live runs continue from a watermark: the newest ``cursor_field`` value (``entry_date`` or ``indexed``) of the last
successful run, asked for as ``<cursor_field>:["<watermark>" TO *]`` added to ``q``, merged by bibcode. The token
comes from the environment (``ADS_API_TOKEN``) or a Prefect Secret block and is never logged or stored.

This module is the whole source: it registers through the ``st_workflow.sources`` entry point like a plug-in would
and needs nothing from the generic ingest loop beyond the protocol.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import httpx
from pydantic import Field

from st_workflow.config.base import SecretRef
from st_workflow.ingest.documents import WRONG_TYPE, Candidate, Rejection
from st_workflow.ingest.httpclient import HttpSourceError, RetryableBody, RetryingClient, parse_json
from st_workflow.ingest.sources.base import (
    TITLE_ABSTRACT,
    Listing,
    ListingChecks,
    RetryConfig,
    SourceBase,
    set_given,
)
from st_workflow.ingest.timestamps import minus_seconds

if TYPE_CHECKING:
    from st_workflow.ingest.stage import IngestContext

PUBLIC_ADS = "https://api.adsabs.harvard.edu/v1"
SEARCH_PATH = "search/query"
ABS_URL = "https://ui.adsabs.harvard.edu/abs/"
TIEBREAKER = "bibcode"
DEFAULT_FIELDS = (
    "bibcode",
    "title",
    "abstract",
    "author",
    "year",
    "pubdate",
    "pub",
    "doi",
    "keyword",
    "doctype",
    "entry_date",
    "indexed",
)
_MAX_AUTHORS = 50


class AdsRateLimitError(HttpSourceError):
    """The ADS quota is used up and resets later than the retry policy is willing to wait."""


class AdsSource(ListingChecks, SourceBase):
    """NASA ADS search API: papers (title, abstract, authors...) matching a Solr query, by cursor paging."""

    kind: Literal["ads"] = "ads"
    """Discriminator: ``ads``."""
    base_url: str = PUBLIC_ADS
    """API root; ``/search/query`` is appended."""
    q: str = "*:*"
    """Solr query, e.g. ``collection:astronomy year:2020`` or ``abs:"exoplanet atmosphere"``."""
    fq: list[str] = Field(default_factory=list)
    """Filter queries (``fq``), e.g. ``property:refereed``."""
    fl: list[str] = Field(default_factory=lambda: list(DEFAULT_FIELDS))
    """Fields to return; ``bibcode``, ``title``, ``abstract`` and the ``cursor_field`` are always asked for."""
    sort: str = "date desc"
    """Sort; ``, bibcode desc`` is appended unless it already ends with ``bibcode`` (cursor paging needs a unique
    last sort field)."""
    rows: Annotated[int, Field(gt=0, le=2000)] = 200
    """Records per page (ADS allows at most 2000)."""
    token: SecretRef = Field(default_factory=lambda: SecretRef(env="ADS_API_TOKEN"))
    """Bearer token (ADS requires one)."""
    cursor_field: Literal["entry_date", "indexed"] = "entry_date"
    """The watermark: ``entry_date`` (when ADS added the record) or ``indexed`` (when it was last indexed, which
    also catches corrected records)."""
    incremental: bool = True
    """Ask only for records whose ``cursor_field`` is at or after the last successful run's newest, and merge by
    bibcode."""
    incremental_overlap_s: float = Field(default=0.0, ge=0)
    """Re-ask this many seconds before the watermark (the merge by bibcode makes the overlap harmless)."""
    retry: RetryConfig = Field(default_factory=RetryConfig)
    """Retry policy for 429/5xx/timeouts; ``backoff_max_s`` also bounds a wait for the rate-limit reset."""

    how_we_ask: ClassVar[frozenset[str]] = frozenset(
        {"retry", "rows", "token", "enabled", "incremental", "incremental_overlap_s", "on_shortfall"}
    )
    merge: ClassVar[Literal["sorted", "append"]] = "sorted"
    pair_type: ClassVar[str] = TITLE_ABSTRACT
    cli_help: ClassVar[str] = "NASA ADS search API (bearer token from ADS_API_TOKEN)"

    @property
    def watermark_field(self) -> str:  # type: ignore[override]
        """The metadata key that orders revisions: the configured ``cursor_field``."""
        return self.cursor_field

    def is_live(self) -> bool:
        return True

    def field_list(self) -> list[str]:
        """``fl`` with the fields this source needs."""
        need = ["bibcode", "title", "abstract", self.cursor_field]
        return [*need, *(f for f in self.fl if f not in need)]

    def query(self, watermark: str | None) -> str:
        """``q``, with the watermark range for an incremental run."""
        if not watermark:
            return self.q
        since = (
            minus_seconds(watermark, self.incremental_overlap_s) if self.incremental_overlap_s else watermark
        )
        return f'({self.q}) AND {self.cursor_field}:["{since}" TO *]'

    def fetch(self, ctx: IngestContext, watermark: str | None) -> Listing:
        """Every record matching ``q`` (and, incrementally, the watermark range), page by page."""
        token = self.token.resolve()
        if token is None:
            where = self.token.env or self.token.prefect_block or "token"
            raise HttpSourceError(f"ingest {self.name}: ADS needs an API token; set {where}")
        headers = {"Authorization": f"Bearer {token.get_secret_value()}", "Accept": "application/json"}
        if watermark:
            ctx.log.info(
                "ingest %s: incremental, asking ADS for %s >= %s", self.name, self.cursor_field, watermark
            )
        client = ctx.client(self.retry, headers)
        pager = AdsPager(
            client,
            self.base_url,
            self.query(watermark),
            self.field_list(),
            paging_sort(self.sort),
            self.rows,
            self.fq,
        )
        return self.page_listing(ctx, client, pager, ads_candidate, watermark)

    @classmethod
    def add_cli_arguments(cls, s: argparse.ArgumentParser) -> None:
        s.add_argument("--base-url", metavar="URL", help=f"API root (default {PUBLIC_ADS})")
        s.add_argument("--q", metavar="QUERY", help="Solr query, e.g. 'abs:\"exoplanet\" year:2020'")
        s.add_argument(
            "--fq", action="append", default=[], metavar="FILTER", help="filter query (repeatable)"
        )
        s.add_argument("--sort", metavar="SORT", help="sort (default: date desc; bibcode is appended)")
        s.add_argument("--rows", type=int, metavar="N", help="records per page (max 2000)")
        s.add_argument("--token-env", metavar="VAR", help="environment variable holding the ADS token")
        s.add_argument("--no-incremental", action="store_true", help="always fetch everything")

    @classmethod
    def from_cli(cls, args: argparse.Namespace, common: dict[str, Any]) -> AdsSource:
        src = cls(**common, fq=args.fq, incremental=not args.no_incremental)
        set_given(src.token, env=args.token_env)
        return set_given(src, base_url=args.base_url, q=args.q, sort=args.sort, rows=args.rows)


# ================================================================================================ the client
def paging_sort(sort: str) -> str:
    """``sort`` ending with the unique ``bibcode`` (Solr cursors need it).

    Example:
        >>> paging_sort("date desc")
        'date desc,bibcode desc'
        >>> paging_sort("entry_date asc, bibcode asc")
        'entry_date asc,bibcode asc'
    """
    parts = [p.strip() for p in sort.split(",") if p.strip()]
    if not parts or parts[-1].split()[0] != TIEBREAKER:
        parts.append(f"{TIEBREAKER} desc")
    return ",".join(parts)


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else (None if isinstance(value, list) else value)


def ads_candidate(doc: Any, locator: str) -> Candidate | Rejection:
    """One ``response.docs[]`` element as a document: bibcode (id), title (ADS sends a list), abstract (text)."""
    if not isinstance(doc, dict):
        return Rejection(
            WRONG_TYPE, None, f"doc is a {type(doc).__name__}, expected an object", locator, raw=doc
        )
    bibcode = doc.get("bibcode")
    authors = doc.get("author") if isinstance(doc.get("author"), list) else []
    metadata: dict[str, Any] = {
        "kind": "ads",
        "bibcode": bibcode,
        "authors": [a for a in authors if isinstance(a, str)][:_MAX_AUTHORS],
        "year": doc.get("year"),
        "pubdate": doc.get("pubdate"),
        "pub": doc.get("pub"),
        "doi": _first(doc.get("doi")),
        "keywords": [k for k in doc.get("keyword") or [] if isinstance(k, str)],
        "doctype": doc.get("doctype"),
        "entry_date": doc.get("entry_date"),
        "indexed": doc.get("indexed"),
    }
    metadata = {k: v for k, v in metadata.items() if v not in (None, [], "")}
    url = f"{ABS_URL}{bibcode}/abstract" if isinstance(bibcode, str) and bibcode else None
    return Candidate(bibcode, _first(doc.get("title")), doc.get("abstract"), url, metadata, locator, raw=doc)


def _parse_page(resp: httpx.Response) -> dict[str, Any]:
    body = parse_json(resp)
    if not isinstance(body, dict) or not isinstance(body.get("response"), dict):
        raise RetryableBody("ADS body has no 'response' object")
    if not isinstance(body["response"].get("docs"), list):
        raise RetryableBody("ADS body has no 'response.docs' list")
    return body


def _int_header(headers: httpx.Headers, name: str) -> int | None:
    value = headers.get(name, "").strip()
    return int(value) if value.lstrip("-").isdigit() else None


def reset_wait(resp: httpx.Response, now: float | None = None) -> float | None:
    """Seconds until ``X-RateLimit-Reset`` (epoch seconds), or None without the header."""
    reset = _int_header(resp.headers, "X-RateLimit-Reset")
    if reset is None:
        return None
    return max(0.0, reset - (time.time() if now is None else now)) + 0.05


@dataclass
class RateLimit:
    """The last ``X-RateLimit-*`` headers seen."""

    limit: int | None = None
    remaining: int | None = None
    reset: int | None = None

    def update(self, headers: httpx.Headers) -> None:
        """Take the values of a response's headers (absent headers keep the old value)."""
        for attr, name in (("limit", "Limit"), ("remaining", "Remaining"), ("reset", "Reset")):
            v = _int_header(headers, f"X-RateLimit-{name}")
            if v is not None:
                setattr(self, attr, v)


@dataclass
class AdsPager:
    """Iterates every doc of one ADS query by ``cursorMark``, waiting for the quota to reset when it runs out.

    After iteration ``hits`` (``numFound``), ``pages``, ``items`` and ``rate`` tell what happened.
    """

    client: RetryingClient
    base_url: str
    q: str
    fl: list[str]
    sort: str
    rows: int = 200
    fq: list[str] = field(default_factory=list)
    hits: int | None = None
    pages: int = 0
    items: int = 0
    rate: RateLimit = field(default_factory=RateLimit)

    def _wait_for_quota(self) -> None:
        if self.rate.remaining is None or self.rate.remaining > 0 or self.rate.reset is None:
            return
        wait = max(0.0, self.rate.reset - time.time()) + 0.05
        cap = self.client.retry.backoff_max_s
        if wait > cap:
            raise AdsRateLimitError(
                f"ADS rate limit used up ({self.rate.limit} requests); it resets at epoch {self.rate.reset} "
                f"(in {wait:.0f} s), later than retry.backoff_max_s={cap:g}",
                status=429,
                transient=True,
            )
        self.client.pause(wait)

    def __iter__(self) -> Iterator[tuple[Any, str]]:
        url = f"{self.base_url.rstrip('/')}/{SEARCH_PATH}"
        base = [("q", self.q), ("fl", ",".join(self.fl)), ("rows", str(self.rows)), ("sort", self.sort)]
        base += [("fq", f) for f in self.fq]
        cursor = "*"
        while True:
            self._wait_for_quota()
            resp = self.client.get(
                url, params=[*base, ("cursorMark", cursor)], parse=_parse_page, wait_hint=reset_wait
            )
            self.rate.update(resp.headers)
            self.pages += 1
            body = resp.value
            found = body["response"].get("numFound")
            if self.hits is None and isinstance(found, int):
                self.hits = found
            docs: list[Any] = body["response"]["docs"]
            for i, doc in enumerate(docs, 1):
                yield doc, f"ads page {self.pages} doc {i}"
            self.items += len(docs)
            nxt = body.get("nextCursorMark")
            if not docs or not isinstance(nxt, str) or nxt == cursor:
                break
            cursor = nxt
