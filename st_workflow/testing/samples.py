"""The bundled sample files the API simulators serve, and the small readers they share."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from st_workflow.resources import resolve_path

__all__ = ["SAMPLES", "load_jsonl", "now_z", "sample_path"]

SAMPLES = "pkg://samples"


def sample_path(relative: str) -> Path:
    """A bundled sample file by its path under ``samples/``."""
    return resolve_path(f"{SAMPLES}/{relative}")


def load_jsonl(path: Path) -> list[Any]:
    """Every JSON line of ``path`` (blank lines skipped)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def now_z() -> str:
    """Now, UTC, as the APIs stamp revisions and harvests (``2024-01-02T03:04:05.123456Z``)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
