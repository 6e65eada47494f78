"""Benchmark: which binary model to ship — post-binarization of the fp32 fine-tune, or binarization-aware training?

Issue 14 item 3. On the demo recipe (``configs/demo.yaml``: same pairs, mined negatives, distillation, seed and
steps), four models are compared at every precision (float32, int8, binary, binary + rescore) on the in-domain
hold-out and the general benchmarks (CISI, MED), test splits (validation numbers are recorded too):

* ``fp32``: the demo's fp32 fine-tune, binarized after training (``x > 0`` on its float embeddings);
* ``bat-identity``, ``bat-clipped``, ``bat-tanh``: the demo recipe with ``training.binarization.enabled`` and each
  straight-through estimator of :mod:`st_workflow.training.binarization`. Each is evaluated without its final
  ``Binarize`` module: its index bits are exactly the codes the trained model emits (sign of the pooled
  embedding), and rescoring gets the float query, as the sentence-transformers quantization guide does.

Retention is always against the **fp32 fine-tune's float32** value (what a user gives up by shipping binary), and
the base model's numbers are shown beside. Binary + rescore is swept over ``--multipliers`` with both rescoring
corpora (``float``: the query against the ±1 codes, no extra storage; ``int8``: against int8 embeddings on disk).

Cost: the data stages of the demo are reused from ``--work`` (``benchmarks/quality.py --only demo`` builds them;
its fp32 fine-tune is reused when present), so only the three BAT trainings run (about 6 min each on 2 cores).

Result keys: ``models.<model>.<benchmark>.<test|validation>.<precision>`` with ``ndcg@10``, ``recall@100``,
``retention`` (vs the model's own float32), ``retention_vs_fp32_model``, ``bytes_per_doc``, ``query_ms`` (and
``rescore_bytes_per_doc`` on disk for int8 rescoring); ``summary`` has the goals per model and
``bat_vs_post_binarization`` (BAT retention minus post-binarization retention, per benchmark).

    python benchmarks/binary_quality.py                 # train the BAT variants (reused when done) + evaluate
    python benchmarks/binary_quality.py --phase evaluate --variants identity clipped
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from _report import machine, write_report

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ESTIMATORS = ("identity", "clipped", "tanh")
PRECISIONS = ["float32", "int8", "binary", "binary_rescore"]


def demo_cfg(work: Path, run_name: str = "demo", overrides: list[str] | None = None) -> Any:
    """The demo config with the benchmark's work directory (shared cache) and ``run_name``."""
    from st_workflow.config.loader import load_config

    return load_config(
        REPO / "configs" / "demo.yaml",
        [
            f"run_name={run_name}",
            f"runs_dir={work / 'runs'}",
            f"cache_dir={work / 'cache'}",
            "wandb.mode=disabled",
            *(overrides or []),
        ],
    )


def train_variant(work: Path, estimator: str) -> dict[str, Any]:
    """Train the demo recipe with binarization-aware training (``estimator``) on the demo run's data stages."""
    from st_workflow.manifest import Manifest
    from st_workflow.training.stage import train_stage

    demo = work / "runs" / "demo"
    pairs = Manifest.read(demo / "pairs" / "manifest.json")
    pretok = Manifest.read(demo / "pretokenize" / "manifest.json")
    cfg = demo_cfg(
        work,
        f"bat-{estimator}",
        ["training.binarization.enabled=true", f"training.binarization.estimator={estimator}"],
    )
    t0 = time.perf_counter()
    m = train_stage(cfg, pairs, pretok, log_sink=lambda line: print(f"[bat-{estimator}] {line}", flush=True))
    return {
        "model": str(m.path("model")),
        "seconds": round(time.perf_counter() - t0, 1),
        "steps": m.metrics.get("global_step") or m.metrics.get("steps"),
        "train_loss": m.metrics.get("train_loss"),
        "cache_key": m.cache_key,
    }


def _benchmarks(cfg: Any, work: Path) -> dict[str, Any]:
    """The demo's in-domain hold-out and its general benchmarks (CISI, MED); Hub ones are skipped offline."""
    from st_workflow.evaluation.benchmarks import BenchmarkUnavailableError, load_benchmark
    from st_workflow.evaluation.stage import benchmark_specs

    built = {"in-domain": work / "runs" / "demo" / "benchmark" / cfg.pairs.holdout.name}
    out = {}
    for spec, d in benchmark_specs(cfg, built):
        try:
            out[spec.name] = load_benchmark(spec, directory=d, seed=cfg.seed, hub_timeout_s=5)
        except BenchmarkUnavailableError as e:
            print(f"skipping {spec.name}: {e}", file=sys.stderr)
    return out


def _models(work: Path, variants: list[str], cfg: Any) -> dict[str, tuple[Any, str, dict[str, Any]]]:
    """name -> (model, weights hash, facts). BAT models lose their final ``Binarize`` module: the index bits are
    the same (sign of the pooled embedding), and rescoring gets the float query."""
    from sentence_transformers import SentenceTransformer

    from st_workflow.evaluation.embeddings import model_hash
    from st_workflow.models import load_model, resolve_model
    from st_workflow.training.binarization import Binarize

    paths = {"base": cfg.training.base_model, "fp32": str(work / "runs" / "demo" / "train" / "model")}
    paths |= {f"bat-{v}": str(work / "runs" / f"bat-{v}" / "train" / "model") for v in variants}
    out = {}
    for name, path in paths.items():
        resolved = resolve_model(path, cfg.cache_path)
        if not Path(resolved).is_dir():
            print(f"skipping {name}: no model at {path}", file=sys.stderr)
            continue
        model = load_model(path, cache_dir=cfg.cache_path)
        h = model_hash(path, resolved)
        facts: dict[str, Any] = {"path": str(path)}
        manifest = Path(resolved).parent / "manifest.json"
        if manifest.is_file():  # the train stage's: same steps for every variant, and what each cost
            m = json.loads(manifest.read_text())
            keys = ("global_step", "train_loss", "final_loss", "train_seconds", "precision", "batch_size")
            facts["train"] = {k: m["metrics"].get(k) for k in keys} | {"code_version": m.get("code_version")}
        if isinstance(list(model)[-1], Binarize):
            layer = list(model)[-1]
            facts["estimator"] = layer.estimator
            model = SentenceTransformer(modules=list(model)[:-1], device=str(model.device))
            h += ":without-binarize"
        out[name] = (model, h, facts)
    return out


def evaluate_all(work: Path, variants: list[str], multipliers: list[int]) -> dict[str, Any]:
    """Every model x benchmark x precision, with ``float`` and ``int8`` rescoring swept over ``multipliers``."""
    from st_workflow.evaluation import EmbeddingCache, EvalSettings, RetrievalEvaluator
    from st_workflow.runtime import apply_config_env

    cfg = demo_cfg(work)
    apply_config_env(cfg)
    benches = _benchmarks(cfg, work)
    models = _models(work, variants, cfg)
    cache = EmbeddingCache(cfg.cache_path / "embeddings")
    base = EvalSettings.from_config(cfg.evaluation)
    metric = "ndcg@10"
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    for rescore in ("float", "int8"):
        settings = EvalSettings(
            **{
                **base.__dict__,
                "ks": [10, 100],
                # float32, int8 and binary do not depend on the rescoring corpus: scored once.
                "precisions": PRECISIONS if rescore == "float" else ["binary_rescore"],
                "rescore": rescore,
                "rescore_multipliers": multipliers,
            }
        )
        evaluator = RetrievalEvaluator(settings, cache=cache, kernel_cache_dir=cfg.cache_path)
        for name, (model, h, facts) in models.items():
            for bname, bench in benches.items():
                print(f"== {name} on {bname} (rescore {rescore})", flush=True)
                run = evaluator.evaluate(model, bench, model_hash=h)
                for task in bench.tasks():
                    split = "validation" if task.role == "validation" else "test"
                    per = (
                        results.setdefault(name, {"facts": facts}).setdefault(bname, {}).setdefault(split, {})
                    )
                    for p, r in run.results[task.id].items():
                        label = p if p in ("float32", "int8", "binary") else f"{p}:{rescore}"
                        if rescore == "int8" and p in ("float32", "int8", "binary"):
                            continue
                        per[label] = {
                            metric: round(r.metrics[metric], 4),
                            "recall@100": round(r.metrics["recall@100"], 4),
                            "bytes_per_doc": r.bytes_per_doc,
                            "query_ms": r.query_ms,
                            **(
                                {"rescore_bytes_per_doc": r.rescore_bytes_per_doc}
                                if r.rescore_bytes_per_doc
                                else {}
                            ),
                        }
    for per_model in results.values():
        for bname, splits in per_model.items():
            if bname == "facts":
                continue
            for split, rows in splits.items():
                own = rows["float32"][metric]
                ref = results.get("fp32", {}).get(bname, {}).get(split, {}).get("float32", {}).get(metric)
                for r in rows.values():
                    r["retention"] = round(r[metric] / own, 4) if own else None
                    r["retention_vs_fp32_model"] = round(r[metric] / ref, 4) if ref else None
    return {
        "benchmark": "binary_quality",
        "metric": metric,
        "rescore_multiplier": base.rescore_multiplier,
        "multipliers": multipliers,
        "dtype": base.dtype,
        "evaluate_s": round(time.perf_counter() - t0, 1),
        "models": results,
        "summary": summarize(results, metric, base.rescore_multiplier),
    }


def summarize(results: dict[str, Any], metric: str, configured: int) -> dict[str, Any]:
    """Issue 14's goals (test splits, retention vs the fp32 fine-tune's float32) and whether BAT beat
    post-binarization, per benchmark."""

    def ret(model: str, bench: str, label: str) -> float | None:
        row = results.get(model, {}).get(bench, {}).get("test", {}).get(label)
        return row.get("retention_vs_fp32_model") if row else None

    benches = [b for b in results.get("fp32", {}) if b != "facts"]
    out: dict[str, Any] = {"benchmarks": benches, "models": {}}
    for model in [m for m in results if m != "base"]:
        rows = {}
        for b in benches:
            rescore = {
                label: ret(model, b, label)
                for label in results.get(model, {}).get(b, {}).get("test", {})
                if label.startswith("binary_rescore")
            }
            best = max(rescore, key=lambda k: rescore[k] or 0) if rescore else None
            rows[b] = {
                "binary": ret(model, b, "binary"),
                "binary_rescore_float": ret(model, b, "binary_rescore:float"),
                "binary_rescore_int8": ret(model, b, "binary_rescore:int8"),
                "best_rescore": {"setting": best, "retention": rescore.get(best)} if best else None,
            }
        out["models"][model] = {
            "per_benchmark": rows,
            "goal binary >= 90% everywhere": all((r["binary"] or 0) >= 0.90 for r in rows.values()),
            f"goal binary+rescore (x{configured}, int8) >= 97% everywhere": all(
                (r["binary_rescore_int8"] or 0) >= 0.97 for r in rows.values()
            ),
            f"goal binary+rescore (x{configured}, float) >= 97% everywhere": all(
                (r["binary_rescore_float"] or 0) >= 0.97 for r in rows.values()
            ),
        }
    post = out["models"].get("fp32", {}).get("per_benchmark", {})
    out["bat_vs_post_binarization"] = {
        m: {
            b: {
                k: round((v["per_benchmark"][b][k] or 0) - (post[b][k] or 0), 4)
                for k in ("binary", "binary_rescore_float", "binary_rescore_int8")
            }
            for b in benches
            if b in post
        }
        for m, v in out["models"].items()
        if m.startswith("bat-")
    }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--work", default=str(REPO / ".bench" / "quality"), help="the quality benchmark's work dir"
    )
    ap.add_argument("--phase", choices=["all", "train", "evaluate"], default="all")
    ap.add_argument("--variants", nargs="+", choices=ESTIMATORS, default=list(ESTIMATORS))
    ap.add_argument("--multipliers", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "binary_quality.json"))
    args = ap.parse_args()
    work = Path(args.work).resolve()
    if not (work / "runs" / "demo" / "pretokenize" / "manifest.json").is_file():
        print(
            f"no demo run under {work}: run `python benchmarks/quality.py --only demo` first", file=sys.stderr
        )
        return 1
    trained: dict[str, Any] = {}
    if args.phase in ("all", "train"):
        for est in args.variants:
            print(f"== train bat-{est}", flush=True)
            trained[est] = train_variant(work, est)
            print(json.dumps(trained[est]), flush=True)
        write_report(work / "binary_quality_train.json", trained)
    if args.phase in ("all", "evaluate"):
        report = evaluate_all(work, args.variants, args.multipliers)
        report["command"] = "python benchmarks/binary_quality.py " + " ".join(sys.argv[1:])
        report["machine"] = machine(note="2-core machine shared with other jobs; test splits unless noted")
        write_report(args.out, report)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
