"""Configuration of orchestration: Prefect retries, concurrency, schedules and Dask scale-out."""

from __future__ import annotations

from pydantic import Field

from st_workflow.config.base import NonNegInt, PositiveInt, StrictModel


class DaskConfig(StrictModel):
    """Run ingest and generation fan-out on Dask through ``prefect-dask``."""

    enabled: bool = False
    """Use a Dask task runner for fan-out tasks."""
    address: str | None = None
    """Scheduler address of an existing cluster; unset starts a LocalCluster."""
    n_workers: PositiveInt = 2
    """Workers of the LocalCluster."""
    threads_per_worker: PositiveInt = 1
    """Threads per LocalCluster worker."""


class OrchestrationConfig(StrictModel):
    """Prefect behaviour."""

    task_retries: NonNegInt = 2
    """Retries of a task that failed on a transient error."""
    retry_delay_s: list[float] = Field(default_factory=lambda: [10.0, 60.0])
    """Backoff between task retries."""
    cache: bool = True
    """Reuse finished stages whose inputs, config and code are unchanged."""
    dask: DaskConfig = Field(default_factory=DaskConfig)
    """Dask scale-out."""
    regenerate_cron: str = "0 3 * * 1"
    """Schedule of the ``stage2-data/regenerate`` deployment (weekly by default)."""
    timezone: str = "UTC"
    """Time zone of the schedule."""
    work_pool: str = "st-workflow-process"
    """Work pool of the deployments."""
