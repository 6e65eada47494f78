"""``st-workflow serve`` and ``st-workflow deploy``: expose the flows as Prefect deployments."""

from __future__ import annotations

import argparse

from st_workflow.cli.common import add_config_args, config_from_args


def _ensure_limit(cfg) -> None:
    from st_workflow.deployments import ensure_llm_concurrency_limit

    ex = cfg.generation.execution
    if ensure_llm_concurrency_limit(ex.prefect_concurrency_limit, ex.concurrency):
        print(
            f"LLM calls across runs are bounded by global concurrency limit "
            f"'{ex.prefect_concurrency_limit}' (`prefect gcl inspect {ex.prefect_concurrency_limit}`)"
        )


def _serve(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    from st_workflow.deployments import DEPLOYMENTS, serve_all

    _ensure_limit(cfg)
    cron = None if args.no_schedule else cfg.orchestration.regenerate_cron
    names = ", ".join(d.full_name for d in DEPLOYMENTS)
    print(
        f"st-workflow: serving {names} (schedule: {cron or 'none'} {cfg.orchestration.timezone}); Ctrl-C stops",
        flush=True,
    )
    serve_all(args.config, args.overrides, cron, cfg.orchestration.timezone, limit=args.limit)
    return 0


def _deploy(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    from st_workflow.deployments import DEPLOYMENTS, deploy_to_pool

    _ensure_limit(cfg)
    pool = args.pool or cfg.orchestration.work_pool
    cron = None if args.no_schedule else cfg.orchestration.regenerate_cron
    ids = deploy_to_pool(pool, args.config, args.overrides, cron, cfg.orchestration.timezone)
    for spec, dep_id in zip(DEPLOYMENTS, ids, strict=True):
        print(f"{spec.full_name}: {dep_id}")
    print(f"Start a worker with: prefect worker start --pool {pool}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve all deployments from this process (needs a Prefect API)")
    add_config_args(p)
    p.add_argument("--no-schedule", action="store_true", help="do not attach the regeneration cron schedule")
    p.add_argument("--limit", type=int, default=None, help="maximum concurrent flow runs")
    p.set_defaults(func=_serve)
    d = sub.add_parser("deploy", help="register all deployments on a process work pool")
    add_config_args(d)
    d.add_argument("--pool", default=None, help="work pool name (default: orchestration.work_pool)")
    d.add_argument("--no-schedule", action="store_true", help="do not attach the regeneration cron schedule")
    d.set_defaults(func=_deploy)
