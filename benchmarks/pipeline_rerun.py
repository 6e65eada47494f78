"""Benchmark: wall time of the `pipeline` flow, first run vs an unchanged re-run (goal: re-run <= 5% of first).

Each run is a fresh `st-workflow run CONFIG` process (Prefect's ephemeral API start-up included), as a user runs it.

    python benchmarks/pipeline_rerun.py --config configs/demo.yaml            # the issue's measurement
    python benchmarks/pipeline_rerun.py --config configs/tiny.yaml --out benchmarks/results/pipeline_rerun_tiny.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import machine, write_report

REPO = Path(__file__).resolve().parents[1]


def run_once(config: str, overrides: list[str], env: dict[str, str]) -> float:
    cmd = [
        sys.executable,
        "-m",
        "st_workflow.cli",
        "run",
        config,
        *[a for o in overrides for a in ("--set", o)],
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--out", default="benchmarks/results/pipeline_rerun.json")
    ap.add_argument("--keep", action="store_true", help="keep the temporary runs/cache directories")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="st-bench-"))
    overrides = [f"runs_dir={work / 'runs'}", f"cache_dir={work / 'cache'}"]
    env = {
        **os.environ,
        "PREFECT_HOME": str(work / "prefect"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    try:
        first = run_once(args.config, overrides, env)
        second = run_once(args.config, overrides, env)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "pipeline_rerun",
        "config": args.config,
        "first_run_s": round(first, 1),
        "unchanged_rerun_s": round(second, 1),
        "ratio": round(second / first, 4),
        "goal_ratio_max": 0.05,
        "meets_goal": second / first <= 0.05,
        "machine": machine(),
        "note": "each run is a fresh process incl. Prefect ephemeral API start-up; the machine may be shared",
    }
    write_report(REPO / args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
