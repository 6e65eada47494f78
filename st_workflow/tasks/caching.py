"""Prefect cache policy keyed on manifests, config sections and code version — and validated against the disk.

Prefect's ``INPUTS`` policy hashes (pickles of) task inputs; a DataFrame or a model object hashes differently between
processes (Prefect #16185). Our tasks take a :class:`PipelineConfig` and :class:`Manifest` objects, so the key here is
built from their *content*: the config sections the task reads, each manifest's ``content_hash``, the run directory
and the code version of the stage's sub-package.

A stage that reports ``metrics.complete == False`` (an LLM stage stopped by its budget or by failed calls) is never
reused from Prefect's cache. A cached result is only trusted while its outputs are still on disk: if a stored manifest's files are gone or have
changed, the key is diverted to one that includes the current disk state, so the task runs again (and its stage
function then re-uses or rebuilds the outputs) instead of returning a manifest that points at nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy

from st_workflow.config import PipelineConfig
from st_workflow.hashing import code_version, stable_hash
from st_workflow.manifest import Manifest


def fingerprint(value: Any, sections: tuple[str, ...]) -> Any:
    """Deterministic, content-based stand-in for a task input.

    Raises:
        TypeError: for inputs that have no content identity (objects a cache key must not depend on).
    """
    if isinstance(value, Manifest):
        return {"manifest": value.content_hash}
    if isinstance(value, PipelineConfig):
        return {"config": value.section_hash(*sections), "run_dir": str(value.run_dir)}
    if isinstance(value, dict):
        return {str(k): fingerprint(v, sections) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [fingerprint(v, sections) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"cannot build a cache key from a {type(value).__name__}; pass manifests or plain values")


def manifests_in(value: Any) -> list[Manifest]:
    """Every Manifest inside a (possibly nested) task result."""
    if isinstance(value, Manifest):
        return [value]
    if isinstance(value, dict):
        return [m for v in value.values() for m in manifests_in(v)]
    if isinstance(value, list | tuple):
        return [m for v in value for m in manifests_in(v)]
    return []


def _disk_state(result: Any) -> list[str]:
    state = []
    for m in manifests_in(result):
        try:
            on_disk = Manifest.read(m.manifest_path)
            state.append(on_disk.content_hash if on_disk.is_valid() else "invalid")
        except (OSError, ValueError):
            state.append("missing")
    return state


@dataclass
class ManifestCachePolicy(CachePolicy):
    """Cache key = task name + config sections + manifest content hashes + code version, validated on disk."""

    sections: tuple[str, ...] = ()
    code: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        key = stable_hash(
            {
                "task": task_ctx.task.name,
                "code": code_version(*self.code),
                "inputs": fingerprint(inputs, self.sections),
                "extra": self.extra,
            }
        )
        return _validated(task_ctx, key)


def _validated(task_ctx: Any, key: str) -> str:
    """``key`` when no record exists or the record's outputs are intact; otherwise a key tied to the disk state."""
    store = getattr(task_ctx, "result_store", None)
    if store is None:
        return key
    try:
        if not store.exists(key):
            return key
        result = store.read(key).result
    except Exception:  # unreadable record: let Prefect decide with the plain key
        return key
    manifests = manifests_in(result)
    if any(m.metrics.get("complete") is False for m in manifests):
        # A stage that stopped early (budget cap, failed calls) must run again; its own caches make that cheap.
        return stable_hash({"incomplete": key, "nonce": time.time_ns()})
    if all(m.is_valid() for m in manifests):
        return key
    return stable_hash({"stale": key, "disk": _disk_state(result)})


def transient_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: only errors a retry can fix (network, timeouts, interrupted I/O), never bad input or bugs."""
    try:
        state.result()
    except (ConnectionError, TimeoutError, InterruptedError, BlockingIOError):
        return True
    except OSError as e:  # disk full or a vanished NFS handle are worth one more try; a missing file is not
        return not isinstance(e, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError)
    except Exception as e:
        name = type(e).__name__
        return name in {
            "ReadTimeout",
            "ConnectTimeout",
            "RemoteProtocolError",
            "ConnectError",
            "APIConnectionError",
            "APITimeoutError",
            "RateLimitError",
            "InternalServerError",
        }
    return False
