"""NASA CMR collections (UMM-C): the search API with Search-After paging, or a recorded UMM-C dump.

Live runs ask only for ``revision_date[]`` since the last watermark (minus an overlap, CMR indexes with a lag),
merge by concept-id and drop what ``/search/deleted-collections`` lists as deleted since then.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field

from st_workflow.config.base import SecretRef
from st_workflow.ingest import cmr as client_mod
from st_workflow.ingest.sources.base import (
    Listing,
    ListingChecks,
    RetryConfig,
    SourceBase,
    parse_params,
    set_given,
)
from st_workflow.ingest.timestamps import minus_seconds

if TYPE_CHECKING:
    from st_workflow.config.pairs import NaturalPairsConfig
    from st_workflow.ingest.documents import DocumentSink
    from st_workflow.ingest.stage import IngestContext


class CmrSource(ListingChecks, SourceBase):
    """NASA CMR collections (UMM-C) with Search-After paging, or a recorded UMM-C dump."""

    kind: Literal["cmr"] = "cmr"
    """Discriminator: ``cmr``."""
    base_url: str = "https://cmr.earthdata.nasa.gov"
    """CMR root URL; ``/search/collections.umm_json`` is appended."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Query parameters (``provider``, ``keyword``, ``cloud_hosted``, ``project``...)."""
    page_size: Annotated[int, Field(gt=0, le=2000)] = 2000
    """Items per page (CMR caps it at 2000)."""
    client_id: str = "st-workflow"
    """Sent as the ``Client-Id`` header, as CMR asks."""
    token: SecretRef = Field(default_factory=lambda: SecretRef(env="EARTHDATA_TOKEN"))
    """Optional Earthdata Login bearer token."""
    from_file: str | None = None
    """Read UMM-C items from a JSON Lines dump (or a saved response) instead of the API."""
    incremental: bool = True
    """Ask only for ``revision_date`` after the last successful ingest and merge by concept-id; collections CMR
    deleted since then (``/search/deleted-collections``) are removed from the merged set (counted as ``deleted``)."""
    incremental_overlap_s: float = Field(default=3600.0, ge=0)
    """Re-ask this many seconds before the newest ``revision-date`` already seen (CMR indexes with a lag; the
    merge by concept-id makes the overlap harmless)."""
    retry: RetryConfig = Field(default_factory=RetryConfig)
    """Retry policy for 429/5xx/timeouts."""

    watermark_field: ClassVar[str] = "revision_date"
    how_we_ask: ClassVar[frozenset[str]] = frozenset(
        {
            "retry",
            "page_size",
            "client_id",
            "token",
            "enabled",
            "incremental",
            "incremental_overlap_s",
            "on_shortfall",
        }
    )
    cli_help: ClassVar[str] = "NASA CMR collections (UMM-C)"

    def is_live(self) -> bool:
        return self.from_file is None

    def input_identity(self, ctx: IngestContext) -> Any:
        return [ctx.identity(p) for p in ctx.paths([self.from_file or ""])]

    def feed(self, ctx: IngestContext, sink: DocumentSink) -> None:
        path = ctx.paths([self.from_file or ""])[0]
        ctx.stream(sink, client_mod.iter_file(path, ctx.bounds.max_record_bytes), client_mod.item_candidate)

    def fetch(self, ctx: IngestContext, watermark: str | None) -> Listing:
        """The collections revised since ``watermark`` (all when None) and, incrementally, the deletions since."""
        headers = {"Client-Id": self.client_id, "Accept": "application/json"}
        token = self.token.resolve()
        if token is not None:
            headers["Authorization"] = f"Bearer {token.get_secret_value()}"
        params = client_mod.flatten_params(self.params)
        since = None
        if watermark:
            since = minus_seconds(watermark, self.incremental_overlap_s)
            params.append(("revision_date[]", f"{since},"))
            ctx.log.info("ingest %s: incremental, asking CMR for revision_date >= %s", self.name, since)
        client = ctx.client(self.retry, headers)
        pager = client_mod.CmrPager(
            client, self.base_url, client_mod.COLLECTIONS_PATH, params, self.page_size
        )

        def deletions(out: Listing) -> None:
            if since is not None:
                out.deleted = client_mod.deleted_collections(client, self.base_url, since)
                ctx.log.info(
                    "ingest %s: CMR lists %d collections deleted since %s", self.name, len(out.deleted), since
                )

        convert = lambda item, loc: client_mod.item_candidate(item, loc, self.base_url)  # noqa: E731
        return self.page_listing(ctx, client, pager, convert, watermark, deletions)

    @classmethod
    def natural_positive(cls, text: str, meta: dict[str, Any], cfg: NaturalPairsConfig) -> str:
        """Description plus the record's structured facts, one ``Label: value`` line each."""
        from st_workflow.ingest.structured import structured_description

        return structured_description(text, meta, "cmr", list(cfg.cmr_fields))

    @classmethod
    def add_cli_arguments(cls, s: argparse.ArgumentParser) -> None:
        add_listing_arguments(s)
        s.add_argument("--page-size", type=int, metavar="N", help="items per page (max 2000)")
        s.add_argument("--client-id", metavar="ID", help="Client-Id header")
        s.add_argument("--token-env", metavar="VAR", help="environment variable holding an Earthdata token")

    @classmethod
    def from_cli(cls, args: argparse.Namespace, common: dict[str, Any]) -> CmrSource:
        src = cls(
            **common,
            params=parse_params(args.param),
            from_file=args.from_file,
            incremental=not args.no_incremental,
        )
        set_given(src.token, env=args.token_env)
        return set_given(src, base_url=args.base_url, page_size=args.page_size, client_id=args.client_id)


def add_listing_arguments(s: argparse.ArgumentParser) -> None:
    """Options CMR and PDS share: API root, query parameters, a recorded dump, no incremental."""
    s.add_argument("--base-url", metavar="URL", help="API root (CMR: https://cmr.earthdata.nasa.gov)")
    s.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="query parameter (repeatable; a repeated key becomes a list)",
    )
    s.add_argument("--from-file", metavar="FILE", help="read a recorded dump instead of the API")
    s.add_argument("--no-incremental", action="store_true", help="always fetch everything")
