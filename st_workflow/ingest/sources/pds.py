"""NASA PDS Search API (products, collections, bundles), or a file of extracted context products / PDS4 labels.

Live runs ask only for products harvested since the last watermark (``harvest_date_time ge``) and merge by lidvid;
reference ids (``urn:nasa:pds:context:target:...``) become names through every record known, old and new.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import orjson
from pydantic import Field

from st_workflow.config.base import PositiveInt
from st_workflow.ingest import pds as client_mod
from st_workflow.ingest.documents import Candidate, Rejection
from st_workflow.ingest.sources.base import (
    Listing,
    ListingChecks,
    RetryConfig,
    SourceBase,
    parse_params,
    set_given,
)
from st_workflow.ingest.sources.cmr import add_listing_arguments

if TYPE_CHECKING:
    from st_workflow.config.pairs import NaturalPairsConfig
    from st_workflow.ingest.documents import DocumentSink
    from st_workflow.ingest.stage import IngestContext


class PdsSource(ListingChecks, SourceBase):
    """NASA PDS Search API (products, collections, bundles), or a file of extracted context products."""

    kind: Literal["pds"] = "pds"
    """Discriminator: ``pds``."""
    base_url: str = "https://pds.nasa.gov/api/search/1"
    """Search API root."""
    endpoint: Literal["products", "collections", "bundles"] = "products"
    """Which class of products to page through."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Query parameters (``q``, ``keywords``...)."""
    limit: PositiveInt = 500
    """Items per page (the docs advise staying below a few thousand)."""
    sort: list[str] = Field(default_factory=lambda: ["ops:Harvest_Info.ops:harvest_date_time", "lidvid"])
    """Sort fields for ``search-after`` paging (the API requires ``sort`` with ``search-after``). ``lidvid`` is
    appended when missing: ``search-after`` skips every item that ties with the last one sent, and products
    harvested together share one harvest time, so the sort must end with a unique field."""
    incremental: bool = True
    """Ask only for products harvested since the last successful ingest (``harvest_date_time ge ...``) and
    merge by lidvid."""
    from_file: str | None = None
    """Read records from a file instead of the API: JSON Lines of Search API items or of extracted PDS4 context
    products, a saved Search API response (``{"data": [...]}``), or a PDS4 XML label (or a directory of them)."""
    retry: RetryConfig = Field(default_factory=RetryConfig)
    """Retry policy for 429/5xx/timeouts."""

    watermark_field: ClassVar[str] = "harvest_date_time"
    how_we_ask: ClassVar[frozenset[str]] = frozenset(
        {"retry", "limit", "enabled", "incremental", "on_shortfall"}
    )
    cli_help: ClassVar[str] = "NASA PDS Search API"

    def is_live(self) -> bool:
        return self.from_file is None

    def input_identity(self, ctx: IngestContext) -> Any:
        return [ctx.identity(p) for p in ctx.paths([self.from_file or ""])]

    def feed(self, ctx: IngestContext, sink: DocumentSink) -> None:
        """All records first (references resolve across the whole file), then the sink."""
        path = ctx.paths([self.from_file or ""])[0]
        cands: list[Candidate] = []
        for rec in client_mod.iter_file(path, ctx.bounds.max_record_bytes):
            ctx.advance(1)
            if isinstance(rec, Rejection):
                sink.reject(rec)
                continue
            c = client_mod.record_candidate(*rec)
            if isinstance(c, Rejection):
                sink.reject(c)
            else:
                cands.append(c)
        client_mod.resolve_references(cands)
        for c in cands:
            if sink.full:
                break
            sink.add(c)

    def fetch(self, ctx: IngestContext, watermark: str | None) -> Listing:
        """Products harvested since ``watermark`` (all when None), by ``sort`` + ``search-after``."""
        if watermark:
            ctx.log.info(
                "ingest %s: incremental, asking PDS for harvest_date_time >= %s", self.name, watermark
            )
        client = ctx.client(self.retry, {})
        pager = client_mod.PdsPager(
            client,
            self.base_url,
            self.endpoint,
            client_mod.query_params(self.params, watermark),
            self.limit,
            tuple(self.sort),
        )
        convert = lambda item, loc: client_mod.api_candidate(item, loc, self.base_url)  # noqa: E731
        return self.page_listing(ctx, client, pager, convert, watermark)

    def resolve(self, candidates: list[Candidate], previous: dict[str, dict[str, Any]] | None) -> None:
        """Reference ids to names, through the new records and (incrementally) the stored ones."""
        titles = None
        if previous is not None:
            titles = {
                meta.get("lid"): r["title"]
                for r in previous.values()
                if isinstance(meta := orjson.loads(r["metadata"] or "{}"), dict) and meta.get("lid")
            }
        client_mod.resolve_references(candidates, titles)

    @classmethod
    def natural_positive(cls, text: str, meta: dict[str, Any], cfg: NaturalPairsConfig) -> str:
        """Description plus the product's structured facts, one ``Label: value`` line each."""
        from st_workflow.ingest.structured import structured_description

        return structured_description(text, meta, "pds", list(cfg.pds_fields))

    @classmethod
    def add_cli_arguments(cls, s: argparse.ArgumentParser) -> None:
        add_listing_arguments(s)
        s.add_argument("--endpoint", choices=["products", "collections", "bundles"], help="product class")
        s.add_argument("--limit", type=int, metavar="N", help="items per page")

    @classmethod
    def from_cli(cls, args: argparse.Namespace, common: dict[str, Any]) -> PdsSource:
        src = cls(
            **common,
            params=parse_params(args.param),
            from_file=args.from_file,
            incremental=not args.no_incremental,
        )
        return set_given(src, base_url=args.base_url, endpoint=args.endpoint, limit=args.limit)
