"""``train``: mine negatives -> pre-tokenize -> train -> interpolate -> evaluate -> report -> promote -> push."""

from __future__ import annotations

from typing import Any

from prefect import flow

from st_workflow.flows.common import (
    StageClock,
    candidate_models,
    existing_manifest,
    flat_metrics,
    guarded_benchmarks,
    load_flow_config,
)
from st_workflow.flows.stage2_data import stage2_data_flow
from st_workflow.log import get_logger
from st_workflow.manifest import Manifest
from st_workflow.tasks.model import (
    comparison_report_task,
    evaluate_task,
    interpolate_task,
    mine_task,
    pretokenize_task,
    promote_task,
    push_promoted,
    run_report_task,
    train_task,
)


@flow(name="train")
def train_flow(
    config_path: str = "configs/demo.yaml",
    overrides: list[str] | None = None,
    pairs: Manifest | None = None,
    benchmark: Manifest | None = None,
    prior_stages: list[dict[str, Any]] | None = None,
    started_at: float | None = None,
) -> dict[str, Any]:
    """Fine-tune on the run's pairs dataset (with mined hard negatives), make interpolations with the base,
    evaluate them all with the base and the checkpoints, report, promote (``<run>/promoted``) and push.

    ``pairs`` and ``benchmark`` come from the ``stage2-data`` flow when the ``pipeline`` flow calls this one; a
    deployment run reads them from the run directory instead, and builds them first (the ``stage2-data`` flow as a
    subflow, whose cached tasks reuse what is up to date) when the run has none yet.
    """
    cfg = load_flow_config(config_path, overrides)
    clock = StageClock(started_at)
    pairs = pairs or existing_manifest(cfg.stage_dir("pairs"))
    if pairs is None:
        get_logger().info(
            "no pairs dataset at %s: building it with the stage2-data flow first", cfg.stage_dir("pairs")
        )
        data = stage2_data_flow(config_path, overrides, started_at=clock.started_at)
        pairs, benchmark = data["pairs"], data["benchmark"]
        prior_stages = (prior_stages or []) + data["stages"]
    if benchmark is None and cfg.pairs.holdout.enabled:
        benchmark = existing_manifest(cfg.stage_dir("benchmark") / cfg.pairs.holdout.name)

    trained = interpolated = None
    if cfg.training.enabled:
        mined = clock.run("mine", mine_task, cfg, pairs) if cfg.mining.enabled else None
        guard = guarded_benchmarks(cfg, benchmark)
        # Always: with training.pretokenize off the stage writes text entries (still mined and guarded).
        pretok = clock.run("pretokenize", pretokenize_task, cfg, pairs, mined, guard)
        trained = clock.run("train", train_task, cfg, pairs, pretok, benchmark)
        if cfg.training.interpolation.enabled and cfg.training.interpolation.ratios:
            interpolated = clock.run("interpolate", interpolate_task, cfg, trained)
    else:
        clock.skipped("train", "training.enabled is false")

    models = candidate_models(cfg, trained, interpolated)
    benchmarks = {benchmark.name: benchmark} if benchmark is not None else {}
    evaluation = decision = None
    links: dict[str, str] = {}
    if cfg.evaluation.enabled:
        evaluation = clock.run("eval", evaluate_task, cfg, models, benchmarks, trained)
        baselines = {b.name for b in cfg.evaluation.baselines}
        decision = promote_task(cfg, evaluation, {k: v for k, v in models.items() if k not in baselines})
        links.update(comparison_report_task(cfg, evaluation, list(models)))
        links["promoted"] = decision["link"]
        if cfg.training.hub.push:
            links.update(push_promoted(cfg, decision, pairs))
    else:
        clock.skipped("eval", "evaluation.enabled is false")
    if trained is not None:
        links["model"] = str(trained.path("model"))
    stages = (prior_stages or []) + clock.as_dicts()
    report = run_report_task(cfg, flat_metrics(evaluation), stages, clock.started_at, decision, links)
    return {"trained": trained, "evaluation": evaluation, "promotion": decision, "report": report}
