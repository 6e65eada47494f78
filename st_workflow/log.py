"""Logging that goes to the Prefect run log inside a flow/task and to stderr elsewhere."""

from __future__ import annotations

import logging
import sys

_CONFIGURED = False


def get_logger(name: str = "st_workflow") -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger when called inside a flow or task run, else a standard logger.

    Prefect is only consulted when it is already imported (importing it costs seconds in plain CLI use).
    """
    if "prefect" not in sys.modules:
        setup_logging()
        return logging.getLogger(name)
    try:
        from prefect.context import FlowRunContext, TaskRunContext
        from prefect.logging import get_run_logger

        if TaskRunContext.get() or FlowRunContext.get():
            return get_run_logger()
    except Exception:  # pragma: no cover - prefect missing or not in a run
        pass
    setup_logging()
    return logging.getLogger(name)


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (not the object it was when the handler was made).

    Output captured or redirected later (pytest, Prefect, a notebook) still receives our log lines.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # the base class assigns it in __init__; the live stderr always wins
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Configure a concise stderr handler for the ``st_workflow`` logger (idempotent)."""
    global _CONFIGURED
    if _CONFIGURED:
        return
    handler = _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("st_workflow")
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    _CONFIGURED = True


def banner(title: str) -> str:
    """A visible stage banner line for logs."""
    return f"==== {title} " + "=" * max(4, 72 - len(title))
