"""The asyncio executor shared by the relevancy filter and the generator.

A fixed pool of ``concurrency`` workers pulls jobs from one queue: a sliding window, so a slow document never holds
up the others (no batch barriers). For each job a worker

1. returns the stored answer when the content-addressed cache has it (free);
2. claims the key (``flock``); if another run holds it, puts the job back to look again in ``poll_s`` seconds;
3. ends the job as ``budget`` (nothing spent) once the run budget refused a request of this stage;
4. calls the LLM with a fresh :class:`~.accounting.CallUsage` in the context (each request first reserves its
   worst case from the run's :class:`~.budget.RunBudget`; a refused one ends the job as ``budget``), stores the
   answer atomically, and only then releases the claim.

Every finished job is handed to ``on_outcome`` at once (the caller streams it to a Parquet shard). A fatal endpoint
error (bad key, unknown model) stops new calls, lets the calls in flight finish, and is re-raised at the end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from st_workflow.stage2_generation.accounting import CallUsage, Ledger
from st_workflow.stage2_generation.budget import BudgetExhausted
from st_workflow.stage2_generation.cache import LLMCache
from st_workflow.stage2_generation.resilience import (
    CURRENT_USAGE,
    EndpointFatalError,
    TransportError,
    find_in_chain,
    first_line,
)


@dataclasses.dataclass
class Job:
    """One LLM call to make: its cache key, the source (for accounting) and what the call function needs."""

    key: str
    source: str
    payload: Any
    size: int = 0
    """Prompt characters (informational; the budget meters each request itself)."""


@dataclasses.dataclass
class Outcome:
    """How one job ended: ``ok`` (answered now), ``cached``, ``failed``, ``budget`` (not attempted), ``aborted``."""

    job: Job
    status: str
    entry: dict[str, Any] | None = None
    usage: CallUsage | None = None
    cause: str | None = None
    message: str | None = None


class JobFailed(Exception):
    """A call that ended without a usable answer, with its cause (``invalid_output``, ``rate_limit``...)."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause
        self.message = message


CallFn = Callable[[Job], Awaitable[tuple[dict[str, Any], dict[str, Any]]]]


@dataclasses.dataclass
class RunStats:
    """What one execution did (for logs, ``run_stats.json`` and the report)."""

    jobs: int = 0
    statuses: Counter[str] = dataclasses.field(default_factory=Counter)
    failures: Counter[str] = dataclasses.field(default_factory=Counter)
    deferrals: int = 0
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        done = self.statuses["ok"] + self.statuses["cached"]
        return {
            "jobs": self.jobs,
            "statuses": dict(self.statuses),
            "failures_by_cause": dict(self.failures),
            "deferrals": self.deferrals,
            "elapsed_s": round(self.elapsed_s, 3),
            "jobs_per_s": round(done / self.elapsed_s, 3) if self.elapsed_s > 0 else None,
        }


def classify_failure(exc: BaseException) -> str:
    """A short cause for the failure report."""
    if isinstance(exc, JobFailed):
        return exc.cause
    te = find_in_chain(exc, TransportError)
    if te is not None:
        return te.cause  # type: ignore[attr-defined]
    return f"error:{type(exc).__name__}"


async def execute(
    jobs: list[Job],
    call: CallFn,
    cache: LLMCache,
    ledger: Ledger,
    *,
    concurrency: int,
    on_outcome: Callable[[Outcome], None],
    poll_s: float = 0.5,
    log: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    label: str = "llm",
    progress_every_s: float = 15.0,
) -> RunStats:
    """Run ``jobs`` (unique keys) through ``call`` with at most ``concurrency`` in flight.

    Raises:
        EndpointFatalError: after the in-flight calls finished, when the endpoint refused a request for good.
    """
    stats = RunStats(jobs=len(jobs))
    if not jobs:
        return stats
    queue: asyncio.Queue[Job | None] = asyncio.Queue()
    for j in jobs:
        queue.put_nowait(j)
    state = {"pending": len(jobs), "inflight": 0}
    fatal: list[EndpointFatalError] = []
    loop = asyncio.get_running_loop()
    n_workers = max(1, min(concurrency, len(jobs)))
    t0 = time.monotonic()

    def finish(o: Outcome) -> None:
        stats.statuses[o.status] += 1
        if o.status == "failed":
            stats.failures[o.cause or "unknown"] += 1
        on_outcome(o)
        state["pending"] -= 1
        if state["pending"] == 0:
            for _ in range(n_workers):
                queue.put_nowait(None)

    async def handle(job: Job) -> Outcome | None:
        if fatal:
            return Outcome(job, "aborted", cause="endpoint", message=str(fatal[0]))
        entry = cache.get(job.key)
        if entry is not None:
            return Outcome(job, "cached", entry)
        claim = cache.try_claim(job.key)
        if claim is None:
            return None  # another run is answering it: look again later
        try:
            entry = cache.get(job.key)  # it may have finished between our check and the claim
            if entry is not None:
                return Outcome(job, "cached", entry)
            if ledger.budget_hit:
                return Outcome(job, "budget", cause="budget", message="budget cap reached before this call")
            if fatal:
                return Outcome(job, "aborted", cause="endpoint", message=str(fatal[0]))
            usage = CallUsage()
            token = CURRENT_USAGE.set(usage)
            state["inflight"] += 1
            try:
                value, meta = await call(job)
            except EndpointFatalError as e:
                fatal.append(e)
                ledger.record(usage, job.source, job.size)
                return Outcome(job, "aborted", usage=usage, cause="endpoint", message=str(e))
            except Exception as e:
                inner = find_in_chain(e, EndpointFatalError)
                if inner is not None:
                    fatal.append(inner)  # type: ignore[arg-type]
                    ledger.record(usage, job.source, job.size)
                    return Outcome(job, "aborted", usage=usage, cause="endpoint", message=str(inner))
                ledger.record(usage, job.source, job.size)
                if (refused := find_in_chain(e, BudgetExhausted)) is not None:
                    ledger.budget_hit = True  # the run budget has no room: stop starting jobs
                    return Outcome(job, "budget", usage=usage, cause="budget", message=str(refused))
                msg = e.message if isinstance(e, JobFailed) else first_line(e)
                return Outcome(job, "failed", usage=usage, cause=classify_failure(e), message=msg)
            finally:
                state["inflight"] -= 1
                CURRENT_USAGE.reset(token)
            ledger.record(usage, job.source, job.size)
            entry = {
                "value": value,
                "meta": meta,
                "usage": usage.to_dict(ledger.price),
                "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            await asyncio.to_thread(cache.put, job.key, entry)
            return Outcome(job, "ok", {**entry, "key": job.key}, usage)
        finally:
            claim.release()

    async def worker() -> None:
        while True:
            job = await queue.get()
            if job is None:
                return
            outcome = await handle(job)
            if outcome is None:
                stats.deferrals += 1
                loop.call_later(poll_s, queue.put_nowait, job)
                continue
            finish(outcome)

    async def progress() -> None:
        while True:
            await asyncio.sleep(progress_every_s)
            if log is not None:
                s = stats.statuses
                log.info(
                    "%s: %d/%d done (%d new, %d cached, %d failed), %d in flight, $%.4f spent",
                    label,
                    stats.jobs - state["pending"],
                    stats.jobs,
                    s["ok"],
                    s["cached"],
                    s["failed"],
                    state["inflight"],
                    ledger.spent_usd,
                )

    reporter = asyncio.create_task(progress())
    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(n_workers):
                tg.create_task(worker())
    finally:
        reporter.cancel()
        stats.elapsed_s = time.monotonic() - t0
    if fatal:
        raise fatal[0]
    return stats


def run_sync(factory: Callable[[], Awaitable[Any]]) -> Any:
    """Run a coroutine from synchronous code: in this thread when no loop runs here (a Prefect sync task, the
    CLI), else in a helper thread with the caller's context (so Prefect's run context stays visible)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())  # type: ignore[arg-type]
    import concurrent.futures
    import contextvars

    ctx = contextvars.copy_context()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="llm-stage") as pool:
        return pool.submit(ctx.run, lambda: asyncio.run(factory())).result()  # type: ignore[arg-type]
