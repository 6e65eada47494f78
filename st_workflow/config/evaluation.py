"""Configuration of evaluation: the benchmark registry, metrics, precisions, baselines and promotion."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from st_workflow.config.base import Fraction, PositiveInt, StrictModel

#: The 13 NanoBEIR sets (``zeta-alpha-ai/Nano<name>``).
NANOBEIR_DATASETS: list[str] = [
    "ClimateFEVER",
    "DBPedia",
    "FEVER",
    "FiQA2018",
    "HotpotQA",
    "MSMARCO",
    "NFCorpus",
    "NQ",
    "QuoraRetrieval",
    "SCIDOCS",
    "ArguAna",
    "SciFact",
    "Touche2020",
]


class BenchmarkSpec(StrictModel):
    """A benchmark in BEIR layout: a local directory, a Hub dataset, or one this pipeline builds."""

    name: str
    """Key in reports and dump file names."""
    kind: Literal["local", "hf", "pipeline", "nanobeir"] = "local"
    """``local`` directory, ``hf`` dataset id, ``pipeline`` (the held-out in-domain benchmark), ``nanobeir`` (13 sets)."""
    path: str | None = None
    """Directory (local), dataset id or local dataset directory (hf), organisation or directory holding the
    ``Nano<name>`` sets (nanobeir; unset: ``zeta-alpha-ai``)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of an ``hf``/``nanobeir`` benchmark."""
    split: str = "test"
    """Headline qrels split: the numbers reports show (``qrels/<split>.tsv`` locally, the qrels split on the
    Hub)."""
    validation_split: str | None = "validation"
    """Qrels split that choices are made on (interpolation ratio, promotion), when the benchmark has it."""
    validation_fraction: Fraction | None = None
    """When the benchmark has no validation split: carve this seeded share of the headline split's judged
    queries into ``validation`` (by a hash of the query id and the seed); the headline split keeps the rest."""
    leakage: Literal["answers", "corpus", "queries", "none"] = "answers"
    """What training pairs may not contain (:mod:`st_workflow.leakage`): ``answers`` — a query, or a document
    judged relevant to a query; ``corpus`` — also any corpus document; ``queries`` — only queries; ``none``."""
    qrels_files: list[str] = Field(default_factory=list)
    """Several qrels files evaluated against one corpus (e.g. ``qrels/title-description~cmr.tsv``; globs allowed:
    ``qrels/*.tsv``); empty: the split."""
    subsets: list[str] = Field(default_factory=list)
    """nanobeir: which of the 13 sets (e.g. ``[SciFact, NFCorpus]``); empty: all."""
    corpus_config: str = "corpus"
    """Hub config holding the corpus."""
    queries_config: str = "queries"
    """Hub config holding the queries."""
    qrels_config: str | None = None
    """Hub dataset (or config) holding the qrels; unset: ``<path>-qrels`` (BeIR), else the ``default`` config
    (mteb)."""
    query_prompt: str | None = None
    """Prompt prepended to every query (for instruction-tuned models)."""
    general: bool = False
    """A general-domain benchmark: promotion forbids regressing on it beyond the floor."""
    max_queries: PositiveInt | None = None
    """Evaluate on a seeded subset of queries (smoke runs)."""
    on_unavailable: Literal["fail", "skip"] = "fail"
    """When a Hub benchmark cannot be loaded (offline, unreachable, gated): fail the stage, or skip it with a
    warning recorded in the eval manifest."""


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
    """``balanced``: among candidates within the floor on every general benchmark and better than the base
    in-domain, the best in-domain gain + general change (else the base is kept); ``best_in_domain``: best mean
    metric on the non-general benchmarks (no floor); ``last``: the last candidate. Decided on validation splits."""
    metric: str = "ndcg@10"
    """Metric the policy ranks by."""
    precision: Literal["float32", "int8", "binary", "binary_rescore"] = "float32"
    """Precision whose metric the policy ranks by (must be among ``evaluation.precisions`` unless float32)."""
    max_general_regression: float = Field(default=0.01, ge=0)
    """Largest allowed drop against the base model on each ``general`` benchmark's validation split (absolute)."""
    min_in_domain_gain: float = Field(default=0.0, ge=0)
    """A candidate must beat the base model in-domain (mean over non-general benchmarks, validation) by more
    than this to be promoted."""
    benchmarks: list[str] = Field(default_factory=list)
    """Benchmarks the policy looks at; empty: every evaluated benchmark."""


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
    score_function: Literal["cosine", "dot"] = "cosine"
    """Similarity for float32/int8 search: ``cosine`` (embeddings L2-normalised, as MTEB) or raw ``dot``."""
    devices: list[str] | None = None
    """Encoding devices; several (e.g. ``[cuda:0, cuda:1]``) encode through a multi-process pool. Unset: every
    visible GPU (a pool when there are several), else the model's default device."""
    cache_embeddings: bool = True
    """Cache corpus indexes under ``<cache_dir>/embeddings`` keyed by weights hash, corpus hash, max length and
    precision."""
    corpus_chunk_size: PositiveInt = 50_000
    """Corpus rows scored per search step (bounds memory: query chunk x corpus chunk scores)."""
    query_chunk_size: PositiveInt = 1024
    """Queries scored per search step."""
    binary_backend: Literal["auto", "native", "torch"] = "auto"
    """Hamming kernel: ``native`` compiles a popcount kernel with the system C compiler (CPU), ``torch`` runs
    anywhere (and on GPU); ``auto`` uses native on CPU when it builds."""
    ignore_identical_ids: bool = False
    """Drop a retrieved document whose id equals the query id (BEIR's default for ArguAna/Quora-style sets)."""
    hub_timeout_s: float = Field(default=20.0, gt=0)
    """Seconds to wait for the Hugging Face Hub to answer before a Hub benchmark counts as unavailable."""
    precisions: list[Literal["float32", "int8", "binary", "binary_rescore"]] = Field(
        default_factory=lambda: ["float32"]
    )
    """Corpus precisions to score."""
    rescore_multiplier: PositiveInt = 4
    """Binary + rescore: candidates = multiplier x k by Hamming, re-ranked with the float query (the
    ``binary_rescore`` numbers promotion and the headline tables use)."""
    rescore: Literal["float", "int8"] = "float"
    """What binary + rescore re-ranks the candidates against: ``float`` — the ``+-1`` codes themselves (no storage
    beyond the binary index); ``int8`` — int8 embeddings of the corpus kept on disk and memory-mapped (only the
    candidates' rows are read), as in the sentence-transformers quantization guide: binary index in memory, int8
    on disk, float query."""
    rescore_multipliers: list[PositiveInt] = Field(default_factory=list)
    """Also score binary + rescore at these multipliers (e.g. ``[1, 2, 8, 16]``; reported as
    ``binary_rescore@<m>``), so the report shows retention against the multiplier. Needs ``binary_rescore`` in
    ``precisions``; empty: only ``rescore_multiplier``."""
    max_seq_length: PositiveInt | None = None
    """Override the model's max_seq_length (unset: the model's own, as MTEB does)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Encoding dtype: ``bfloat16`` autocasts the forward pass (about 2x faster on CPUs with bf16 units, NDCG
    within about 0.002 of fp32); ``auto`` picks it where the hardware computes bf16 natively (CPU flags
    ``avx512_bf16``/``amx_bf16``, GPUs with bf16), fp32 elsewhere. Use ``float32`` to reproduce MTEB's numbers
    exactly. Every result records the dtype and the embedding cache keys on it."""
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

    @model_validator(mode="after")
    def _precisions_cover_their_users(self) -> EvaluationConfig:
        """Promotion by a precision, and a multiplier sweep, need that precision scored."""
        scored = {"float32", *self.precisions}
        if self.promotion.precision not in scored:
            raise ValueError(
                f"evaluation.promotion.precision is {self.promotion.precision!r} but evaluation.precisions "
                f"{self.precisions} does not score it; add it to evaluation.precisions"
            )
        if self.rescore_multipliers and "binary_rescore" not in scored:
            raise ValueError(
                "evaluation.rescore_multipliers sweeps binary + rescore: add binary_rescore to evaluation.precisions"
            )
        return self
