"""Configuration of the ingest stage: document sources and record bounds.

Each source kind's config model lives with its behaviour in :mod:`st_workflow.ingest.sources` (one module per
kind); ``SourceConfig``, the ``kind``-discriminated union of them, is built here from the source registry (built-ins
and ``st_workflow.sources`` entry points). The classes are re-exported so ``st_workflow.config.ingest.CmrSource``
keeps working.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field
from pydantic.fields import FieldInfo

from st_workflow.config.base import NonNegInt, PositiveInt, StrictModel
from st_workflow.ingest.sources.base import ColumnMap, ListingChecks, RetryConfig, SourceBase
from st_workflow.ingest.sources.base import load as _load_sources

_SourceBase = SourceBase  # the old private names
_ListingChecks = ListingChecks


def _union() -> Any:
    classes = tuple(_load_sources().values())
    return Annotated[Union[classes], Field(discriminator="kind")]  # noqa: UP007  (a runtime tuple of classes)


SourceConfig = _union()
"""Any registered source config, chosen by its ``kind``."""

from st_workflow.ingest.sources.ads import AdsSource  # noqa: E402  (registered above; re-exported)
from st_workflow.ingest.sources.arxiv import ArxivApiConfig, ArxivSource  # noqa: E402
from st_workflow.ingest.sources.cmr import CmrSource  # noqa: E402
from st_workflow.ingest.sources.hf import HfSource  # noqa: E402
from st_workflow.ingest.sources.local import LocalSource  # noqa: E402
from st_workflow.ingest.sources.pds import PdsSource  # noqa: E402

__all__ = [
    "AdsSource",
    "ArxivApiConfig",
    "ArxivSource",
    "CmrSource",
    "ColumnMap",
    "HfSource",
    "IngestConfig",
    "LocalSource",
    "PdsSource",
    "RetryConfig",
    "SourceConfig",
    "rebuild_source_union",
]


class IngestConfig(StrictModel):
    """Document sources and the bounds every record must meet."""

    sources: list[SourceConfig] = Field(default_factory=list)
    """Document sources, each with a ``kind`` (arxiv, cmr, pds, hf, local, ads, or an installed plug-in's)."""
    min_title_chars: PositiveInt = 3
    """Shorter titles are quarantined."""
    min_text_chars: PositiveInt = 20
    """Shorter texts are quarantined."""
    max_text_chars: PositiveInt = 200_000
    """Longer texts are quarantined (size bound)."""
    max_record_bytes: PositiveInt = 4 * 1024 * 1024
    """Raw records (lines, API items) larger than this are quarantined before they are parsed."""
    dedup_content: bool = True
    """Quarantine a record whose normalised title and text equal an earlier record's (reason ``duplicate_content``)."""
    identity_hash_max_bytes: PositiveInt = 512 * 1024 * 1024
    """Input files up to this size are identified by their sha256 for re-use; larger ones (multi-GB snapshots) by
    name, size and modification time, which is much cheaper and changes whenever the file is replaced."""
    batch_rows: PositiveInt = 20_000
    """Documents per Parquet row group (memory stays bounded by one batch while streaming)."""
    workers: NonNegInt | None = None
    """Processes that parse big arXiv snapshots in parallel (the output is identical); unset: one per idle CPU (at
    most 4; in-process when fewer than two are idle) for snapshots over ``parallel_min_bytes``; 0 or 1: in-process."""
    parallel_min_bytes: PositiveInt = 64 * 1024 * 1024
    """Snapshots smaller than this are parsed in-process (starting workers costs about a second)."""

    def source(self, name: str) -> SourceConfig:
        """The source called ``name``."""
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(f"no ingest source named {name!r}; have {[s.name for s in self.sources]}")


def rebuild_source_union() -> None:
    """Rebuild ``SourceConfig`` and the models holding it after a source was registered at run time.

    Sources that register through the ``st_workflow.sources`` entry point group are loaded before the union is
    first built and need no call; this is for a class registered with
    :func:`st_workflow.ingest.sources.base.register` later (tests, notebooks).
    """
    global SourceConfig
    from st_workflow.config.root import PipelineConfig

    SourceConfig = _union()
    IngestConfig.model_fields["sources"] = FieldInfo.merge_field_infos(
        IngestConfig.model_fields["sources"], annotation=list[SourceConfig]
    )
    IngestConfig.model_rebuild(force=True)
    PipelineConfig.model_rebuild(force=True)
