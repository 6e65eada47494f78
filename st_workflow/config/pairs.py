"""Configuration of natural pairs and of the in-domain benchmark that is held out from them."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field

from st_workflow.config.base import Fraction, PositiveInt, StrictModel

# In each field Literal the first six labels are the default fields, in order (see ``_leading_fields``).
CmrField = Literal[
    "Description",
    "Purpose",
    "Science keywords",
    "Platform",
    "Instrument",
    "Project",
    "Short name",
    "Location",
    "Keywords",
    "Data type",
    "DOI",
]
PdsField = Literal[
    "Description",
    "Type",
    "Target",
    "Investigation",
    "Instrument host",
    "Instrument",
    "Telescope",
    "Facility",
    "Keywords",
    "Node",
    "Also known as",
]


def _leading_fields(fields: object, n: int) -> list[str]:
    """The first ``n`` labels of a field ``Literal``: the literal lists the default fields first, so the default
    is not written out a second time."""
    return list(get_args(fields)[:n])


class NaturalPairsConfig(StrictModel):
    """Pairs that exist in the data itself (title -> abstract / structured description)."""

    enabled: bool = True
    """Build natural pairs from the ingested documents."""
    sources: list[str] = Field(default_factory=list)
    """Ingest sources to build pairs from; empty means all."""
    max_positive_chars: PositiveInt = 4000
    """Truncate very long positives at a word boundary (the tokenizer truncates anyway; this keeps files small)."""
    cmr_fields: list[CmrField] = Field(default_factory=lambda: _leading_fields(CmrField, 6))
    """"Label: value" lines of a CMR positive, in order (the original used Description, Purpose, Scientific
    Keywords, Phenomena, Data format, Instrument). Also available: ``Short name``, ``Location``, ``Keywords``,
    ``Data type``, ``DOI``."""
    pds_fields: list[PdsField] = Field(default_factory=lambda: _leading_fields(PdsField, 6))
    """"Label: value" lines of a PDS positive, in order (the original used Description, Target, Repository,
    Investigation, Instrument). Also available: ``Telescope``, ``Facility``, ``Keywords``, ``Node``,
    ``Also known as``."""
    dedup: bool = True
    """Drop a pair whose normalised anchor and positive equal an earlier pair's (counted as ``duplicate``)."""


class HoldoutConfig(StrictModel):
    """The in-domain IR benchmark held out from training (BEIR layout), as the original built NASA SDE IR.

    Queries come from the held-out documents; the corpus is the whole collection (training documents are the
    distractors); near-duplicate families are held out whole; queries are split into seeded validation and test
    sets (choices use validation, reports show test).
    """

    enabled: bool = True
    """Hold out documents and write a benchmark."""
    name: str = "in-domain"
    """Benchmark name (directory under the run and key in reports)."""
    fraction: Fraction = 0.1
    """Share of near-duplicate families held out (chosen by a seeded hash of the family's first document)."""
    max_queries_per_source: PositiveInt | None = None
    """Cap on held-out documents per source (whole families are added in seeded order while they fit)."""
    validation_fraction: Fraction = 0.5
    """Share of held-out families whose queries form the ``validation`` split (the rest is ``test``); 0 writes
    only ``test``."""
    queries: Literal["auto", "title", "llm"] = "auto"
    """``title``: a held-out document's title is its query; ``llm``: the LLM endpoint writes a question a
    scientist would type, grounded in the document (titles where it fails); ``auto``: ``llm`` when an endpoint
    is configured, else ``title``."""
    per_source_qrels: bool = True
    """Also write one test qrels file per source (``qrels/<pair type>~<source>.tsv``) besides ``test.tsv``."""
    corpus_title: bool | None = None
    """Put the document title in the corpus entry's ``title`` field. Unset: only when the queries are not the
    titles themselves (a titled corpus would turn title queries into string matching)."""


class NearDuplicateConfig(StrictModel):
    """The one near-duplicate rule (:mod:`st_workflow.near_duplicates`) of the hold-out families, the leakage
    checks and the synthetic-pair gate."""

    threshold: float = Field(default=0.8, gt=0.0, le=1.0)
    """Jaccard similarity of skeleton word shingles at or above which two texts are near-duplicates (texts
    whose skeletons, digits masked, are equal always are)."""
    ngram: PositiveInt = 3
    """Words per shingle (shorter texts use character 3-grams)."""


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
    near_duplicates: NearDuplicateConfig = Field(default_factory=NearDuplicateConfig)
    """When two texts are the same text (hold-out families, leakage, synthetic-pair dedup)."""
