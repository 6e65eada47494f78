"""The deployments, defined once in Python (``prefect.yaml`` mirrors them for ``prefect deploy --all``).

* ``stage2-data/regenerate`` — weekly cron (UTC), incremental: documents that did not change cost no LLM calls.
* ``train/default``, ``evaluate/default``, ``pipeline/default`` — run on demand.

Every deployment runs one flow run at a time. The scheduled ``stage2-data/regenerate`` uses ``CANCEL_NEW``: a
schedule that fires twice (Prefect #17153, #18894) is cancelled instead of racing the active run, and a duplicate that
runs later finds every finished stage (and every LLM answer) cached, so it costs seconds, not LLM money. The on-demand
deployments use ``ENQUEUE``, so a second trigger waits its turn instead of being dropped.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment: flow, name, entrypoint, and whether it carries the regeneration schedule."""

    flow: str
    name: str
    entrypoint: str
    description: str
    scheduled: bool = False

    @property
    def full_name(self) -> str:
        return f"{self.flow}/{self.name}"


DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    DeploymentSpec(
        "stage2-data",
        "regenerate",
        "st_workflow/flows/stage2_data.py:stage2_data_flow",
        "Re-ingest the sources and regenerate stage-2 pairs (incremental).",
        scheduled=True,
    ),
    DeploymentSpec(
        "train",
        "default",
        "st_workflow/flows/train.py:train_flow",
        "Pre-tokenize, train under torchrun, evaluate checkpoints, report and promote.",
    ),
    DeploymentSpec(
        "evaluate",
        "default",
        "st_workflow/flows/evaluate.py:evaluate_flow",
        "Evaluate models on the configured benchmarks.",
    ),
    DeploymentSpec(
        "pipeline",
        "default",
        "st_workflow/flows/pipeline.py:pipeline_flow",
        "The whole pipeline: stage-2 data, training, evaluation, report.",
    ),
)


def _flow(spec: DeploymentSpec) -> Any:
    from st_workflow.flows import FLOWS

    return FLOWS[spec.flow]


def _schedule_kwargs(spec: DeploymentSpec, cron: str | None, timezone: str) -> dict[str, Any]:
    if not spec.scheduled or not cron:
        return {}
    from prefect.schedules import Cron

    return {"schedules": [Cron(cron, timezone=timezone)]}


def _concurrency(spec: DeploymentSpec) -> Any:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    strategy = ConcurrencyLimitStrategy.CANCEL_NEW if spec.scheduled else ConcurrencyLimitStrategy.ENQUEUE
    return ConcurrencyLimitConfig(limit=1, collision_strategy=strategy)


def ensure_llm_concurrency_limit(name: str | None, limit: int) -> bool:
    """Create the Prefect global concurrency limit that bounds LLM calls across all runs, if it does not exist.

    Returns True when the limit exists afterwards. Without it the LLM stages run unbounded across runs (each run
    still honours its own ``generation.execution.concurrency``).
    """
    if not name:
        return False
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def _ensure() -> None:
        async with get_client() as client:
            try:
                await client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                with contextlib.suppress(ObjectAlreadyExists):
                    await client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(name=name, limit=limit)
                    )

    run_coro_as_sync(_ensure())
    return True


def build_runner_deployments(
    config_path: str = "configs/demo.yaml",
    overrides: list[str] | None = None,
    cron: str | None = None,
    timezone: str = "UTC",
) -> list[Any]:
    """Deployments for ``prefect.serve`` (one process serves them all)."""
    out = []
    for spec in DEPLOYMENTS:
        out.append(
            _flow(spec).to_deployment(
                name=spec.name,
                parameters={"config_path": config_path, "overrides": list(overrides or [])},
                description=spec.description,
                tags=["st-workflow"],
                concurrency_limit=_concurrency(spec),
                **_schedule_kwargs(spec, cron, timezone),
            )
        )
    return out


def deploy_to_pool(
    work_pool: str,
    config_path: str = "configs/demo.yaml",
    overrides: list[str] | None = None,
    cron: str | None = None,
    timezone: str = "UTC",
    source: Path = REPO_ROOT,
) -> list[str]:
    """Register every deployment on a process work pool (creating the pool if needed); returns their ids.

    The code is pulled from ``source`` (a local checkout): Prefect records a ``set_working_directory`` pull step, so
    a worker runs the flows from that directory with its relative config paths.
    """
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.flows import Flow
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def _ensure_pool() -> None:
        async with get_client() as client:
            with contextlib.suppress(ObjectAlreadyExists):
                await client.create_work_pool(WorkPoolCreate(name=work_pool, type="process"))

    run_coro_as_sync(_ensure_pool())
    ids = []
    for spec in DEPLOYMENTS:
        flow = Flow.from_source(source=str(source), entrypoint=spec.entrypoint)
        dep_id = flow.deploy(
            name=spec.name,
            work_pool_name=work_pool,
            build=False,
            push=False,
            parameters={"config_path": config_path, "overrides": list(overrides or [])},
            description=spec.description,
            tags=["st-workflow"],
            concurrency_limit=_concurrency(spec),
            print_next_steps=False,
            **_schedule_kwargs(spec, cron, timezone),
        )
        ids.append(str(dep_id))
    return ids


def serve_all(
    config_path: str = "configs/demo.yaml",
    overrides: list[str] | None = None,
    cron: str | None = None,
    timezone: str = "UTC",
    limit: int | None = None,
) -> None:
    """Serve every deployment from this process until interrupted."""
    from prefect import serve

    serve(*build_runner_deployments(config_path, overrides, cron, timezone), limit=limit)
