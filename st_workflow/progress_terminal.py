"""Stage progress in a terminal: a tqdm bar per stage on a TTY, plain periodic log lines otherwise.

The command line installs :func:`terminal_sink` for the whole command (``st_workflow.cli``). Logs (CI, a file, a
Prefect worker's output) get a line when a stage starts, every ``log_percent_step`` percent or
``log_interval_s`` seconds, and when it ends, never one per item. Ranks other than 0 of a distributed job stay
quiet.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO, Any

from st_workflow.progress import ProgressState

log = logging.getLogger("st_workflow.progress")


def _amount(state: ProgressState) -> str:
    done = f"{state.completed:,.0f}"
    if state.total:
        return f"{done}/{state.total:,.0f} {state.unit} ({state.percent:.0f}%)"
    return f"{done} {state.unit}"


def log_line(state: ProgressState) -> str:
    """The plain-text line of a snapshot.

    Example:
        >>> log_line(ProgressState(key="t", title="Training", total=200, completed=50, unit="steps", detail="ETA 1m"))
        'Training: 50/200 steps (25%), ETA 1m'
    """
    if state.status == "reused":
        return f"{state.title}: reused" + (
            f" ({state.detail})" if state.detail and state.detail != "reused" else ""
        )
    text = f"{state.title}: {_amount(state)}"
    if state.detail:
        text += f", {state.detail}"
    if state.status == "done":
        text += " - done"
    elif state.status == "failed":
        text += " - stopped"
    return text


class TerminalSink:
    """One tqdm bar per open stage when ``stream`` is a TTY, log lines otherwise."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        tty: bool | None = None,
        log_interval_s: float = 30.0,
        log_percent_step: float = 25.0,
    ) -> None:
        self.stream = stream
        self.tty = tty if tty is not None else _isatty(stream or sys.stdout)
        self.log_interval_s = log_interval_s
        self.log_percent_step = log_percent_step
        self._bars: dict[str, Any] = {}
        self._logged: dict[str, tuple[float, float]] = {}

    # -- TTY: tqdm bars
    def _bar(self, state: ProgressState) -> Any:
        from tqdm import tqdm

        stream = self.stream or sys.stdout
        sized = _width(stream) > 0  # a terminal that reports no size (0 columns) gets a fixed-width bar
        return tqdm(
            total=state.total,
            desc=state.title,
            unit=state.unit,
            file=stream,
            dynamic_ncols=sized,
            ncols=None if sized else 100,
            mininterval=0,
            leave=True,
        )

    def _draw(self, bar: Any, state: ProgressState) -> None:
        if state.total != bar.total:
            bar.total = state.total
        bar.n = int(state.completed) if float(state.completed).is_integer() else state.completed
        if state.detail:
            bar.set_postfix_str(state.detail, refresh=False)
        bar.refresh()

    # -- sink protocol
    def open(self, state: ProgressState) -> None:
        if not self.tty:
            self._logged[state.key] = (time.monotonic(), state.percent)
            log.info(log_line(state))
            return
        bar = self._bar(state)
        self._bars[state.key] = bar
        self._draw(bar, state)

    def update(self, state: ProgressState) -> None:
        if self.tty:
            bar = self._bars.get(state.key)
            if bar is not None:
                self._draw(bar, state)
            return
        if state.status == "running" and state.percent >= 100:
            return  # the "done" line follows
        now = time.monotonic()
        last_t, last_pct = self._logged.get(state.key, (now, 0.0))
        if (
            state.status != "running"
            or now - last_t >= self.log_interval_s
            or state.percent - last_pct >= self.log_percent_step
        ):
            self._logged[state.key] = (now, state.percent)
            log.info(log_line(state))

    def close(self, state: ProgressState) -> None:
        self._logged.pop(state.key, None)
        bar = self._bars.pop(state.key, None)
        if bar is not None:
            if state.status == "reused":
                bar.set_postfix_str("reused", refresh=False)
                self._draw(bar, state)
            bar.close()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _width(stream: Any) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 0


def distributed_rank() -> int:
    """This process's global rank under torchrun (``RANK``), 0 elsewhere."""
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


def terminal_sink(stream: IO[str] | None = None) -> TerminalSink | None:
    """The terminal sink for this process: None on ranks other than 0 of a distributed job."""
    if distributed_rank() != 0:
        return None
    from st_workflow.log import setup_logging

    setup_logging()
    return TerminalSink(stream)
