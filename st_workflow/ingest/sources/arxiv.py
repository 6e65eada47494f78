"""arXiv: the Kaggle metadata snapshot (JSON Lines, Kaggle or OAI-DC lines) and/or the export API.

File-backed while the API is off (the reuse key covers every snapshot file); live when it is on: each run asks the
API newest-first down to the last run's newest ``updated`` and appends new or updated papers to the stored ones
(``append`` merge: a multi-GB snapshot never has to sit in memory).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field

from st_workflow.config.base import PositiveInt, StrictModel
from st_workflow.ingest import arxiv as snapshot
from st_workflow.ingest.arxiv_api import ArxivApiPager
from st_workflow.ingest.documents import DUPLICATE_ID, Candidate, Rejection
from st_workflow.ingest.parallel import commit_all, prepared_arxiv
from st_workflow.ingest.readers import file_identity, iter_jsonl
from st_workflow.ingest.sources.base import TITLE_ABSTRACT, Listing, RetryConfig, SourceBase, set_given
from st_workflow.resources import resolve_path

if TYPE_CHECKING:
    from st_workflow.ingest.documents import DocumentSink
    from st_workflow.ingest.stage import IngestContext


class ArxivApiConfig(StrictModel):
    """The arXiv export API, for papers newer than the snapshot."""

    enabled: bool = False
    """Query the API in addition to the snapshot."""
    base_url: str = "http://export.arxiv.org/api/query"
    """Export API endpoint (Atom)."""
    search_query: str = "cat:astro-ph*"
    """arXiv search query, e.g. ``cat:physics.space-ph``."""
    max_results: PositiveInt = 1000
    """Total records to fetch from the API."""
    page_size: Annotated[int, Field(gt=0, le=2000)] = 500
    """Records per request (the API allows at most 2000)."""
    min_interval_s: float = Field(default=3.0, ge=0)
    """Minimum seconds between requests (arXiv terms of use: one request every 3 s)."""
    incremental: bool = True
    """Ask newest-first (``sortBy=lastUpdatedDate``) and stop at the last successful ingest's newest entry."""
    retry: RetryConfig = Field(default_factory=RetryConfig)
    """Retry policy for 429/5xx/timeouts/truncated responses."""


class ArxivSource(SourceBase):
    """arXiv metadata: the Kaggle ``arxiv-metadata-oai-snapshot.json`` (JSON Lines) and/or the export API."""

    kind: Literal["arxiv"] = "arxiv"
    """Discriminator: ``arxiv``."""
    snapshot: list[str] = Field(default_factory=list)
    """Snapshot files (JSON Lines, Kaggle or OAI-DC line format); ``pkg://`` paths name bundled data. Empty (with
    the API off): ``<download_dir>/arxiv-metadata-oai-snapshot.json``, downloaded from Kaggle when missing."""
    categories: list[str] = Field(default_factory=list)
    """Keep papers with a category matching one of these prefixes; empty keeps all. ``astro-ph`` matches
    ``astro-ph`` and ``astro-ph.EP``, ``physics`` matches ``physics.ao-ph`` but not ``math-ph``; a prefix ending
    in ``-`` or ``.`` (``hep-``) matches anything that starts with it."""
    kaggle_dataset: str = "Cornell-University/arxiv"
    """Kaggle dataset to download the snapshot from when it is missing and credentials exist."""
    download_dir: str = "data/raw"
    """Where a downloaded snapshot is put."""
    api: ArxivApiConfig = Field(default_factory=ArxivApiConfig)
    """Optional export-API ingest of recent papers."""

    watermark_field: ClassVar[str] = "update_date"
    merge: ClassVar[Literal["sorted", "append"]] = "append"
    pair_type: ClassVar[str] = TITLE_ABSTRACT
    cli_help: ClassVar[str] = "Kaggle arXiv snapshot (JSON Lines) and/or the export API"

    # ----------------------------------------------------------------------------------------- inputs
    def snapshots(self, ctx: IngestContext) -> list[Path]:
        """The snapshot files (downloading the Kaggle file when it is missing and credentials exist)."""
        if not self.snapshot:
            if self.api.enabled:
                return []
            return [
                snapshot.ensure_snapshot(
                    resolve_path(self.download_dir) / snapshot.KAGGLE_FILE, self.kaggle_dataset
                )
            ]
        out = []
        for v in self.snapshot:
            p = resolve_path(v)
            if not p.exists() and p.name == snapshot.KAGGLE_FILE:
                p = snapshot.ensure_snapshot(p, self.kaggle_dataset)
            out.append(p)
        return ctx.paths(str(p) for p in out)

    def _to_candidate(self) -> Any:
        prefixes = tuple(self.categories)
        return lambda o, loc: snapshot.snapshot_candidate(o, loc, prefixes)

    # ----------------------------------------------------------------------------------------- file-backed
    def input_identity(self, ctx: IngestContext) -> Any:
        return [file_identity(p, ctx.ingest.identity_hash_max_bytes) for p in self.snapshots(ctx)]

    def feed(self, ctx: IngestContext, sink: DocumentSink) -> None:
        prefixes = tuple(self.categories)
        for path in self.snapshots(ctx):
            workers = ctx.workers(path)
            if workers > 1:
                ctx.log.info("ingest %s: parsing %s with %d worker processes", self.name, path.name, workers)
                commit_all(sink, ctx.counted(prepared_arxiv(path, prefixes, ctx.bounds, workers)))
            else:
                ctx.stream(sink, iter_jsonl(path, ctx.bounds.max_record_bytes), self._to_candidate())
            if sink.full:
                break

    # ----------------------------------------------------------------------------------------- live
    def is_live(self) -> bool:
        return self.api.enabled

    def incremental_enabled(self) -> bool:
        return self.api.incremental

    def query_identity(self, ctx: IngestContext) -> Any:
        exclude: Any = {"enabled": True, "api": {"retry": True, "min_interval_s": True, "page_size": True}}
        query = self.model_dump(mode="json", exclude=exclude)
        query["snapshots"] = [
            file_identity(p, ctx.ingest.identity_hash_max_bytes) for p in self.snapshots(ctx)
        ]
        return query

    def fetch(self, ctx: IngestContext, watermark: str | None) -> Listing:
        """Newest-first API pages down to ``watermark``; one candidate per paper (its newest version)."""
        client = ctx.client(self.api.retry, {}, self.api.min_interval_s)
        pager = ArxivApiPager(client, self.api, since=watermark, categories=tuple(self.categories))
        by_id: dict[str, Candidate] = {}
        out = Listing()
        with client:
            for c in pager:
                ctx.advance(1)
                if c is snapshot.FILTERED:
                    out.filtered += 1
                    continue
                assert isinstance(c, Candidate)
                old = by_id.get(c.id)
                if old is None or str(c.metadata.get("update_date", "")) > str(
                    old.metadata.get("update_date", "")
                ):
                    by_id[c.id] = c
        out.candidates = list(by_id.values())
        out.fetched = len(by_id) + out.filtered
        out.newest = max(filter(None, [watermark, pager.newest]), default=None)
        # Newest-first listings stay incremental even when max_results cut them: everything newer than the watermark
        # was seen, and what is older than the cut is out of scope by configuration.
        out.complete = (pager.complete or self.api.incremental) and self.max_records is None
        return out

    def base_records(self, ctx: IngestContext, sink: DocumentSink, superseded: set[str]) -> None:
        """The snapshot, minus the papers the API returned a newer version of (reported as duplicates)."""
        to_candidate = self._to_candidate()
        for path in self.snapshots(ctx):
            for rec in iter_jsonl(path, ctx.bounds.max_record_bytes):
                if isinstance(rec, tuple) and isinstance(rec[0], dict) and rec[0].get("id") in superseded:
                    sink.reject(
                        Rejection(
                            DUPLICATE_ID,
                            "id",
                            "superseded by the newer arXiv API version",
                            rec[1],
                            id=rec[0]["id"],
                        )
                    )
                    continue
                ctx.offer(sink, rec, to_candidate)

    # ----------------------------------------------------------------------------------------- command line
    @classmethod
    def add_cli_arguments(cls, a: argparse.ArgumentParser) -> None:
        a.add_argument("--snapshot", action="append", metavar="FILE", help="snapshot file (repeatable)")
        a.add_argument(
            "--category", action="append", metavar="PREFIX", help="keep only these category prefixes"
        )
        a.add_argument("--api", action="store_true", help="also ask the export API for recent papers")
        a.add_argument("--api-url", metavar="URL", help="export API endpoint")
        a.add_argument("--api-query", metavar="QUERY", help="API search_query, e.g. 'cat:astro-ph*'")
        a.add_argument("--api-max-results", type=int, metavar="N", help="total API results")
        a.add_argument(
            "--min-interval", type=float, metavar="S", help="seconds between API requests (default 3)"
        )

    @classmethod
    def from_cli(cls, args: argparse.Namespace, common: dict[str, Any]) -> ArxivSource:
        api = set_given(
            ArxivApiConfig(enabled=args.api),
            base_url=args.api_url,
            search_query=args.api_query,
            max_results=args.api_max_results,
        )
        if args.min_interval is not None:  # 0 is a valid interval
            api.min_interval_s = args.min_interval
        return cls(**common, snapshot=args.snapshot or [], categories=args.category or [], api=api)
