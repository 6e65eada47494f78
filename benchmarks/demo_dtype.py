"""Benchmark: the demo's first run in fp32 and under ``dtype: auto``, its wall time and its quality.

Runs ``configs/demo.yaml`` as ``make demo`` does (``st-workflow run``, real MiniLM, 2 CPU cores), once per dtype,
each with a fresh run directory and a fresh cache (a first run: nothing reused), with ``training.dtype``,
``mining.dtype`` and ``evaluation.dtype`` all set to the dtype. ``auto`` is bf16 autocast on CPUs with native bf16
units (``avx512_bf16``/``amx_bf16``) and fp32 elsewhere, so on a CPU without them both runs are the same.

    python benchmarks/demo_dtype.py                         # float32, then auto (about 35 minutes on 2 cores)
    python benchmarks/demo_dtype.py --dtype float32 --reuse-auto benchmarks/results/quality.json

``--reuse-auto`` takes the ``auto`` run from ``benchmarks/quality.py``'s demo experiment (the same command, the
same defaults) instead of running it again, and says so in the result.

Goal (issue 13): the fine-tuned model's in-domain test NDCG@10 under ``auto`` within +-0.005 of fp32's; the wall
time ratio is reported.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from _report import machine, write_report
from quality import demo_config, digest, offline_env, run

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", action="append", choices=["float32", "auto", "bfloat16"], default=None)
    ap.add_argument(
        "--reuse-auto", default=None, metavar="QUALITY_JSON", help="take auto from quality.py's demo"
    )
    ap.add_argument("--work", default=str(REPO / ".bench" / "demo_dtype"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "demo_dtype.json"))
    args = ap.parse_args()
    dtypes = args.dtype or ["float32", "auto"]
    runs: dict[str, Any] = {}
    for dtype in dtypes:
        work = Path(args.work).resolve() / dtype
        shutil.rmtree(work, ignore_errors=True)  # a first run: fresh runs, cache and Prefect home
        work.mkdir(parents=True)
        print(f"== demo, dtype {dtype}", flush=True)
        overrides = [f"{s}.dtype={dtype}" for s in ("training", "mining", "evaluation")]
        summary, wall = run(demo_config(), work, overrides, offline_env(work / "prefect"))
        runs[dtype] = digest(summary, wall) | {"source": "this run"}
        print(f"   {wall:.0f} s", flush=True)
    if args.reuse_auto and "auto" not in runs:
        runs["auto"] = json.loads(Path(args.reuse_auto).read_text())["experiments"]["demo"] | {
            "source": f"{args.reuse_auto} (benchmarks/quality.py demo: the same command and defaults)"
        }

    def in_domain(d: dict[str, Any], model: str = "fine_tuned") -> float:
        return d["models"][model]["in-domain"]["test"]

    report: dict[str, Any] = {
        "benchmark": "demo_dtype",
        "command": "python benchmarks/demo_dtype.py " + " ".join(sys.argv[1:]),
        "goal": "fine-tuned in-domain test NDCG@10 under auto within +-0.005 of float32",
        "runs": runs,
        "machine": machine(),
    }
    if {"float32", "auto"} <= set(runs):
        a, f = runs["auto"], runs["float32"]
        report["wall_ratio_auto_vs_float32"] = round(a["wall_s"] / f["wall_s"], 3)
        report["in_domain_fine_tuned"] = {"float32": in_domain(f), "auto": in_domain(a)}
        report["in_domain_auto_minus_float32"] = round(in_domain(a) - in_domain(f), 4)
        report["meets_goal"] = abs(in_domain(a) - in_domain(f)) <= 0.005
    write_report(args.out, report)
    print(json.dumps({k: v for k, v in report.items() if k not in ("runs", "machine")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
