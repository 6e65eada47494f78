"""The ingest logger: Prefect's run logger inside a flow or task run, the plain ``st_workflow`` logger elsewhere.

:func:`st_workflow.log.get_logger` imports Prefect to ask whether a run is active; that import costs seconds and
~100 MB, which the ``st-workflow ingest`` command and the benchmarks should not pay. A run is only possible when
Prefect is already imported, so this checks ``sys.modules`` first.
"""

from __future__ import annotations

import logging
import sys

from st_workflow.log import get_logger, setup_logging


def logger() -> logging.Logger | logging.LoggerAdapter:
    """The logger to use right now."""
    if "prefect" in sys.modules:
        return get_logger()
    setup_logging()
    return logging.getLogger("st_workflow")
