"""Prefect cache policy keyed on manifests, config sections, benchmark content and code version — validated against
the disk.

Prefect's ``INPUTS`` policy hashes (pickles of) task inputs; a DataFrame or a model object hashes differently between
processes (Prefect #16185). Our tasks take a :class:`PipelineConfig` and :class:`Manifest` objects, so the key here is
built from their *content*: the config sections the task reads (with the content of the local benchmarks the
``evaluation`` section names), each manifest's ``content_hash``, the content of the benchmarks passed as task
inputs (:func:`st_workflow.benchmark_hashes.benchmark_hash`, never their paths), the run directory and the code version of
the stage and everything it imports.

One rule for every stage: an incomplete result (:attr:`Manifest.is_complete` false: a benchmark skipped because the
Hub was unreachable, an LLM stage stopped by its budget or by failed calls...) is never reused from Prefect's cache.
A cached result is also only trusted while its outputs are still on disk: if a stored manifest's files are gone or
have changed, the key is diverted to one that includes the current disk state, so the task runs again (and its stage
function then re-uses or rebuilds the outputs) instead of returning a manifest that points at nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy

from st_workflow.benchmark_hashes import benchmark_hash
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
        out = {"config": value.section_hash(*sections), "run_dir": str(value.run_dir)}
        if "evaluation" in sections:
            out["local_benchmarks"] = _local_benchmarks(value)
            # Offline, a Hub benchmark or baseline is skipped for good; online it is evaluated: not one result.
            out["hub_offline"] = _hub_offline()
        return out
    if isinstance(value, dict):
        return {str(k): fingerprint(v, sections) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [fingerprint(v, sections) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"cannot build a cache key from a {type(value).__name__}; pass manifests or plain values")


def _hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` as the evaluation stage reads them (at call time)."""
    return any(
        os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _local_benchmarks(cfg: PipelineConfig) -> dict[str, str | None]:
    """Content of every ``local`` benchmark the config names: its path alone does not change on a rebuild."""
    from st_workflow.resources import resolve_path

    return {
        s.name: benchmark_hash(resolve_path(s.path))
        for s in cfg.evaluation.benchmarks
        if s.kind == "local" and s.path
    }


def benchmark_fingerprint(value: Any) -> Any:
    """Content-based stand-in for a task input that names benchmarks by directory.

    Accepts what the tasks pass: leakage-target dicts (``{"name", "directory", "mode", ...}``), ``{name: path}``
    maps, lists of those, bare paths and manifests. Each directory is replaced by
    :func:`~st_workflow.benchmark_hashes.benchmark_hash` (None when it does not exist), so a benchmark rebuilt in place
    with other content changes the key while a moved but identical one does not.
    """
    if isinstance(value, Manifest):
        return {"manifest": value.content_hash, "content": benchmark_hash(value.directory)}
    if isinstance(value, dict):
        if "directory" in value:
            return {**fingerprint(value, ()), "directory": benchmark_hash(value["directory"])}
        return {str(k): benchmark_fingerprint(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [benchmark_fingerprint(v) for v in value]
    if isinstance(value, str | Path):
        return {"benchmark": benchmark_hash(value)}
    return fingerprint(value, ())


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
    """Cache key = task name + config sections + manifest content hashes + benchmark content + code version,
    validated on disk and never resolving to an incomplete result."""

    sections: tuple[str, ...] = ()
    """Config sections the task reads (``PipelineConfig.section_hash``)."""
    code: tuple[str, ...] = ()
    """``st_workflow`` sub-packages/modules of the stage; :func:`code_version` adds what they import."""
    benchmarks: tuple[str, ...] = ()
    """Names of task parameters that point at benchmark directories; keyed on their content, not their paths."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else the key must cover."""
    progress: tuple[str, str] | None = None
    """``(stage key, title)`` of the stage's progress bar: a key that resolves to a stored result reports the stage
    as reused at once (the task function, which would report progress, does not run). Not part of the key."""

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        plain = {k: v for k, v in inputs.items() if k not in self.benchmarks}
        key = stable_hash(
            {
                "task": task_ctx.task.name,
                "code": code_version(*self.code),
                "inputs": fingerprint(plain, self.sections),
                "benchmarks": {k: benchmark_fingerprint(inputs[k]) for k in self.benchmarks if k in inputs},
                "extra": self.extra,
            }
        )
        key = _validated(task_ctx, key)
        if self.progress is not None and _will_reuse(task_ctx, key):
            from st_workflow.tasks.progress import report_reused

            shard = inputs.get("shard")
            report_reused(*self.progress, shard=shard if isinstance(shard, str) else None)
        return key


#: Bound on the chain of incomplete records followed by :func:`_validated` (one link per incomplete run).
MAX_INCOMPLETE_CHAIN = 1000


def _validated(task_ctx: Any, key: str, depth: int = 0) -> str:
    """The key to use for ``key``: itself when no record exists or the record is complete with intact outputs.

    An incomplete record (:attr:`Manifest.is_complete` false) is never the answer: Prefect cannot be told not to
    store a result, so the next run follows a deterministic chain ``key -> h(key) -> h(h(key))...`` past every
    incomplete record to the first free or complete one. The re-run then stores its result one link further, and
    the run after it finds that result (cached once complete). A complete record whose files are gone or changed
    is diverted to a key tied to the current disk state, which is validated the same way.
    """
    store = getattr(task_ctx, "result_store", None)
    if store is None:
        return key
    for _ in range(MAX_INCOMPLETE_CHAIN):
        try:
            if not store.exists(key):
                return key
            result = store.read(key).result
        except Exception:  # unreadable record: let Prefect decide with the plain key
            return key
        manifests = manifests_in(result)
        if all(m.is_complete for m in manifests):
            break
        key = stable_hash({"after_incomplete": key})
    else:
        return stable_hash({"after_incomplete": key})
    if all(m.is_valid() for m in manifests):
        return key
    stale = stable_hash({"stale": key, "disk": _disk_state(result)})
    return _validated(task_ctx, stale, depth + 1) if depth < 3 else stale


def _will_reuse(task_ctx: Any, key: str) -> bool:
    """Whether Prefect will return the stored result of ``key`` instead of running the task."""
    store = getattr(task_ctx, "result_store", None)
    task = getattr(task_ctx, "task", None)
    if store is None or task is None:
        return False
    refresh = task.refresh_cache
    if refresh is None:
        from prefect.settings import PREFECT_TASKS_REFRESH_CACHE

        refresh = PREFECT_TASKS_REFRESH_CACHE.value()
    try:
        return not refresh and store.exists(key)
    except Exception:
        return False


def transient_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: only errors a retry can fix (network, timeouts, interrupted I/O), never bad input or bugs."""
    try:
        state.result()
    except (ConnectionError, TimeoutError, InterruptedError, BlockingIOError):
        return True
    except OSError as e:  # disk full or a vanished NFS handle are worth one more try; a missing file is not
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(status, int):  # HTTP errors are OSErrors (requests, huggingface_hub): 4xx are final
            return status in (408, 425, 429) or status >= 500
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
