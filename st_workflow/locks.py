"""The stage lock: one run at a time writes a stage directory (``flock``, so a killed holder releases it).

Runs that share a run directory (two deployments, a deployment and ``st-workflow train``, a retried task beside
its predecessor) take ``<stage dir>/.commit.lock`` before they write. The holder records who it is in the lock file
(pid, host, what it runs, since when), so a run that has to wait, or gives up after ``timeout_s``, can name it.
The LLM stages hold the lock while they commit; the train stage holds it for the whole training, because its
checkpoints, job file and W&B run id live in the stage directory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LOCK_NAME = ".commit.lock"


class StageLocked(TimeoutError):
    """Another run holds the stage lock and did not release it within the timeout."""

    def __init__(self, lock_file: Path, holder: dict[str, Any], timeout_s: float) -> None:
        self.lock_file = lock_file
        self.holder = holder
        self.timeout_s = timeout_s
        waited = "is" if timeout_s <= 0 else f"was still after {timeout_s:g} s"
        super().__init__(
            f"{lock_file.parent} {waited} locked by {describe_holder(holder)} (lock file {lock_file})"
        )


def describe_holder(holder: dict[str, Any]) -> str:
    """One line naming a lock holder, e.g. ``pid 41 on host-a (train run 'demo'), since 2026-01-02T10:00:00Z``."""
    if not holder:
        return "another process (it has not recorded who it is yet)"
    what = f" ({holder['owner']})" if holder.get("owner") else ""
    since = f", since {holder['since']}" if holder.get("since") else ""
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}{what}{since}"


def read_holder(lock_file: Path) -> dict[str, Any]:
    """What the current (or last) holder wrote into the lock file; empty when unreadable."""
    try:
        data = json.loads(lock_file.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def stage_lock(
    stage_dir: Path,
    *,
    timeout_s: float | None = None,
    owner: str | None = None,
    on_wait: Callable[[str], None] | None = None,
    poll_s: float = 0.5,
) -> Iterator[None]:
    """Hold the exclusive lock on ``stage_dir`` for the ``with`` block.

    Args:
        timeout_s: how long to wait for another holder; ``None`` waits as long as it takes, ``0`` fails at once.
        owner: what this run is (shown to runs that wait for it).
        on_wait: told once, with a line naming the holder, when the lock is busy and this run starts waiting.

    Raises:
        StageLocked: the lock was still held after ``timeout_s`` (the message names the holder).
    """
    stage_dir.mkdir(parents=True, exist_ok=True)
    lock_file = stage_dir / LOCK_NAME
    fd = os.open(lock_file, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = read_holder(lock_file)
                if deadline is not None and time.monotonic() >= deadline:
                    raise StageLocked(lock_file, holder, timeout_s or 0) from None
                if not told and on_wait is not None:
                    limit = "" if timeout_s is None else f" (up to {timeout_s:g} s)"
                    on_wait(f"{stage_dir} is locked by {describe_holder(holder)}; waiting{limit}")
                    told = True
                time.sleep(poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic())))
        try:
            me = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "owner": owner,
                "since": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
