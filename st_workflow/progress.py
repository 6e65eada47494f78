"""Stage progress that domain code reports without knowing who watches.

Domain code (ingest, LLM stages, pre-tokenization, training, evaluation) opens one
:class:`StageProgress` per long stage and advances it; the sinks installed in the current
context decide what a user sees: a Prefect progress artifact on the run's page (installed by
the task layer), a terminal bar when stdout is a TTY, or periodic log lines otherwise. Updates
are rate-limited here, once for every sink, so a per-item ``advance`` call stays cheap.

Example::

    from st_workflow import progress

    with progress.stage("generation", "Generating pairs", total=len(docs), unit="docs") as bar:
        for doc in docs:
            ...
            bar.advance(1, detail=f"{tokens} tokens, ${dollars:.2f}")

A stage whose output is reused says so at once: ``progress.reused("generation", "Generating pairs")``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass
class ProgressState:
    """What a sink is told: a snapshot of one stage's progress."""

    key: str
    title: str
    total: float | None
    completed: float = 0.0
    unit: str = "items"
    detail: str | None = None
    status: str = "running"  # running | done | reused | failed
    started: float = field(default_factory=time.monotonic)

    @property
    def percent(self) -> float:
        """0–100; a stage without a known total reads 0 until it finishes."""
        if self.status in ("done", "reused"):
            return 100.0
        if not self.total:
            return 0.0
        return max(0.0, min(100.0, 100.0 * self.completed / self.total))


class ProgressSink(Protocol):
    """Receives rate-limited snapshots; must never raise into the stage."""

    def open(self, state: ProgressState) -> None: ...

    def update(self, state: ProgressState) -> None: ...

    def close(self, state: ProgressState) -> None: ...


_SINKS: contextvars.ContextVar[tuple[ProgressSink, ...]] = contextvars.ContextVar(
    "st_workflow_progress_sinks", default=()
)


@contextlib.contextmanager
def sinks(*extra: ProgressSink) -> Iterator[None]:
    """Install ``extra`` sinks for the stages opened inside this block."""
    token = _SINKS.set(_SINKS.get() + tuple(extra))
    try:
        yield
    finally:
        _SINKS.reset(token)


class StageProgress:
    """One stage's progress; forwards to the sinks at a bounded rate (time or percent)."""

    def __init__(
        self,
        key: str,
        title: str,
        total: float | None,
        unit: str = "items",
        min_interval_s: float = 2.0,
        min_percent_step: float = 5.0,
    ) -> None:
        self.state = ProgressState(key=key, title=title, total=total, unit=unit)
        self._sinks = _SINKS.get()
        self._min_interval_s = min_interval_s
        self._min_percent_step = min_percent_step
        self._last_sent = 0.0
        self._last_percent = -100.0
        self._call("open")

    def _call(self, method: str) -> None:
        for sink in self._sinks:
            try:
                getattr(sink, method)(self.state)
            except Exception as exc:  # a watcher's failure must not fail the stage
                log.debug("progress sink %r failed in %s: %s", sink, method, exc)

    def _maybe_send(self, force: bool = False) -> None:
        now = time.monotonic()
        pct = self.state.percent
        if (
            force
            or now - self._last_sent >= self._min_interval_s
            or pct - self._last_percent >= self._min_percent_step
        ):
            self._last_sent = now
            self._last_percent = pct
            self._call("update")

    def set_total(self, total: float | None) -> None:
        """Set or correct the total once it is known (e.g. after the first API page)."""
        self.state.total = total
        self._maybe_send()

    def update(self, completed: float, detail: str | None = None) -> None:
        """Set the absolute amount done."""
        self.state.completed = completed
        if detail is not None:
            self.state.detail = detail
        self._maybe_send()

    def advance(self, n: float = 1, detail: str | None = None) -> None:
        """Add ``n`` to the amount done."""
        self.update(self.state.completed + n, detail)

    def done(self, detail: str | None = None) -> None:
        """Finish at 100 %."""
        if self.state.total is None or self.state.total < self.state.completed:
            self.state.total = self.state.completed
        else:
            self.state.completed = self.state.total
        self.state.status = "done"
        if detail is not None:
            self.state.detail = detail
        self._call("update")
        self._call("close")

    def failed(self, detail: str | None = None) -> None:
        """Stop where it is (below 100) and say why."""
        self.state.status = "failed"
        if detail is not None:
            self.state.detail = detail
        self._call("update")
        self._call("close")


@contextlib.contextmanager
def stage(key: str, title: str, total: float | None, unit: str = "items") -> Iterator[StageProgress]:
    """Open a stage's progress: done at 100 on normal exit, left where it stopped on error."""
    bar = StageProgress(key, title, total, unit)
    try:
        yield bar
    except BaseException as exc:
        bar.failed(f"stopped: {type(exc).__name__}")
        raise
    else:
        if bar.state.status == "running":
            bar.done()


def reused(key: str, title: str, detail: str = "reused") -> None:
    """Say at once that a stage's cached output is reused (100, "reused")."""
    bar = StageProgress(key, title, total=1, unit="stage")
    bar.state.completed = 1
    bar.state.status = "reused"
    bar.state.detail = detail
    bar._call("update")
    bar._call("close")
