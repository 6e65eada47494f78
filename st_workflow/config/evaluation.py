"""Configuration of evaluation: the benchmark registry, metrics, precisions, baselines and promotion."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from st_workflow.config.base import PositiveInt, StrictModel


class BenchmarkSpec(StrictModel):
    """A benchmark in BEIR layout: a local directory, a Hub dataset, or one this pipeline builds."""

    name: str
    """Key in reports and dump file names."""
    kind: Literal["local", "hf", "pipeline", "nanobeir"] = "local"
    """``local`` directory, ``hf`` dataset id, ``pipeline`` (the held-out in-domain benchmark), ``nanobeir`` (13 sets)."""
    path: str | None = None
    """Directory (local) or dataset id (hf)."""
    split: str = "test"
    """Qrels split (``qrels/<split>.tsv``)."""
    qrels_files: list[str] = Field(default_factory=list)
    """Several qrels files evaluated against one corpus (e.g. ``qrels/title-description~cmr.tsv``); empty: the split."""
    corpus_config: str = "corpus"
    """Hub config holding the corpus."""
    queries_config: str = "queries"
    """Hub config holding the queries."""
    qrels_config: str | None = None
    """Hub dataset (or config) holding the qrels; unset: ``<path>-qrels``."""
    query_prompt: str | None = None
    """Prompt prepended to every query (for instruction-tuned models)."""
    general: bool = False
    """A general-domain benchmark: promotion forbids regressing on it beyond the floor."""
    max_queries: PositiveInt | None = None
    """Evaluate on a seeded subset of queries (smoke runs)."""


class Baseline(StrictModel):
    """A named model to compare against."""

    name: str
    """Display name."""
    model: str
    """Model id or path."""
    query_prompt: str | None = None
    """Query prompt for this model."""


class PromotionConfig(StrictModel):
    """Which checkpoint is promoted, reproducibly."""

    policy: Literal["balanced", "best_in_domain", "last"] = "balanced"
    """``balanced``: best mean rank across benchmarks with a regression floor on general benchmarks."""
    metric: str = "ndcg@10"
    """Metric the policy ranks by."""
    max_general_regression: float = Field(default=0.02, ge=0)
    """Largest allowed drop against the base model on ``general`` benchmarks (absolute)."""


class EvaluationConfig(StrictModel):
    """Benchmarks and how they are scored."""

    enabled: bool = True
    """Evaluate (base model, checkpoints, fine-tuned model, baselines)."""
    benchmarks: list[BenchmarkSpec] = Field(
        default_factory=lambda: [BenchmarkSpec(name="in-domain", kind="pipeline")]
    )
    """Benchmark registry."""
    ks: list[PositiveInt] = Field(default_factory=lambda: [1, 5, 10, 100])
    """Cut-offs for every metric."""
    batch_size: PositiveInt = 64
    """Encoding batch size."""
    precisions: list[Literal["float32", "int8", "binary", "binary_rescore"]] = Field(
        default_factory=lambda: ["float32"]
    )
    """Corpus precisions to score."""
    rescore_multiplier: PositiveInt = 4
    """Binary + rescore: candidates = multiplier x k by Hamming, re-ranked with the float query."""
    max_seq_length: PositiveInt | None = None
    """Override the model's max_seq_length (unset: the model's own, as MTEB does)."""
    evaluate_base: bool = True
    """Also evaluate the base model."""
    evaluate_checkpoints: bool = True
    """Evaluate every saved checkpoint of the run."""
    baselines: list[Baseline] = Field(default_factory=list)
    """Named baselines."""
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    """Promotion policy."""
    primary_metrics: list[str] = Field(default_factory=lambda: ["ndcg@10", "mrr@10", "recall@10"])
    """Metrics shown in reports and summaries."""
