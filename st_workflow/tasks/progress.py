"""Stage progress as Prefect progress artifacts: the bars on a run's page in the Prefect UI.

Every task wrapper runs its stage function under :func:`reports_progress`, which installs a
:class:`PrefectSink` for the stages the function opens (:mod:`st_workflow.progress`). A stage's artifact key is
``progress-<stage key>`` (plus the task's shard, e.g. ``progress-generation-cmr``), the same in every run of a
deployment so that runs can be compared. A stage reused from Prefect's cache never calls its stage function:
:func:`report_reused` (called by the cache policy when it resolves to a stored result) says so at once instead.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID

from st_workflow import progress
from st_workflow.progress import ProgressState
from st_workflow.tasks.artifacts import artifact_key

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def progress_key(stage_key: str, shard: str | None = None) -> str:
    """The artifact key of a stage (lowercase letters, digits and dashes), stable across runs.

    Example:
        >>> progress_key("ingest-CMR"), progress_key("generation", shard="pds")
        ('progress-ingest-cmr', 'progress-generation-pds')
    """
    return artifact_key(f"progress-{stage_key}" + (f"-{shard}" if shard else ""))


def describe(state: ProgressState) -> str:
    """The artifact's description: title, amount done, the stage's detail (rate, ETA, tokens, dollars)."""
    if state.status == "reused":
        return f"{state.title}: reused" + (
            f" ({state.detail})" if state.detail and state.detail != "reused" else ""
        )
    done = f"{state.completed:,.0f}" + (f"/{state.total:,.0f}" if state.total else "") + f" {state.unit}"
    text = f"{state.title}: {done}"
    if state.detail:
        text += f", {state.detail}"
    if state.status == "failed":
        text += " (stopped)"
    return text


class PrefectSink:
    """Creates one progress artifact per stage and updates it; a no-op outside a Prefect run.

    The run context is captured when the sink is made (in the task), and every API call runs in that context
    under a lock, so a stage advanced from worker threads still reports to its own task run. After an API error
    the sink stops reporting that stage (a slow or broken API must not slow the stage down).
    """

    def __init__(self, shard: str | None = None) -> None:
        from prefect.context import FlowRunContext, TaskRunContext

        self.shard = shard
        self._active = bool(TaskRunContext.get() or FlowRunContext.get())
        self._ctx = contextvars.copy_context()
        self._lock = threading.Lock()
        self._ids: dict[str, UUID | None] = {}

    def _run(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            return self._ctx.run(fn)

    def open(self, state: ProgressState) -> None:
        if not self._active:
            return
        from prefect.artifacts import create_progress_artifact

        key, pct, text = progress_key(state.key, self.shard), state.percent, describe(state)
        try:
            self._ids[state.key] = self._run(
                lambda: create_progress_artifact(progress=pct, key=key, description=text, _sync=True)
            )
        except Exception as exc:
            self._ids[state.key] = None
            log.warning("progress artifact %s could not be created: %s", key, exc)

    def update(self, state: ProgressState) -> None:
        artifact_id = self._ids.get(state.key)
        if artifact_id is None:
            return
        from prefect.artifacts import update_progress_artifact

        pct, text = state.percent, describe(state)
        try:
            self._run(
                lambda: update_progress_artifact(artifact_id, progress=pct, description=text, _sync=True)
            )
        except Exception as exc:
            self._ids[state.key] = None
            log.warning("progress artifact of %s could not be updated: %s", state.key, exc)

    def close(self, state: ProgressState) -> None:
        self._ids.pop(state.key, None)


def reports_progress(fn: F | None = None, *, shard_param: str | None = "shard") -> Any:
    """Decorate a task's function (under ``@task``) so that the stages it opens report to Prefect.

    ``shard_param`` names the parameter holding a fan-out shard (e.g. the source of a per-source LLM stage);
    its value suffixes the artifact keys so parallel shards do not share one bar.
    """

    def wrap(f: F) -> F:
        sig = inspect.signature(f)

        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            shard = None
            if shard_param and shard_param in sig.parameters:
                shard = sig.bind_partial(*args, **kwargs).arguments.get(shard_param)
            with progress.sinks(PrefectSink(shard=shard if isinstance(shard, str) else None)):
                return f(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return wrap(fn) if fn is not None else wrap


def report_reused(stage_key: str, title: str, shard: str | None = None) -> None:
    """Say at once that a stage is reused from Prefect's cache (100, "reused"), in the Prefect UI and in the
    sinks already installed (the terminal)."""
    with progress.sinks(PrefectSink(shard=shard)):
        progress.reused(stage_key, title)
