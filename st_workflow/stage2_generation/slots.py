"""One Prefect global-concurrency slot per LLM request, across every run that shares the Prefect server.

``generation.execution.prefect_concurrency_limit`` names a global concurrency limit (``prefect gcl create llm-calls
--limit 16``). Inside a Prefect flow or task run each HTTP request to the LLM holds one slot of it for its duration,
so two flow runs (or a scheduled regeneration and a manual one) together never exceed the limit. Outside Prefect, or
when the limit does not exist on the server, it is a no-op: the existence is checked once per stage run and logged
once, so there is no per-request cost in that case.
"""

from __future__ import annotations

import logging
from typing import Any

from st_workflow.stage2_generation.resilience import SlotFactory, no_slot


def in_prefect_run() -> bool:
    """True inside a Prefect flow run or task run."""
    try:
        from prefect.context import FlowRunContext, TaskRunContext
    except ImportError:  # pragma: no cover - prefect is a dependency
        return False
    return bool(FlowRunContext.get() or TaskRunContext.get())


async def prefect_slot_factory(
    name: str | None, log: logging.Logger | logging.LoggerAdapter[Any]
) -> SlotFactory:
    """A factory of ``async with`` slots of the named global concurrency limit, or a no-op factory."""
    if not name or not in_prefect_run():
        return no_slot
    from prefect.client.orchestration import get_client
    from prefect.concurrency.asyncio import concurrency
    from prefect.exceptions import ObjectNotFound

    try:
        async with get_client() as client:
            limit = await client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        log.info(
            "LLM calls are not limited across runs: Prefect global concurrency limit %r does not exist "
            "(create it with `prefect gcl create %s --limit 16`)",
            name,
            name,
        )
        return no_slot
    except Exception as e:  # the API is unreachable: do not fail the stage over a limiter
        log.warning("LLM calls are not limited across runs: cannot read concurrency limit %r (%s)", name, e)
        return no_slot
    log.info(
        "each LLM request holds one slot of Prefect global concurrency limit %r (limit %s)", name, limit.limit
    )

    def slot() -> Any:
        return concurrency(name, occupy=1, strict=True)

    return slot
