"""Stage progress across a process boundary: a child prints marked JSON lines, the parent mirrors them.

Training runs in subprocesses (torchrun ranks) whose output the launcher reads in the parent, where the Prefect
run context and the terminal live. Rank 0 reports through a :class:`LineSink` (one line per snapshot, so at the
rate :class:`~st_workflow.progress.StageProgress` allows); the launcher feeds every output line to a
:class:`Relay`, which turns the marked ones into stages of its own process and tells the caller to drop them from
the log.

Example:
    >>> lines = []
    >>> sink = LineSink(lines.append)
    >>> from st_workflow.progress import ProgressState
    >>> sink.open(ProgressState(key="training", title="Training", total=10, unit="steps"))
    >>> parse_line(lines[0])["state"]["total"]
    10
    >>> parse_line("step 3/10 loss 0.5") is None
    True
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Collection
from typing import Any

from st_workflow import progress
from st_workflow.progress import ProgressState, StageProgress

log = logging.getLogger(__name__)
MARKER = "@@st-workflow-progress "
_FIELDS = ("key", "title", "total", "completed", "unit", "detail", "status")


def _print(line: str) -> None:
    # One write per line: lines of several ranks sharing a pipe never interleave (writes under PIPE_BUF are atomic).
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def encode_line(event: str, state: ProgressState) -> str:
    """One marked line for ``event`` (open, update, close) carrying the snapshot."""
    return MARKER + json.dumps({"event": event, "state": {k: getattr(state, k) for k in _FIELDS}})


def parse_line(line: str) -> dict[str, Any] | None:
    """The message of a marked line, or None for any other line (including a garbled marked one)."""
    i = line.find(MARKER)
    if i < 0:
        return None
    try:
        msg = json.loads(line[i + len(MARKER) :])
    except ValueError:
        return None
    if not isinstance(msg, dict) or not isinstance(msg.get("state"), dict) or "key" not in msg["state"]:
        return None
    return msg


class LineSink:
    """Prints each snapshot as a marked line (``write``, default: stdout, flushed); ``keys`` limits which stages."""

    def __init__(self, write: Callable[[str], None] = _print, keys: Collection[str] | None = None) -> None:
        self.write = write
        self.keys = set(keys) if keys is not None else None

    def _emit(self, event: str, state: ProgressState) -> None:
        if self.keys is None or state.key in self.keys:
            self.write(encode_line(event, state))

    def open(self, state: ProgressState) -> None:
        self._emit("open", state)

    def update(self, state: ProgressState) -> None:
        self._emit("update", state)

    def close(self, state: ProgressState) -> None:
        self._emit("close", state)


class Relay:
    """Mirrors a child's stages as stages of this process (reported to the sinks installed here)."""

    def __init__(self) -> None:
        self.bars: dict[str, StageProgress] = {}

    def feed(self, line: str) -> bool:
        """Handle ``line``; True when it was a progress line (the caller then leaves it out of the log)."""
        msg = parse_line(line)
        if msg is None:
            return False
        try:
            self._apply(msg)
        except (TypeError, ValueError) as exc:  # a malformed snapshot must not stop the training it describes
            log.debug("ignored progress line %r: %s", line[:200], exc)
        return True

    def _apply(self, msg: dict[str, Any]) -> None:
        s = msg["state"]
        key, status, detail = str(s["key"]), s.get("status") or "running", s.get("detail")
        if status == "reused":
            self.bars.pop(key, None)
            progress.reused(key, s.get("title") or key, detail or "reused")
            return
        bar = self.bars.get(key)
        if bar is None or bar.closed:
            if msg.get("event") == "close":
                return
            bar = StageProgress(key, s.get("title") or key, s.get("total"), s.get("unit") or "items")
            self.bars[key] = bar
        if s.get("total") != bar.state.total:
            bar.state.total = s.get("total")
        bar.update(float(s.get("completed") or 0.0), detail)
        if status == "done":
            bar.done(detail)
        elif status == "failed":
            bar.failed(detail)
        if bar.closed:
            self.bars.pop(key, None)

    def finish_open(self) -> None:
        """Close every stage still open at 100 (the child exited successfully without closing them)."""
        for key in list(self.bars):
            self.bars.pop(key).done()

    def fail_open(self, detail: str) -> None:
        """Leave every stage still open where it stopped (the child failed or was cancelled)."""
        for key in list(self.bars):
            bar = self.bars.pop(key)
            current = bar.state.detail
            bar.failed(f"{detail} ({current})" if current else detail)
