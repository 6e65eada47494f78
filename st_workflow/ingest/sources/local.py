"""A local JSON Lines, Parquet or CSV file of documents, mapped through a column map (reuse key: its identity)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from st_workflow.ingest.generic import row_candidate
from st_workflow.ingest.readers import iter_local
from st_workflow.ingest.sources.base import ColumnMap, SourceBase, add_column_arguments, column_map

if TYPE_CHECKING:
    from st_workflow.ingest.documents import DocumentSink
    from st_workflow.ingest.stage import IngestContext


class LocalSource(SourceBase):
    """A local JSON Lines, Parquet or CSV file of documents."""

    kind: Literal["local"] = "local"
    """Discriminator: ``local``."""
    path: str
    """File path (``pkg://`` for bundled data)."""
    format: Literal["auto", "jsonl", "parquet", "csv"] = "auto"
    """File format; ``auto`` goes by the extension."""
    columns: ColumnMap = Field(default_factory=ColumnMap)
    """Column mapping."""

    cli_help: ClassVar[str] = "a local JSON Lines, Parquet or CSV file"

    def input_identity(self, ctx: IngestContext) -> Any:
        return [ctx.identity(p) for p in ctx.paths([self.path])]

    def feed(self, ctx: IngestContext, sink: DocumentSink) -> None:
        path = ctx.paths([self.path])[0]
        b = ctx.bounds
        extra = {"file": path.name}
        ctx.stream(
            sink,
            iter_local(path, self.format, b.max_record_bytes, b.batch_rows),
            lambda o, loc: row_candidate(o, loc, self.columns, "local", extra),
        )

    @classmethod
    def add_cli_arguments(cls, loc: argparse.ArgumentParser) -> None:
        loc.add_argument("--path", required=True, metavar="FILE", help="input file")
        loc.add_argument(
            "--format", default="auto", choices=["auto", "jsonl", "parquet", "csv"], help="file format"
        )
        add_column_arguments(loc)

    @classmethod
    def from_cli(cls, args: argparse.Namespace, common: dict[str, Any]) -> LocalSource:
        return cls(**common, path=args.path, format=args.format, columns=column_map(args))
