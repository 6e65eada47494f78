"""Helpers the flows share: config loading, reading manifests left by earlier runs, timing, model candidates."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from st_workflow.config import PipelineConfig, load_config
from st_workflow.manifest import MANIFEST_NAME, Manifest
from st_workflow.reporting import StageRecord, stage_record
from st_workflow.runtime import apply_config_env

T = TypeVar("T")


def load_flow_config(config_path: str, overrides: list[str] | None) -> PipelineConfig:
    """Load the config a flow run was given (relative paths resolve against the working directory)."""
    cfg = load_config(config_path, overrides or [])
    apply_config_env(cfg)
    return cfg


def existing_manifest(directory: Path) -> Manifest | None:
    """The valid manifest in ``directory`` from an earlier run, or None."""
    p = directory / MANIFEST_NAME
    if not p.is_file():
        return None
    m = Manifest.read(p)
    return m if m.is_valid() else None


def require_manifest(directory: Path, what: str, hint: str) -> Manifest:
    """Like :func:`existing_manifest` but a clear error when it is missing."""
    m = existing_manifest(directory)
    if m is None:
        raise FileNotFoundError(f"no {what} found at {directory} ({MANIFEST_NAME} missing or stale); {hint}")
    return m


class StageClock:
    """Times each stage call of a flow and turns the results into report records."""

    def __init__(self, started_at: float | None = None) -> None:
        self.started_at = started_at or time.time()
        self.records: list[StageRecord] = []

    def run(self, stage: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds = time.perf_counter() - t0
        items = result if isinstance(result, list) else [result]
        manifests = [r for r in items if isinstance(r, Manifest)]
        if manifests:
            for m in manifests:
                self.records.append(stage_record(m, stage, self.started_at, seconds / len(manifests)))
        elif result is None:
            self.records.append(stage_record(None, stage, self.started_at, seconds, note="disabled"))
        return result

    def skipped(self, stage: str, reason: str) -> None:
        self.records.append(StageRecord(stage=stage, status="skipped", note=reason))

    def as_dicts(self) -> list[dict[str, Any]]:
        from dataclasses import asdict

        return [asdict(r) for r in self.records]


def candidate_models(
    cfg: PipelineConfig, trained: Manifest | None, interpolated: Manifest | None = None
) -> dict[str, str]:
    """Models to evaluate: the base, every checkpoint of the run, the fine-tuned model, its interpolations with
    the base, then the baselines."""
    models: dict[str, str] = {}
    if cfg.evaluation.evaluate_base or trained is None:
        models["base"] = cfg.training.base_model
    if trained is not None:
        if cfg.evaluation.evaluate_checkpoints and "checkpoints" in trained.files:
            ckpts = sorted(
                trained.path("checkpoints").glob("checkpoint-*"),
                key=lambda p: int(p.name.rsplit("-", 1)[-1]) if p.name.rsplit("-", 1)[-1].isdigit() else 0,
            )
            for c in ckpts:
                if (c / "modules.json").is_file():
                    models[c.name] = str(c)
        models["fine_tuned"] = str(trained.path("model"))
    if interpolated is not None:
        models.update(interpolated.metrics.get("models", {}))
    for b in cfg.evaluation.baselines:
        models[b.name] = b.model
    return models


def guarded_benchmarks(cfg: PipelineConfig, holdout: Manifest | None) -> list[dict[str, Any]]:
    """The benchmarks training pairs must not leak into (built hold-out + local benchmarks), as plain dicts."""
    from st_workflow.leakage import leakage_targets

    return [t.as_dict() for t in leakage_targets(cfg, holdout)]


def flat_metrics(evaluation: Manifest | None) -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {benchmark: {metric: value}}}`` with only numeric leaves (the report's view of the eval stage)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    if evaluation is None:
        return out
    for model, per_bench in evaluation.metrics.items():
        if not isinstance(per_bench, dict):
            continue
        for bench, vals in per_bench.items():
            if isinstance(vals, dict):
                nums = {k: float(v) for k, v in vals.items() if isinstance(v, int | float)}
                if nums:
                    out.setdefault(model, {})[bench] = nums
    return out
