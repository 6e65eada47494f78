"""Evaluation: MTEB-exact IR metrics, cached corpus indexes, quantized retrieval, dumps, reports and promotion.

What the flows call:

* :func:`evaluate_stage` ``(cfg, models, benchmark_dirs) -> Manifest`` — the ``eval`` stage;
* :func:`write_comparison_report` ``(cfg, eval_manifest, out_dir, *, models_order=None) -> dict[str, Path]``;
* :func:`promote` ``(cfg, eval_manifest, candidates, base="base") -> dict``.

Building blocks (usable without a pipeline): :class:`RetrievalEvaluator` + :class:`EvalSettings` (one model on one
:class:`Benchmark`), :func:`load_benchmark` / :func:`load_local`, :func:`evaluate_rankings` (metrics on ranked
lists), :class:`CorpusIndex` (float32 / int8 / binary indexes and exact search), :func:`encode_sharded` (DDP
encoding) and :class:`BenchmarkIREvaluator` (in-training evaluation for the sentence-transformers trainer).

Heavy imports (torch, sentence-transformers, matplotlib) happen on first attribute access, so importing the package
for its config types stays cheap.
"""

from __future__ import annotations

from st_workflow.lazy import lazy_exports

_EXPORTS = {
    "evaluate_stage": "stage",
    "benchmark_specs": "stage",
    "write_comparison_report": "report",
    "promote": "promotion",
    "RetrievalEvaluator": "evaluator",
    "EvalSettings": "evaluator",
    "TaskResult": "evaluator",
    "BenchmarkRun": "evaluator",
    "Benchmark": "benchmarks",
    "Subset": "benchmarks",
    "Task": "benchmarks",
    "BenchmarkUnavailableError": "benchmarks",
    "load_benchmark": "benchmarks",
    "load_local": "benchmarks",
    "evaluate_rankings": "metrics",
    "evaluate_run": "metrics",
    "IRResult": "metrics",
    "CorpusIndex": "index",
    "EmbeddingCache": "embeddings",
    "Encoder": "embeddings",
    "weights_hash": "embeddings",
    "model_hash": "embeddings",
    "encode_sharded": "distributed",
    "EvalDump": "dumps",
    "summarize": "dumps",
    "BenchmarkIREvaluator": "trainer_evaluator",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
