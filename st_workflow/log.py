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


def setup_logging(level: int = logging.INFO) -> None:
    """Configure a concise stderr handler for the ``st_workflow`` logger (idempotent)."""
    global _CONFIGURED
    if _CONFIGURED:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("st_workflow")
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    _CONFIGURED = True


def banner(title: str) -> str:
    """A visible stage banner line for logs."""
    return f"==== {title} " + "=" * max(4, 72 - len(title))
