"""A Hugging Face dataset (Hub id or local dataset directory), mapped to documents through a column map.

Reusable when its input can be pinned: a local directory (file identity) or a Hub id with a ``revision``; an
unpinned Hub dataset can change under the same name, so it is read again every run.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from st_workflow.ingest.generic import iter_hf, local_dataset_dir, row_candidate
from st_workflow.ingest.sources.base import ColumnMap, SourceBase, add_column_arguments, column_map

if TYPE_CHECKING:
    from st_workflow.ingest.documents import DocumentSink
    from st_workflow.ingest.stage import IngestContext


class HfSource(SourceBase):
    """A Hugging Face dataset by id, mapped to documents."""

    kind: Literal["hf"] = "hf"
    """Discriminator: ``hf``."""
    dataset: str
    """Dataset id on the Hub (or a local dataset directory)."""
    config: str | None = None
    """Dataset configuration name."""
    split: str = "train"
    """Split to read."""
    revision: str | None = None
    """Git revision to pin."""
    streaming: bool = True
    """Stream instead of downloading the whole dataset first."""
    columns: ColumnMap = Field(default_factory=ColumnMap)
    """Column mapping."""

    cli_help: ClassVar[str] = "a Hugging Face dataset (Hub id or local dataset directory)"

    def input_identity(self, ctx: IngestContext) -> Any:
        local = local_dataset_dir(self)
        if local is not None:
            return ctx.identity(local)
        if self.revision:
            return {
                "hub": self.dataset,
                "config": self.config,
                "split": self.split,
                "revision": self.revision,
            }
        return None  # an unpinned Hub dataset can change under the same name: always re-read it

    def feed(self, ctx: IngestContext, sink: DocumentSink) -> None:
        extra = {"dataset": self.dataset}
        ctx.stream(sink, iter_hf(self), lambda o, loc: row_candidate(o, loc, self.columns, "hf", extra))

    @classmethod
    def add_cli_arguments(cls, h: argparse.ArgumentParser) -> None:
        h.add_argument("--dataset", required=True, metavar="ID", help="Hub id or local directory")
        h.add_argument("--config-name", metavar="NAME", help="dataset configuration")
        h.add_argument("--split", default="train", help="split (slicing allowed: train[:1000])")
        h.add_argument("--revision", metavar="REV", help="git revision to pin (makes re-runs re-usable)")
        h.add_argument("--no-streaming", action="store_true", help="download fully instead of streaming")
        add_column_arguments(h)

    @classmethod
    def from_cli(cls, args: argparse.Namespace, common: dict[str, Any]) -> HfSource:
        return cls(
            **common,
            dataset=args.dataset,
            config=args.config_name,
            split=args.split,
            revision=args.revision,
            streaming=not args.no_streaming,
            columns=column_map(args),
        )
