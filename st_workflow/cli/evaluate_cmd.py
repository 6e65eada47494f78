"""``st-workflow evaluate --model M --benchmark B [--split test] [--output FILE.json]``.

Scores one or more models on one or more benchmarks with MTEB-exact metrics, prints a table and writes JSON.
``B`` is a BEIR directory, a benchmark name from ``--config``'s registry, ``nanobeir``, or a Hugging Face dataset
id. Corpus embeddings are cached (``<cache_dir>/embeddings``), so a second run only encodes the queries.

Example:
    st-workflow evaluate --model sentence-transformers/all-MiniLM-L6-v2 \\
        --benchmark ../shared/benchmarks/scifact --output scifact.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any


def _display_name(model: str) -> str:
    p = Path(model)
    return p.name if p.exists() else model.split("/")[-1]


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(
        [fmt.format(*header), fmt.format(*["-" * w for w in widths])] + [fmt.format(*r) for r in rows]
    )


def _run(args: argparse.Namespace) -> int:
    from st_workflow.config import PipelineConfig, load_config
    from st_workflow.runtime import apply_config_env

    cfg = load_config(args.config, args.overrides) if args.config else PipelineConfig()
    apply_config_env(cfg)
    ev = cfg.evaluation
    if args.cache_dir:
        cfg = cfg.model_copy(update={"cache_dir": args.cache_dir})

    from st_workflow.evaluation.benchmarks import (
        BenchmarkUnavailableError,
        load_benchmark,
        spec_from_argument,
    )
    from st_workflow.evaluation.dumps import summarize
    from st_workflow.evaluation.embeddings import EmbeddingCache
    from st_workflow.evaluation.evaluator import EvalSettings, RetrievalEvaluator
    from st_workflow.evaluation.stage import search_costs
    from st_workflow.fingerprints import model_hash
    from st_workflow.models import load_model, resolve_model

    if args.dtype:
        ev = ev.model_copy(update={"dtype": args.dtype})
    settings = EvalSettings.from_config(ev, device=(args.device or [None])[0])
    if args.ks:
        settings.ks = sorted(set(args.ks))
    if args.precision or args.rescore or args.rescore_multiplier:
        update: dict[str, Any] = {"precisions": args.precision or settings.precisions}
        if args.rescore:
            update["rescore"] = args.rescore
        if args.rescore_multiplier:
            update["rescore_multiplier"] = args.rescore_multiplier[0]
            update["rescore_multipliers"] = args.rescore_multiplier[1:]
        settings = EvalSettings(**{**settings.__dict__, **update})
    if args.batch_size:
        settings.batch_size = args.batch_size
    if args.max_seq_length:
        settings.max_seq_length = args.max_seq_length
    started = time.perf_counter()
    try:
        specs = [
            spec_from_argument(b, registry=ev.benchmarks, split=args.split, qrels_files=args.qrels)
            for b in args.benchmark
        ]
        if args.qrels_config:
            specs = [s.model_copy(update={"qrels_config": args.qrels_config}) for s in specs]
        benches = [
            load_benchmark(s, seed=cfg.seed, hub_timeout_s=args.hub_timeout or ev.hub_timeout_s)
            for s in specs
        ]
    except BenchmarkUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cache = None if args.no_cache else EmbeddingCache(cfg.cache_path / "embeddings")
    evaluator = RetrievalEvaluator(
        settings,
        cache=cache,
        kernel_cache_dir=cfg.cache_path,
        devices=args.device or ev.devices,
        show_progress_bar=args.progress,
    )
    detail = list(dict.fromkeys(["ndcg@10", "mrr@10", "recall@10", "recall@100", *ev.primary_metrics]))
    out: dict[str, Any] = {"benchmarks": {}, "settings": settings.__dict__}
    rows: list[list[str]] = []
    shown = [
        m
        for m in ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map@10")
        if int(m.split("@")[1]) <= max(settings.ks)
    ]
    for model_id in args.model:
        name = _display_name(model_id)
        resolved = resolve_model(model_id, cfg.cache_path)
        model = load_model(model_id, cache_dir=cfg.cache_path)
        mh = model_hash(model_id, resolved)
        for bench in benches:
            t0 = time.perf_counter()
            run = evaluator.evaluate(model, bench, model_hash=mh, query_prompt=args.query_prompt)
            results = {t: {p: r.to_json() for p, r in per.items()} for t, per in run.results.items()}
            tasks = [t.id for t in bench.headline_tasks()]
            flat = summarize(
                results,
                tasks=tasks,
                validation_tasks=[t.id for t in bench.validation_tasks()],
                precisions=settings.precisions,
                detail_metrics=detail,
                bytes_per_doc=run.bytes_per_doc,
            )
            entry = out["benchmarks"].setdefault(
                bench.name, {"source": bench.source, "split": specs[benches.index(bench)].split, "models": {}}
            )
            entry["models"][name] = {
                "model": model_id,
                "weights_hash": mh,
                "metrics": flat,
                "tasks": results,
                "bytes_per_doc": run.bytes_per_doc,
                # Timings, not metrics (metrics are equal across identical runs): search ms per query and the
                # int8 rescoring corpus' bytes per document, per precision.
                "search_costs": search_costs(results, tasks, settings.precisions),
                "timings": {k: round(v, 3) for k, v in run.timings.items()},
                "seconds": round(time.perf_counter() - t0, 3),
            }
            for p in settings.precisions:
                pre = "" if p == "float32" else f"{p}/"
                targets = ["mean"] + (tasks if len(tasks) > 1 else [])
                for target in targets:
                    tp = "" if target == "mean" else f"{target}/"
                    vals = [flat.get(f"{pre}{tp}{m}") for m in shown]
                    if all(v is None for v in vals):
                        continue
                    label = tasks[0] if len(tasks) == 1 else target
                    rows.append(
                        [name, f"{bench.name}:{label}", p, *["–" if v is None else f"{v:.5f}" for v in vals]]
                    )
        del model
    out["seconds"] = round(time.perf_counter() - started, 3)
    first = next(iter(out["benchmarks"].values()), {}).get("models", {})
    out["metrics"] = next(iter(first.values()), {}).get("metrics", {})
    print(_table(rows, ["model", "benchmark", "precision", *shown]))
    if cache is not None:
        print(
            f"corpus cache: {cache.hits} hit(s), {cache.misses} miss(es) under {cache.root}", file=sys.stderr
        )
    if args.output:
        from st_workflow import atomic

        atomic.write_json(args.output, out)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score models on IR benchmarks (MTEB-exact metrics)",
        description="Score models on BEIR benchmarks: a directory, a config registry name, 'nanobeir' or a "
        "Hugging Face dataset id. Metric names: ndcg@10, mrr@10, recall@100, map@10, precision@k, accuracy@k.",
    )
    p.add_argument("--model", "-m", action="append", required=True, help="model id or path (repeatable)")
    p.add_argument("--benchmark", "-b", action="append", required=True, help="benchmark (repeatable)")
    p.add_argument("--split", default=None, help="qrels split (default: the config's, else 'test')")
    p.add_argument(
        "--qrels", action="append", default=None, help="qrels file(s) inside the benchmark (globs ok)"
    )
    p.add_argument(
        "--qrels-config",
        default=None,
        help="Hub benchmarks: config (or dataset id) holding the qrels (default: <id>-qrels, else 'default')",
    )
    p.add_argument("--output", "-o", default=None, help="write the results as JSON here")
    p.add_argument("--config", default=None, help="pipeline config for the benchmark registry and defaults")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    p.add_argument("--ks", type=int, nargs="+", default=None, help="cut-offs (default 1 5 10 100)")
    p.add_argument(
        "--precision",
        action="append",
        choices=["float32", "int8", "binary", "binary_rescore"],
        default=None,
        help="corpus precision(s) to score (repeatable; float32 is always included)",
    )
    p.add_argument(
        "--rescore",
        choices=["float", "int8"],
        default=None,
        help="binary_rescore re-ranks against the ±1 codes (float) or a memory-mapped int8 corpus (int8)",
    )
    p.add_argument(
        "--rescore-multiplier",
        type=int,
        nargs="+",
        default=None,
        help="binary_rescore candidates = multiplier x k; several (e.g. 4 1 2 8): the first is binary_rescore, "
        "the others are scored as binary_rescore@<m>",
    )
    p.add_argument("--query-prompt", default=None, help="prompt prepended to every query")
    p.add_argument("--batch-size", type=int, default=None, help="encoding batch size")
    p.add_argument("--max-seq-length", type=int, default=None, help="override the model's max_seq_length")
    p.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16"],
        default=None,
        help="encoding dtype (default: the config's, 'auto': bf16 where the hardware has it; float32 for "
        "MTEB-exact numbers)",
    )
    p.add_argument(
        "--device", action="append", default=None, help="encoding device(s); several: a process pool"
    )
    p.add_argument("--cache-dir", default=None, help="cache directory (default: the config's cache_dir)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write cached corpus embeddings")
    p.add_argument("--hub-timeout", type=float, default=None, help="seconds to wait for the Hub (default 20)")
    p.add_argument("--progress", action="store_true", help="show encoding progress bars")
    p.set_defaults(func=_run)
