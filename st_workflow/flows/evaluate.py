"""``evaluate``: any models x the configured benchmarks, with the comparison report."""

from __future__ import annotations

from typing import Any

from prefect import flow

from st_workflow.flows.common import candidate_models, existing_manifest, load_flow_config
from st_workflow.tasks.model import comparison_report_task, evaluate_task


@flow(name="evaluate")
def evaluate_flow(
    config_path: str = "configs/demo.yaml",
    overrides: list[str] | None = None,
    models: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Evaluate ``models`` (name -> id or path; default: the run's base, checkpoints, fine-tuned and baselines)."""
    cfg = load_flow_config(config_path, overrides)
    trained = existing_manifest(cfg.stage_dir("train"))
    interpolated = existing_manifest(cfg.stage_dir("interpolate"))
    models = models or candidate_models(cfg, trained, interpolated)
    benchmarks = {}
    if cfg.pairs.holdout.enabled:
        built = existing_manifest(cfg.stage_dir("benchmark") / cfg.pairs.holdout.name)
        if built is not None:
            benchmarks[built.name] = built
    evaluation = evaluate_task(cfg, models, benchmarks, trained)
    links = comparison_report_task(cfg, evaluation, list(models))
    return {"evaluation": evaluation, "report": links}
