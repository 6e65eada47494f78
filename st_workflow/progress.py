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

A bar takes the sinks of the context it is opened in, so worker threads may advance a bar the stage opened; a bar
opened inside a worker thread sees sinks only when the thread runs in a copy of the stage's context
(``contextvars.copy_context().run``; Prefect's thread pool does this for tasks). Sinks: the Prefect artifact
(:mod:`st_workflow.tasks.progress`), the terminal (:mod:`st_workflow.progress_terminal`) and, across a process
boundary such as torchrun's ranks, marked stdout lines (:mod:`st_workflow.progress_pipe`).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
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
    """Receives rate-limited snapshots; must never raise into the stage.

    ``open`` comes first (a reused stage arrives already at 100), then ``update`` calls, then one ``close`` after
    the final ``update`` (``status`` done or failed); a reused stage gets ``open`` and ``close`` only.
    """

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
        *,
        status: str = "running",
        detail: str | None = None,
    ) -> None:
        self.state = ProgressState(key=key, title=title, total=total, unit=unit, status=status, detail=detail)
        if status in ("done", "reused"):
            self.state.completed = total or 0.0
        self._sinks = _SINKS.get()
        self._min_interval_s = min_interval_s
        self._min_percent_step = min_percent_step
        self._last_sent = 0.0
        self._last_percent = -100.0
        # Worker threads may advance one bar together; snapshots go out one at a time.
        self._lock = threading.RLock()
        self._call("open")

    def _call(self, method: str) -> None:
        if not self._sinks:
            return
        with self._lock:
            self._send(method)

    def _send(self, method: str) -> None:
        for sink in self._sinks:
            try:
                getattr(sink, method)(self.state)
            except Exception as exc:  # a watcher's failure must not fail the stage
                log.debug("progress sink %r failed in %s: %s", sink, method, exc)

    def _maybe_send(self, force: bool = False) -> None:
        if not self._sinks:
            return
        with self._lock:
            now = time.monotonic()
            pct = self.state.percent
            if (
                force
                or now - self._last_sent >= self._min_interval_s
                or pct - self._last_percent >= self._min_percent_step
            ):
                self._last_sent = now
                self._last_percent = pct
                self._send("update")

    def set_total(self, total: float | None) -> None:
        """Set or correct the total once it is known (e.g. after the first API page)."""
        self.state.total = total
        self._maybe_send()

    def update(self, completed: float, detail: str | None = None) -> None:
        """Set the absolute amount done."""
        with self._lock:
            self.state.completed = completed
            if detail is not None:
                self.state.detail = detail
            self._maybe_send()

    def advance(self, n: float = 1, detail: str | None = None) -> None:
        """Add ``n`` to the amount done."""
        with self._lock:
            self.update(self.state.completed + n, detail)

    @property
    def closed(self) -> bool:
        """Finished, reused or failed: later calls change nothing."""
        return self.state.status != "running"

    def done(self, detail: str | None = None) -> None:
        """Finish at 100 %."""
        with self._lock:
            if self.closed:
                return
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
        with self._lock:
            if self.closed:
                return
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
        why = f"stopped: {type(exc).__name__}"
        bar.failed(f"{why} ({bar.state.detail})" if bar.state.detail else why)
        raise
    else:
        bar.done()


def reused(key: str, title: str, detail: str = "reused") -> None:
    """Say at once that a stage's cached output is reused (100, "reused"): one ``open`` and one ``close``."""
    bar = StageProgress(key, title, total=1, unit="stage", status="reused", detail=detail)
    bar._call("close")
