"""``st-workflow run CONFIG``: run a flow on Prefect (the ephemeral local API unless PREFECT_API_URL is set)."""

from __future__ import annotations

import argparse
import os
import time

from st_workflow.cli.common import add_config_args, config_from_args

FLOW_NAMES = ["pipeline", "stage2-data", "train", "evaluate"]


def _run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)  # validate before paying for Prefect start-up
    where = os.environ.get("PREFECT_API_URL") or "Prefect's ephemeral local API"
    print(f"st-workflow: running flow '{args.flow}' for run '{cfg.run_name}' on {where}", flush=True)
    from st_workflow.flows import FLOWS

    ex = cfg.generation.execution
    if cfg.generation.endpoint.configured and args.flow in ("pipeline", "stage2-data"):
        from st_workflow.deployments import ensure_llm_concurrency_limit

        ensure_llm_concurrency_limit(ex.prefect_concurrency_limit, ex.concurrency)

    t0 = time.perf_counter()
    result = FLOWS[args.flow](config_path=args.config, overrides=args.overrides)
    seconds = time.perf_counter() - t0
    print(f"st-workflow: flow '{args.flow}' finished in {seconds:.1f} s", flush=True)
    report = cfg.run_dir / "report.md"
    if isinstance(result, dict) and report.is_file() and args.flow in ("pipeline", "train"):
        print(f"Report: {report}")
        print(f"Summary: {cfg.run_dir / 'summary.json'}")
    elif isinstance(result, dict) and result.get("pairs") is not None:
        print(f"Pairs: {result['pairs'].path('pairs')}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the pipeline (or one flow) on Prefect")
    add_config_args(p)
    p.add_argument(
        "--flow", choices=FLOW_NAMES, default="pipeline", help="which flow to run (default: pipeline)"
    )
    p.set_defaults(func=_run)
