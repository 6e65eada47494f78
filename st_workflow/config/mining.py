"""Configuration of hard-negative mining (the ``mine`` stage between the pairs dataset and pre-tokenization).

The defaults follow sentence-transformers' documentation of ``mine_hard_negatives`` and the NV-Retriever recipe it
cites (*TopK-PercPos 95%*): take the most similar candidates, but only those scoring at least 5% below the positive,
which removes most false negatives (unlabelled relevant texts) without giving up hardness.

Example:
    >>> MiningConfig().relative_margin, MiningConfig().sampling_strategy, MiningConfig().num_negatives
    (0.05, 'top', 1)
    >>> MiningConfig(sources=["scifact-train"], corpus="collection").sources
    ['scifact-train']
    >>> try:
    ...     MiningConfig(range_min=10, range_max=10)
    ... except ValueError as e:
    ...     print("must be smaller than mining.range_max" in str(e))
    True
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from st_workflow.config.base import Fraction, NonNegInt, PositiveInt, StrictModel


class MiningConfig(StrictModel):
    """Hard negatives mined with sentence-transformers' ``mine_hard_negatives``."""

    enabled: bool = False
    """Mine a hard negative for every training pair."""
    sources: list[str] = Field(default_factory=list)
    """Names of the ``training.sources`` to mine, of any kind (``pipeline``, ``hf``, ``local``, ``beir``); empty:
    the pipeline pairs only (what every enabled ``pipeline`` source reads). The pipeline pairs are mined once
    for all ``pipeline`` sources (role ``pairs`` of the ``mine`` stage); every other listed source gets its own
    mined file (role ``source:<name>``), which pre-tokenization then trains on instead of the source's own rows.
    An unknown name fails the ``mine`` stage; a disabled source is skipped."""
    corpus: Literal["positives", "collection"] = "positives"
    """Where a source's negatives are drawn from. ``positives``: the distinct positives of that source's pairs.
    ``collection``: for a ``beir`` source, every document of its BEIR corpus (``title + " " + text``), judged
    or not, as in real retrieval; for ``pipeline``, ``hf`` and ``local`` sources, which have no collection
    besides their pairs, the same as ``positives``. Either way a negative is never a positive of its anchor."""
    model: str | None = None
    """Model that scores the candidates (id or path, ``tiny-bert`` too); unset: ``training.base_model``. A stronger
    model than the one being trained finds harder negatives, but also more false negatives: keep the margin."""
    max_seq_length: PositiveInt | None = None
    """Tokens per text when encoding for mining; unset: ``training.max_seq_length`` (what training will see)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Encoding device; auto picks CUDA when available. Part of the cache key: embeddings differ slightly by device."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Encoding precision: ``auto`` is bf16 autocast where the hardware computes it natively, else fp32. Only the
    ranking of candidates matters here, which bf16 barely changes, at half the memory traffic."""
    batch_size: PositiveInt = 64
    """Texts per encoding batch."""
    num_negatives: PositiveInt = 1
    """Negatives per pair; more than one writes one row per (anchor, positive, negative) triplet, as
    sentence-transformers' ``triplet`` format does. 10 or fewer is recommended."""
    range_min: NonNegInt = 0
    """Skip this many of the most similar candidates (another guard against false negatives; the margin usually
    suffices, so 0)."""
    range_max: PositiveInt = 50
    """Consider only the ``range_max`` most similar candidates: bounds the work and keeps negatives hard, while
    leaving room for the margin to discard near-duplicates of the positive."""
    max_score: float | None = None
    """Discard candidates scoring above this similarity to the anchor (near-duplicates); unset: no cap."""
    min_score: float | None = None
    """Discard candidates scoring below this similarity to the anchor (too easy to teach anything); unset: no floor."""
    absolute_margin: float | None = Field(default=None, ge=0)
    """Keep a candidate only if it scores at least this much below the positive (cosine units); unset: off."""
    relative_margin: Fraction | None = 0.05
    """Keep a candidate only if it scores at least this fraction of the positive's score below the positive
    (NV-Retriever's 95% rule: the best-performing false-negative filter in their study)."""
    sampling_strategy: Literal["top", "random"] = "top"
    """``top``: the hardest candidates that pass the filters; ``random``: a seeded sample among them (easier, more
    varied)."""
    query_prompt: str | None = None
    """Text prepended to anchors when encoding (e.g. ``"query: "`` for E5-style mining models); unset: none."""
    corpus_prompt: str | None = None
    """Text prepended to corpus texts when encoding (e.g. ``"passage: "``); unset: none."""
    fallback: Literal["random", "drop"] = "random"
    """Pairs for which the filters leave no candidate: ``random`` gives them a seeded random corpus text that is none
    of the anchor's positives (counted as ``negatives_fallback``), ``drop`` removes them (counted as ``dropped``)."""

    @model_validator(mode="after")
    def _window_fits(self) -> MiningConfig:
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"mining.sources lists a source twice: {self.sources}")
        if self.range_min >= self.range_max:
            raise ValueError(
                f"mining.range_min ({self.range_min}) must be smaller than mining.range_max ({self.range_max})"
            )
        if self.num_negatives > self.range_max - self.range_min:
            raise ValueError(
                f"mining.num_negatives ({self.num_negatives}) does not fit in the candidate window "
                f"range_max - range_min = {self.range_max - self.range_min}"
            )
        if self.min_score is not None and self.max_score is not None and self.min_score > self.max_score:
            raise ValueError(
                f"mining.min_score ({self.min_score}) is above mining.max_score ({self.max_score})"
            )
        return self
