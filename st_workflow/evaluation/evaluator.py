"""Score one model on one benchmark: MTEB-exact metrics per qrels file and precision, with cached corpus indexes.

The evaluator is plain Python (no Prefect, no files besides the embedding cache), so the stage, the CLI, the
benchmarks and in-training evaluation all share it.

Example::

    from st_workflow.models import load_model
    from st_workflow.evaluation import EvalSettings, RetrievalEvaluator, load_local
    bench = load_local("../shared/benchmarks/scifact", name="scifact")
    run = RetrievalEvaluator(EvalSettings(ks=[10, 100])).evaluate(load_model("all-MiniLM-L6-v2"), bench)
    run.results["test"]["float32"].metrics["ndcg@10"]        # 0.64508...
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from st_workflow.evaluation.benchmarks import Benchmark, Subset, Task
from st_workflow.evaluation.embeddings import (
    EmbeddingCache,
    Encoder,
    distributed_world,
    module_hash,
    normalize,
)
from st_workflow.evaluation.index import CorpusIndex, parse_precision, storage_precision
from st_workflow.evaluation.metrics import IRResult, evaluate_rankings
from st_workflow.hashing import stable_hash

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from st_workflow.config.evaluation import EvaluationConfig

logger = logging.getLogger(__name__)

#: Bumped whenever a change alters metric values, so old dump entries are not reused.
METRICS_VERSION = 1


@dataclass
class EvalSettings:
    """Everything that decides how a model is scored (a subset of :class:`EvaluationConfig`)."""

    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 100])
    precisions: list[str] = field(default_factory=lambda: ["float32"])
    score_function: str = "cosine"
    batch_size: int = 64
    max_seq_length: int | None = None
    corpus_chunk_size: int = 50_000
    query_chunk_size: int = 1024
    rescore_multiplier: int = 4
    rescore: str = "float"
    """What binary + rescore re-ranks against: ``float`` (the ±1 codes) or ``int8`` (memory-mapped int8 corpus)."""
    rescore_multipliers: list[int] = field(default_factory=list)
    """Extra multipliers scored as ``binary_rescore@<m>`` (the sweep), when ``binary_rescore`` is scored."""
    binary_backend: str = "auto"
    ignore_identical_ids: bool = False
    dtype: str = "float32"
    """Resolved encoding dtype (``float32`` or ``bfloat16``): part of every fingerprint and cache key."""

    def __post_init__(self) -> None:
        self.ks = sorted({int(k) for k in self.ks})
        if not self.ks or self.ks[0] < 1:
            raise ValueError(f"ks must be positive, got {self.ks}")
        for p in self.precisions:
            parse_precision(p)  # raises naming the unknown precision
        if self.rescore not in ("float", "int8"):
            raise ValueError(f"rescore must be 'float' or 'int8', got {self.rescore!r}")
        # float32 is always scored: it is the reference every other precision's retention is measured against.
        wanted = ["float32", *[p for p in dict.fromkeys(self.precisions) if p != "float32"]]
        if "binary_rescore" in wanted:
            sweep = sorted({int(m) for m in self.rescore_multipliers} - {int(self.rescore_multiplier)})
            wanted += [f"binary_rescore@{m}" for m in sweep if f"binary_rescore@{m}" not in wanted]
        self.precisions = wanted

    @classmethod
    def from_config(cls, ev: EvaluationConfig, device: str | None = None) -> EvalSettings:
        """Settings of ``ev``; ``ev.dtype: auto`` is resolved for ``device`` (unset: the first configured device,
        else CUDA when available, else the CPU)."""
        from st_workflow.models.dtype import resolve_dtype

        return cls(
            dtype=resolve_dtype(ev.dtype, device or (ev.devices[0] if ev.devices else None)),
            ks=list(ev.ks),
            precisions=list(ev.precisions),
            score_function=ev.score_function,
            batch_size=ev.batch_size,
            max_seq_length=ev.max_seq_length,
            corpus_chunk_size=ev.corpus_chunk_size,
            query_chunk_size=ev.query_chunk_size,
            rescore_multiplier=ev.rescore_multiplier,
            rescore=ev.rescore,
            rescore_multipliers=list(ev.rescore_multipliers),
            binary_backend=ev.binary_backend,
            ignore_identical_ids=ev.ignore_identical_ids,
        )

    def result_fingerprint(
        self, *, model_hash: str, task: Task, precision: str, query_prompt: str | None
    ) -> str:
        """Identity of one (model weights, task, precision) result: equal fingerprints mean equal metrics."""
        name, pinned = parse_precision(precision)
        rescored = name == "binary_rescore"
        return stable_hash(
            {
                "metrics_version": METRICS_VERSION,
                "model": model_hash,
                "corpus": task.subset.corpus_hash,
                "qrels": task.subset.qrels_hash(task.qrels_name),
                "precision": precision,
                "ks": self.ks,
                "score_function": self.score_function,
                "max_seq_length": self.max_seq_length,
                "query_prompt": query_prompt,
                "rescore_multiplier": (pinned or self.rescore_multiplier) if rescored else None,
                # Candidates are multiplier x k per cutoff k (earlier results used multiplier x max(ks)).
                **({"rescore_pool": "per-cutoff"} if rescored else {}),
                # Absent for the float rescoring corpus, so earlier binary_rescore results keep their fingerprints.
                **({"rescore": self.rescore} if rescored and self.rescore != "float" else {}),
                "ignore_identical_ids": self.ignore_identical_ids,
                # Absent for float32, so results computed before dtypes existed keep their fingerprints.
                **({"dtype": self.dtype} if self.dtype != "float32" else {}),
            }
        )


@dataclass
class TaskResult:
    """Metrics of one task at one precision."""

    metrics: dict[str, float]
    n_queries: int
    n_queries_without_relevant: int
    fingerprint: str
    seconds: float = 0.0
    bytes_per_doc: float | None = None
    """Index bytes per document of the precision's index (so a reused result carries its size too)."""
    query_ms: float | None = None
    """Search latency: milliseconds per query of the exact top-k search at this precision (all queries of the
    subset in one batch, this corpus; encoding the query is excluded — it is the same at every precision)."""
    rescore_bytes_per_doc: float | None = None
    """Binary + rescore with the int8 corpus: its bytes per document, kept on disk (memory-mapped)."""
    dtype: str = "float32"
    """Encoding dtype the result was computed with."""

    def as_ir(self) -> IRResult:
        return IRResult(self.metrics, self.n_queries, self.n_queries_without_relevant)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchmarkRun:
    """What :meth:`RetrievalEvaluator.evaluate` computed (only the requested task x precision pairs)."""

    results: dict[str, dict[str, TaskResult]] = field(default_factory=dict)
    """Task id -> precision -> result."""
    bytes_per_doc: dict[str, float] = field(default_factory=dict)
    """Index bytes per document per precision."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent encoding the corpus / queries and searching; ``corpus_cache_hits`` counted too."""


class RetrievalEvaluator:
    """Scores models on benchmarks with exact search, reusing cached corpus indexes.

    Args:
        settings: how to score.
        cache: corpus-index cache (``None``: always encode).
        kernel_cache_dir: where the native Hamming kernel is built.
        devices: encoding devices (several: multi-process pool); ``None``: every GPU, else the model's device.
    """

    def __init__(
        self,
        settings: EvalSettings | None = None,
        *,
        cache: EmbeddingCache | None = None,
        kernel_cache_dir: str | Path | None = None,
        devices: list[str] | None = None,
        show_progress_bar: bool = False,
    ) -> None:
        self.settings = settings or EvalSettings()
        self.cache = cache
        self.kernel_cache_dir = Path(kernel_cache_dir) if kernel_cache_dir else Path(".cache/st-workflow")
        self.devices = devices
        self.show_progress_bar = show_progress_bar
        self.search_device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")

    # ------------------------------------------------------------------ helpers
    def _max_seq_length(self, model: SentenceTransformer) -> int:
        if self.settings.max_seq_length is not None:
            model.max_seq_length = self.settings.max_seq_length
        return int(model.max_seq_length or 0)

    def _encoder(self, model: SentenceTransformer) -> Encoder:
        devices = self.devices
        if devices is None:
            from st_workflow.evaluation.embeddings import cuda_devices

            gpus = cuda_devices()
            devices = gpus if len(gpus) > 1 else None
        return Encoder(
            model,
            batch_size=self.settings.batch_size,
            devices=devices,
            show_progress_bar=self.show_progress_bar,
            dtype=self.settings.dtype,
        )

    def corpus_index(
        self,
        model: SentenceTransformer,
        encoder: Encoder,
        subset: Subset,
        storage: str,
        *,
        model_hash: str,
        timings: dict[str, float],
        built: dict[str, CorpusIndex] | None = None,
    ) -> CorpusIndex:
        """The subset's corpus index at ``storage`` precision: already built in this call (``built``), from the
        cache, or freshly encoded/quantised."""
        built = {} if built is None else built
        if storage in built:
            return built[storage]
        max_len = self._max_seq_length(model)
        cosine = self.settings.score_function == "cosine"
        key = self._cache_key(model, subset, storage, model_hash)
        if self.cache is not None:
            hit = self.cache.load(key)
            if hit is not None:
                tensors, meta = hit
                timings["corpus_cache_hits"] = timings.get("corpus_cache_hits", 0) + 1
                index = CorpusIndex.from_state(storage, int(meta["dim"]), tensors)  # type: ignore[arg-type]
                built[storage] = index
                return index
        if storage == "float32":
            t0 = time.perf_counter()
            emb = encoder.encode(subset.texts, "document")
            timings["encode_corpus_s"] = timings.get("encode_corpus_s", 0.0) + time.perf_counter() - t0
            index = CorpusIndex.build(normalize(emb) if cosine else emb, "float32")
        else:
            base = self.corpus_index(
                model, encoder, subset, "float32", model_hash=model_hash, timings=timings, built=built
            )
            index = CorpusIndex.build(base.data, storage)
        built[storage] = index
        rank, _ = distributed_world()
        if self.cache is not None and rank == 0:
            self.cache.save(
                key,
                index.state(),
                {
                    "dim": index.dim,
                    "docs": len(index),
                    "precision": storage,
                    "max_seq_length": max_len,
                    "weights": model_hash,
                    "corpus": subset.corpus_hash,
                    "dtype": self.settings.dtype,
                },
            )
        return index

    def _cache_key(self, model: SentenceTransformer, subset: Subset, storage: str, model_hash: str) -> str:
        doc_prompt = (getattr(model, "prompts", None) or {}).get("document")
        return EmbeddingCache.key(
            weights=model_hash,
            corpus=subset.corpus_hash,
            max_seq_length=self._max_seq_length(model),
            precision=storage,
            normalized=self.settings.score_function == "cosine",
            document_prompt=doc_prompt,
            **({"dtype": self.settings.dtype} if self.settings.dtype != "float32" else {}),
        )

    def rescore_corpus(
        self,
        model: SentenceTransformer,
        encoder: Encoder,
        subset: Subset,
        *,
        model_hash: str,
        timings: dict[str, float],
        built: dict[str, CorpusIndex],
    ) -> CorpusIndex | None:
        """The corpus binary + rescore re-ranks against: ``None`` for ``rescore: float`` (the ±1 codes), else the
        int8 index, memory-mapped from the embedding cache when there is one (the guide's "int8 on disk")."""
        if self.settings.rescore == "float":
            return None
        if "int8-rescore" in built:
            return built["int8-rescore"]
        index = self.corpus_index(
            model, encoder, subset, "int8", model_hash=model_hash, timings=timings, built=built
        )
        if self.cache is not None and distributed_world()[0] == 0:
            hit = self.cache.load(self._cache_key(model, subset, "int8", model_hash), mmap=True)
            if hit is not None:
                index = CorpusIndex.from_state("int8", int(hit[1]["dim"]), hit[0])
        built["int8-rescore"] = index
        return index

    def _rankings(
        self,
        index: CorpusIndex,
        queries: torch.Tensor,
        qids: list[str],
        subset: Subset,
        precision: str,
        rescore_index: CorpusIndex | None = None,
        k: int | None = None,
    ) -> dict[str, list[str]]:
        kmax = k or max(self.settings.ks)
        k_search = min(kmax + (1 if self.settings.ignore_identical_ids else 0), len(index))
        if k_search == 0:
            return {q: [] for q in qids}
        if index.data.device != self.search_device:
            index = index.to(self.search_device)
        res = index.search(
            queries.to(self.search_device),
            k_search,
            mode=precision,
            rescore_multiplier=self.settings.rescore_multiplier,
            backend=self.settings.binary_backend,  # type: ignore[arg-type]
            kernel_cache_dir=self.kernel_cache_dir,
            corpus_chunk_size=self.settings.corpus_chunk_size,
            query_chunk_size=self.settings.query_chunk_size,
            rescore_index=rescore_index,
        )
        out: dict[str, list[str]] = {}
        ids = subset.doc_ids
        for qid, row in zip(qids, res.indices.cpu().tolist(), strict=True):
            ranked = [ids[i] for i in row if i >= 0]
            if self.settings.ignore_identical_ids:
                ranked = [d for d in ranked if d != qid]
            out[qid] = ranked[:kmax]
        return out

    # ------------------------------------------------------------------ main entry
    def evaluate(
        self,
        model: SentenceTransformer,
        benchmark: Benchmark,
        *,
        model_hash: str | None = None,
        query_prompt: str | None = None,
        only: Iterable[tuple[str, str]] | None = None,
        on_result: Callable[[str, str, TaskResult], None] | None = None,
    ) -> BenchmarkRun:
        """Score ``model`` on ``benchmark``.

        Args:
            model_hash: weights hash keying the corpus cache and result fingerprints (computed from the model's
                directory when omitted).
            query_prompt: prompt for queries (default: the benchmark's, else the model's own ``query`` prompt).
            only: restrict to these ``(task_id, precision)`` pairs (the rest are assumed reused by the caller).
            on_result: called after each finished pair (the stage writes its dump there, so a crash keeps them).
        """
        s = self.settings
        prompt = query_prompt if query_prompt is not None else benchmark.query_prompt
        if model_hash is None:
            model_hash = module_hash(model)
        wanted = set(only) if only is not None else None
        run = BenchmarkRun()
        encoder = self._encoder(model)
        try:
            for subset in benchmark.subsets:
                tasks = [t for t in benchmark.tasks() if t.subset is subset]
                todo = {
                    (t.id, p) for t in tasks for p in s.precisions if wanted is None or (t.id, p) in wanted
                }
                if not todo:
                    continue
                todo_tasks = [t for t in tasks if any((t.id, p) in todo for p in s.precisions)]
                qids = sorted({q for t in todo_tasks for q in t.query_ids})
                t0 = time.perf_counter()
                q_emb = encoder.encode([subset.queries[q] for q in qids], "query", prompt=prompt)
                run.timings["encode_queries_s"] = run.timings.get("encode_queries_s", 0.0) + (
                    time.perf_counter() - t0
                )
                if s.score_function == "cosine":
                    q_emb = normalize(q_emb)
                built: dict[str, CorpusIndex] = {}
                for precision in s.precisions:
                    p_tasks = [t for t in todo_tasks if (t.id, precision) in todo]
                    if not p_tasks:
                        continue
                    index = self.corpus_index(
                        model,
                        encoder,
                        subset,
                        storage_precision(precision),
                        model_hash=model_hash,
                        timings=run.timings,
                        built=built,
                    )
                    run.bytes_per_doc[precision] = index.bytes_per_doc
                    # Binary + rescore re-ranks multiplier x k candidates for each cutoff k, as a deployment
                    # asking for k results does (one search at max(ks) would give ndcg@10 a 10x larger pool).
                    rescored = parse_precision(precision)[0] == "binary_rescore"
                    rescore_index = (
                        self.rescore_corpus(
                            model, encoder, subset, model_hash=model_hash, timings=run.timings, built=built
                        )
                        if rescored
                        else None
                    )
                    cutoffs: list[int | None] = list(s.ks) if rescored else [None]
                    index.prepare(s.binary_backend, self.kernel_cache_dir)  # no kernel build in the timing
                    rankings_at: dict[int | None, dict[str, list[str]]] = {}
                    for k in cutoffs:  # the last search is top-max(ks), as for the other precisions: timed
                        t0 = time.perf_counter()
                        rankings_at[k] = self._rankings(
                            index, q_emb, qids, subset, precision, rescore_index, k
                        )
                        search_s = time.perf_counter() - t0
                        run.timings["search_s"] = run.timings.get("search_s", 0.0) + search_s
                    for task in p_tasks:
                        t1 = time.perf_counter()
                        metrics: dict[str, float] = {}
                        for k, rankings in rankings_at.items():
                            ir = evaluate_rankings(
                                {q: rankings[q] for q in task.query_ids},
                                {q: task.qrels[q] for q in task.query_ids},
                                s.ks if k is None else [k],
                            )
                            metrics |= ir.metrics
                        result = TaskResult(
                            metrics=metrics,
                            n_queries=ir.n_queries,
                            n_queries_without_relevant=ir.n_queries_without_relevant,
                            fingerprint=s.result_fingerprint(
                                model_hash=model_hash, task=task, precision=precision, query_prompt=prompt
                            ),
                            seconds=round(search_s / len(p_tasks) + time.perf_counter() - t1, 4),
                            bytes_per_doc=index.bytes_per_doc,
                            query_ms=round(1000 * search_s / max(1, len(qids)), 4),
                            rescore_bytes_per_doc=rescore_index.bytes_per_doc
                            if rescore_index is not None
                            else None,
                            dtype=s.dtype,
                        )
                        run.results.setdefault(task.id, {})[precision] = result
                        if on_result is not None:
                            on_result(task.id, precision, result)
        finally:
            encoder.close()
        return run
