"""The ``eval`` stage: every model x every configured benchmark, incremental, one dump per benchmark.

``evaluate_stage(cfg, models, benchmark_dirs) -> Manifest`` follows the stage contract (docs/ARCHITECTURE.md): a
cache key over the evaluation config, the models' weights hashes, the benchmark directories' contents and the code
version; outputs only under ``cfg.stage_dir("eval")``; dumps rewritten atomically after every finished result;
``manifest.json`` last.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any

from st_workflow import atomic, progress
from st_workflow.config import PipelineConfig
from st_workflow.config.evaluation import BenchmarkSpec
from st_workflow.evaluation.benchmarks import (
    Benchmark,
    BenchmarkUnavailableError,
    hub_offline,
    load_benchmark,
)
from st_workflow.evaluation.dumps import EvalDump, summarize
from st_workflow.evaluation.embeddings import EmbeddingCache, model_hash
from st_workflow.evaluation.evaluator import EvalSettings, RetrievalEvaluator
from st_workflow.hashing import benchmark_hash, code_version, stable_hash
from st_workflow.manifest import Manifest, reusable

logger = logging.getLogger(__name__)

STAGE = "eval"


def benchmark_specs(
    cfg: PipelineConfig, benchmark_dirs: dict[str, Path]
) -> list[tuple[BenchmarkSpec, Path | None]]:
    """Configured benchmarks paired with their built directory (pipeline kind), plus built ones not configured.

    A single unmatched ``pipeline`` spec takes a single unmatched built directory (the hold-out is built under
    ``pairs.holdout.name``, which need not equal the spec's name).
    """
    dirs = {k: Path(v) for k, v in benchmark_dirs.items()}
    out: list[tuple[BenchmarkSpec, Path | None]] = []
    unmatched_specs = []
    for spec in cfg.evaluation.benchmarks:
        if spec.kind == "pipeline":
            if spec.name in dirs:
                out.append((spec, dirs.pop(spec.name)))
            else:
                unmatched_specs.append(len(out))
                out.append((spec, None))
        else:
            out.append((spec, None))
    if len(unmatched_specs) == 1 and len(dirs) == 1:
        name, d = dirs.popitem()
        i = unmatched_specs[0]
        logger.info("benchmark %r: using the built benchmark %r at %s", out[i][0].name, name, d)
        out[i] = (out[i][0], d)
    for name, d in dirs.items():
        out.append((BenchmarkSpec(name=name, kind="pipeline"), d))
    return out


def search_costs(
    results: dict[str, dict[str, dict[str, Any]]], tasks: list[str], precisions: list[str]
) -> dict[str, float]:
    """``<p>/query_ms`` (search milliseconds per query, mean over the headline tasks) and, for binary + rescore
    with the int8 corpus, ``<p>/rescore_bytes_per_doc`` (on disk): the cost side of the precision table.

    Example:
        >>> search_costs({"test": {"float32": {"query_ms": 2.0}, "binary": {"query_ms": 0.1}}}, ["test"],
        ...              ["float32", "binary"])
        {'query_ms': 2.0, 'binary/query_ms': 0.1}
    """
    out: dict[str, float] = {}
    for p in precisions:
        prefix = "" if p == "float32" else f"{p}/"
        for field in ("query_ms", "rescore_bytes_per_doc"):
            vals = [results[t][p].get(field) for t in tasks if p in results.get(t, {})]
            vals = [float(v) for v in vals if v is not None]
            if vals:
                out[prefix + field] = sum(vals) / len(vals)
    return out


def _model_prompts(cfg: PipelineConfig) -> dict[str, str]:
    return {b.name: b.query_prompt for b in cfg.evaluation.baselines if b.query_prompt is not None}


def _stage_key(
    cfg: PipelineConfig,
    hashes: dict[str, str],
    specs: list[tuple[BenchmarkSpec, Path | None]],
    dtype: str = "float32",
) -> str:
    from st_workflow.resources import resolve_path

    bench_ids: dict[str, Any] = {}
    for spec, d in specs:
        where = (
            d if d is not None else (resolve_path(spec.path) if spec.kind == "local" and spec.path else None)
        )
        content = benchmark_hash(where) if where is not None else None
        bench_ids[spec.name] = {"spec": spec.model_dump(mode="json"), "content": content}
    return stable_hash(
        {
            "stage": STAGE,
            "config": cfg.section_hash("evaluation"),
            "models": hashes,
            "benchmarks": bench_ids,
            "hub_offline": hub_offline(),
            "dtype": dtype,
            "code": code_version("evaluation", "models"),
        }
    )


def evaluate_stage(
    cfg: PipelineConfig,
    models: dict[str, str],
    benchmark_dirs: dict[str, Path],
    *,
    force: bool = False,
) -> Manifest:
    """Evaluate ``models`` (display name -> id or path) on every benchmark and return the ``eval`` manifest.

    Args:
        models: e.g. ``{"base": "sentence-transformers/all-MiniLM-L6-v2", "checkpoint-40": ".../checkpoint-40",
            "fine_tuned": ".../model", "INDUS-ST": "nasa-impact/nasa-smd-ibm-st-v2"}``.
        benchmark_dirs: built BEIR directories of the ``pipeline`` benchmarks, by name.
        force: ignore the stage-level cache (finished results in the dumps are still reused).

    Returns:
        A manifest whose ``metrics`` are ``{model: {benchmark: {"ndcg@10": ..., ...}}}`` (see
        :func:`st_workflow.evaluation.dumps.summarize` for the keys) and whose files are the dumps by benchmark
        name, plus ``skipped`` when a benchmark could not be loaded and was configured to be skipped, or a
        baseline model could not be loaded (keys ``model:<name>``; baselines never fail the stage).
    """
    from st_workflow.models import load_model, resolve_model

    ev = cfg.evaluation
    out_dir = cfg.stage_dir(STAGE)
    settings = EvalSettings.from_config(ev)
    resolved = {name: resolve_model(m, cfg.cache_path) for name, m in models.items()}
    hashes = {name: model_hash(models[name], resolved[name]) for name in models}
    specs = benchmark_specs(cfg, benchmark_dirs)
    key = _stage_key(cfg, hashes, specs, settings.dtype)
    if not force and (hit := reusable(out_dir, key)) is not None:
        logger.info("eval: reusing %s (same models, benchmarks and settings)", out_dir)
        progress.reused("evaluation", "Evaluating")
        return hit

    out_dir.mkdir(parents=True, exist_ok=True)
    cache = EmbeddingCache(cfg.cache_path / "embeddings") if ev.cache_embeddings else None
    evaluator = RetrievalEvaluator(settings, cache=cache, kernel_cache_dir=cfg.cache_path, devices=ev.devices)
    benches: dict[str, Benchmark] = {}
    skipped: dict[str, str] = {}
    for spec, d in specs:
        try:
            benches[spec.name] = load_benchmark(
                spec, directory=d, seed=cfg.seed, hub_timeout_s=ev.hub_timeout_s
            )
        except BenchmarkUnavailableError as e:
            if spec.on_unavailable == "skip" or (spec.kind == "pipeline" and d is None):
                logger.warning("eval: skipping benchmark %r: %s", spec.name, e)
                skipped[spec.name] = str(e)
                continue
            raise

    prompts = _model_prompts(cfg)
    baseline_names = {b.name for b in cfg.evaluation.baselines}
    skipped_models: dict[str, str] = {}
    primary = list(dict.fromkeys([*ev.primary_metrics, ev.promotion.metric]))
    counts = {"computed": 0, "reused": 0}
    logger.info("eval: encoding in %s (evaluation.dtype %s)", settings.dtype, ev.dtype)
    dumps = {name: EvalDump.load(out_dir / f"{name}.json") for name in benches}
    for name, b in benches.items():
        dumps[name].set_benchmark(b.describe())
    # Documents scored (encoded, or found in the embedding cache), model by model; a failure leaves it there.
    docs = {name: sum(len(sub.texts) for sub in b.subsets) for name, b in benches.items()}
    bar = progress.StageProgress(
        "evaluation", "Evaluating", total=len(models) * sum(docs.values()), unit="docs"
    )
    for model_name, model_id in models.items():
        model = None
        for bench_name, bench in benches.items():
            dump = dumps[bench_name]
            prompt = prompts.get(model_name, bench.query_prompt)
            dump.set_model(model_name, model=model_id, weights_hash=hashes[model_name])
            todo: set[tuple[str, str]] = set()
            for task in bench.tasks():
                for p in settings.precisions:
                    fp = settings.result_fingerprint(
                        model_hash=hashes[model_name], task=task, precision=p, query_prompt=prompt
                    )
                    prev = dump.find(fp)
                    if prev is not None:
                        dump.put(model_name, task.id, p, prev)
                        counts["reused"] += 1
                    else:
                        todo.add((task.id, p))
            if todo:
                if model is None:
                    logger.info("eval: loading %s (%s)", model_name, model_id)
                    try:
                        model = load_model(model_id, cache_dir=cfg.cache_path)
                    except Exception as e:
                        if model_name not in baseline_names:
                            raise
                        # A baseline that cannot be had (offline, gated, removed) must not sink the run.
                        logger.warning("eval: skipping baseline %r (%s): %s", model_name, model_id, e)
                        skipped_models[model_name] = f"{type(e).__name__}: {str(e)[:300]}"
                        for d in dumps.values():
                            d.drop_if_empty(model_name)
                        break
                logger.info("eval: %s on %s (%d task x precision)", model_name, bench_name, len(todo))

                def _store(
                    task_id: str, precision: str, result: Any, dump: EvalDump = dump, m: str = model_name
                ) -> None:
                    dump.put(m, task_id, precision, result)
                    dump.save()

                run = evaluator.evaluate(
                    model,
                    bench,
                    model_hash=hashes[model_name],
                    query_prompt=prompt,
                    only=todo,
                    on_result=_store,
                )
                dump.set_bytes(model_name, run.bytes_per_doc)
                counts["computed"] += len(todo)
            dump.save()
            bar.advance(docs[bench_name], detail=f"{model_name} on {bench_name}")
        del model
        gc.collect()

    bar.done()
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    for model_name in models:
        if model_name in skipped_models:
            continue
        for bench_name, bench in benches.items():
            dump = dumps[bench_name]
            metrics.setdefault(model_name, {})[bench_name] = summarize(
                dump.results(model_name),
                tasks=[t.id for t in bench.headline_tasks()],
                validation_tasks=[t.id for t in bench.validation_tasks()],
                precisions=settings.precisions,
                detail_metrics=primary,
                bytes_per_doc=dump.bytes_per_doc(model_name),
            ) | search_costs(
                dump.results(model_name), [t.id for t in bench.headline_tasks()], settings.precisions
            )
    files: dict[str, tuple[str, int | None] | str] = {name: f"{name}.json" for name in benches}
    if skipped or skipped_models:
        atomic.write_json(
            out_dir / "skipped.json", {**skipped, **{f"model:{k}": v for k, v in skipped_models.items()}}
        )
        files["skipped"] = "skipped.json"
    manifest = Manifest.build(
        stage=STAGE,
        directory=out_dir,
        files=files,
        counts={
            "models": len(models),
            "benchmarks": len(benches),
            "benchmarks_skipped": len(skipped),
            "models_skipped": len(skipped_models),
            "results_computed": counts["computed"],
            "results_reused": counts["reused"],
        },
        metrics=metrics,
        config_hash=cfg.section_hash("evaluation"),
        code_version=code_version("evaluation", "models"),
        cache_key=key,
        # A Hub benchmark's skip may be transient (Hub down), and so may a baseline's: such a manifest is
        # incomplete, never reused. With the Hub switched off (HF_HUB_OFFLINE=1, part of the key) the skip is what
        # every run gets, and a missing local/pipeline directory is in the key: those are complete.
        incomplete={}
        if hub_offline()
        else {
            **{
                f"benchmark:{s.name}": skipped[s.name]
                for s, _ in specs
                if s.kind in ("hf", "nanobeir") and s.name in skipped
            },
            **{f"model:{k}": v for k, v in skipped_models.items()},
        },
    )
    manifest.write()
    return manifest
