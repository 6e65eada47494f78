"""What every benchmark's result file records about the machine, and how the file is written.

The scripts are run as ``python benchmarks/NAME.py``, so this module is importable as ``_report``.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from st_workflow import atomic


def machine(note: str | None = None, **extra: Any) -> dict[str, Any]:
    """Platform, Python and the CPUs this process may use, plus ``extra`` facts (library versions, load)."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)),
        **extra,
    }
    if note:
        info["note"] = note
    return info


def write_report(path: str | Path, report: dict[str, Any]) -> Path:
    """Write the result JSON atomically (a killed benchmark never leaves half a result file)."""
    return atomic.write_json(path, report)
