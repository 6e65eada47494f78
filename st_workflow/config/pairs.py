"""Configuration of natural pairs and of the in-domain benchmark that is held out from them."""

from __future__ import annotations

from pydantic import Field

from st_workflow.config.base import Fraction, PositiveInt, StrictModel


class NaturalPairsConfig(StrictModel):
    """Pairs that exist in the data itself (title -> abstract / structured description)."""

    enabled: bool = True
    """Build natural pairs from the ingested documents."""
    sources: list[str] = Field(default_factory=list)
    """Ingest sources to build pairs from; empty means all."""
    max_positive_chars: PositiveInt = 4000
    """Truncate very long positives (the tokenizer truncates anyway; this keeps files small)."""


class HoldoutConfig(StrictModel):
    """The in-domain IR benchmark held out from training (BEIR layout), as the original built NASA SDE IR."""

    enabled: bool = True
    """Hold out documents and write a benchmark."""
    name: str = "in-domain"
    """Benchmark name (directory under the run and key in reports)."""
    fraction: Fraction = 0.1
    """Share of each source's documents held out (chosen by a seeded hash of the document id)."""
    max_queries_per_source: PositiveInt | None = None
    """Cap on held-out documents per source."""
    per_source_qrels: bool = True
    """Also write one qrels file per source (``qrels/title-description~<source>.tsv``) besides ``test.tsv``."""


class PairsConfig(StrictModel):
    """Natural pairs plus the held-out benchmark."""

    natural: NaturalPairsConfig = Field(default_factory=NaturalPairsConfig)
    """Natural pair construction."""
    holdout: HoldoutConfig = Field(default_factory=HoldoutConfig)
    """In-domain benchmark hold-out."""
    min_anchor_chars: PositiveInt = 3
    """Pairs with a shorter anchor are dropped (counted)."""
    min_positive_chars: PositiveInt = 20
    """Pairs with a shorter positive are dropped (counted)."""
