"""Tasks of the train flow: pre-tokenize, train (torchrun), evaluate, compare, promote, report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from st_workflow.config import PipelineConfig
from st_workflow.log import banner, get_logger
from st_workflow.manifest import Manifest
from st_workflow.tasks.artifacts import (
    inline_images,
    publish_image,
    publish_link,
    publish_markdown,
    publish_table,
)
from st_workflow.tasks.caching import ManifestCachePolicy, transient_error
from st_workflow.tasks.progress import reports_progress


@task(
    name="pretokenize",
    cache_policy=ManifestCachePolicy(
        sections=("training", "pairs"),
        code=("training",),
        benchmarks=("guard_targets",),
        progress=("pretokenize", "Pre-tokenizing"),
    ),
    persist_result=True,
)
@reports_progress
def pretokenize_task(
    cfg: PipelineConfig,
    pairs: Manifest | None,
    mined: Manifest | None = None,
    guard_targets: list[dict[str, Any]] | None = None,
) -> Manifest:
    """Tokenize every training source once into the shared Arrow cache (mined versions where mined), dropping
    rows of non-pipeline sources that leak into ``guard_targets``."""
    from st_workflow.training import pretokenize_stage

    get_logger().info(banner("pre-tokenize"))
    return pretokenize_stage(cfg, pairs, mined=mined, guard_targets=guard_targets)


@task(
    name="mine-negatives",
    cache_policy=ManifestCachePolicy(
        sections=("mining", "training"), code=("training",), progress=("mining", "Mining hard negatives")
    ),
    persist_result=True,
)
@reports_progress
def mine_task(cfg: PipelineConfig, pairs: Manifest | None) -> Manifest:
    """A hard negative for every training pair (the pipeline pairs and the sources ``mining.sources`` names),
    mined by the base (or configured) model."""
    from st_workflow.training import mine_stage

    get_logger().info(banner(f"mine hard negatives ({cfg.mining.model or cfg.training.base_model})"))
    m = mine_stage(cfg, pairs)
    publish_table(
        "mined-negatives", [{"count": k, "value": v} for k, v in m.counts.items()], "Hard negatives"
    )
    return m


@task(
    name="interpolate",
    cache_policy=ManifestCachePolicy(sections=("training",), code=("training",)),
    persist_result=True,
)
@reports_progress
def interpolate_task(cfg: PipelineConfig, trained: Manifest) -> Manifest | None:
    """Weight-space ensembles of the base and the fine-tuned model (promotion candidates)."""
    from st_workflow.training.interpolate import interpolate_stage

    get_logger().info(banner(f"interpolate base and fine-tuned at {cfg.training.interpolation.ratios}"))
    return interpolate_stage(cfg, trained)


@task(
    name="train",
    cache_policy=ManifestCachePolicy(
        sections=("training", "wandb"),
        code=("training",),
        benchmarks=("benchmark",),
        progress=("training", "Training"),
    ),
    persist_result=True,
    retries=1,
    retry_delay_seconds=30,
    retry_condition_fn=transient_error,
)
@reports_progress
def train_task(
    cfg: PipelineConfig, pairs: Manifest, pretok: Manifest | None, benchmark: Manifest | None = None
) -> Manifest:
    """Fine-tune under torchrun; the training process group dies with this task (cancel, timeout, crash).

    ``benchmark`` (the hold-out) is scored during training when ``training.evaluation.steps`` is set; every rank
    encodes its share. Use ``training.launch.timeout_s`` rather than a Prefect task timeout to bound the run: the
    launcher owns the process group and kills all of it.
    """
    from st_workflow.training import train_stage

    log = get_logger()
    log.info(banner(f"train {cfg.training.base_model} ({cfg.training.launch.nproc_per_node} process(es))"))
    in_training = (
        {benchmark.name: benchmark.directory} if benchmark and cfg.training.evaluation.steps else None
    )
    m = train_stage(cfg, pairs, pretok, log_sink=log.info, eval_benchmarks=in_training)
    publish_table(
        "training",
        [{"metric": k, "value": v} for k, v in m.metrics.items() if isinstance(v, int | float | str)],
        "Training summary",
    )
    return m


@task(
    name="evaluate",
    cache_policy=ManifestCachePolicy(
        sections=("evaluation",),
        code=("evaluation",),
        benchmarks=("benchmarks",),
        progress=("evaluation", "Evaluating"),
    ),
    persist_result=True,
)
@reports_progress
def evaluate_task(
    cfg: PipelineConfig,
    models: dict[str, str],
    benchmarks: dict[str, Manifest],
    trained: Manifest | None = None,
) -> Manifest:
    """Score every model on every benchmark (incremental: finished combinations are not recomputed).

    ``trained`` is not read here; it ties the cache key to the trained model's content, since a model path alone
    does not change when the model is retrained.
    """
    from st_workflow.evaluation import evaluate_stage

    get_logger().info(
        banner(f"evaluate {len(models)} model(s) on {len(cfg.evaluation.benchmarks)} benchmark(s)")
    )
    m = evaluate_stage(cfg, models, {name: Path(b.directory) for name, b in benchmarks.items()})
    rows = [
        {
            "model": model,
            "benchmark": bench,
            **{k: v for k, v in vals.items() if k in cfg.evaluation.primary_metrics},
        }
        for model, per_bench in m.metrics.items()
        if isinstance(per_bench, dict)
        for bench, vals in per_bench.items()
        if isinstance(vals, dict)
    ]
    publish_table("ir-metrics", rows, "Retrieval metrics per model and benchmark")
    return m


@task(name="comparison-report", cache_policy=NO_CACHE)
@reports_progress
def comparison_report_task(
    cfg: PipelineConfig, evaluation: Manifest, models_order: list[str]
) -> dict[str, str]:
    """Markdown tables and PNG plots comparing checkpoints, base and baselines."""
    from st_workflow.evaluation import write_comparison_report

    get_logger().info(banner("comparison report"))
    paths = write_comparison_report(
        cfg, evaluation, cfg.stage_dir("eval") / "report", models_order=models_order
    )
    for role, p in paths.items():
        p = Path(p)
        if p.suffix == ".md":
            publish_markdown(f"comparison-{role}", p.read_text(encoding="utf-8"), "Checkpoint comparison")
        elif p.suffix == ".png":
            publish_image(f"plot-{role}", p, "Evaluation plot")
    return {k: str(v) for k, v in paths.items()}


@task(name="promote", cache_policy=NO_CACHE)
@reports_progress
def promote_task(cfg: PipelineConfig, evaluation: Manifest, candidates: dict[str, str]) -> dict[str, Any]:
    """Apply the promotion policy, point ``<run>/promoted`` at the winner and say why."""
    from st_workflow.evaluation import promote
    from st_workflow.evaluation.promotion import publish_promoted

    log = get_logger()
    log.info(banner(f"promote ({cfg.evaluation.promotion.policy})"))
    decision = promote(cfg, evaluation, candidates)
    link = publish_promoted(cfg, decision)
    decision["link"] = str(link)
    log.info("promoted %s -> %s", decision["promoted"], link)
    for r in decision.get("reasons", []):
        log.info("  %s", r)
    reasons = "\n".join(f"- {r}" for r in decision.get("reasons", []))
    publish_markdown(
        "promotion",
        f"**Promoted:** `{decision.get('promoted')}`\n\n`{link}` → `{decision.get('path')}`\n\n{reasons}",
        "Promoted model and the policy's reasons",
    )
    publish_link("promoted-model", link, str(decision.get("promoted")), "Promoted model directory")
    return decision


@task(
    name="push-to-hub",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=[30, 120, 480],
    retry_condition_fn=transient_error,
)
@reports_progress
def push_task(cfg: PipelineConfig, promoted: dict[str, Any], pairs: Manifest | None = None) -> dict[str, str]:
    """Upload the promoted model (``<run>/promoted``) to ``training.hub.repo_id``, and with
    ``training.hub.push_dataset`` the pairs dataset first (the model card links it); only the upload is retried.

    Returns the links (``hub``, ``hub-dataset``). Call it through :func:`push_promoted`, which applies the
    configured retries.
    """
    from st_workflow.training.hub import push_dataset, push_model

    hub = cfg.training.hub
    log = get_logger()
    links: dict[str, str] = {}
    dataset_repo = None
    if hub.push_dataset:
        if pairs is None:
            raise ValueError("training.hub.push_dataset is set but the run has no pairs dataset to push")
        log.info(banner(f"push the pairs dataset to {hub.dataset_repo_id}"))
        links["hub-dataset"] = push_dataset(cfg, pairs)
        dataset_repo = hub.dataset_repo_id
        publish_link(
            "hub-dataset", links["hub-dataset"], str(dataset_repo), "Pairs dataset on the Hugging Face Hub"
        )
    log.info(banner(f"push {promoted['promoted']} to {hub.repo_id}"))
    links["hub"] = push_model(cfg, Path(promoted.get("link") or promoted["path"]), dataset_repo=dataset_repo)
    publish_link(
        "hub-model", links["hub"], hub.repo_id or links["hub"], "Promoted model on the Hugging Face Hub"
    )
    return links


def push_promoted(
    cfg: PipelineConfig, promoted: dict[str, Any], pairs: Manifest | None = None
) -> dict[str, str]:
    """Run :func:`push_task` with ``training.hub.retries`` and its exponential ``retry_delay_s`` (inside a flow)."""
    hub = cfg.training.hub
    return push_task.with_options(retries=hub.retries, retry_delay_seconds=hub.retry_delays())(
        cfg, promoted, pairs
    )


@task(name="run-report", cache_policy=NO_CACHE)
@reports_progress
def run_report_task(
    cfg: PipelineConfig,
    metrics: dict[str, Any],
    stages: list[dict[str, Any]],
    started_at: float,
    promotion: dict[str, Any] | None,
    links: dict[str, str],
) -> dict[str, str]:
    """Write ``report.md`` + ``summary.json`` + chart at the run root and publish them."""
    from st_workflow.reporting import StageRecord, write_run_report

    wall = time.time() - started_at
    records = [StageRecord(**s) for s in stages]
    paths = write_run_report(
        cfg, metrics=metrics, stages=records, wall_seconds=wall, promotion=promotion, extra_links=links
    )
    publish_markdown(
        "run-report",
        inline_images(paths["report"].read_text(encoding="utf-8"), paths["report"].parent),
        f"Report of run {cfg.run_name}",
    )
    publish_table(
        "run-stages",
        [{"stage": s.stage, "status": s.status, "seconds": s.seconds, "note": s.note} for s in records],
        "What each stage did in this run",
    )
    if "chart" in paths:
        publish_image("run-chart", paths["chart"], "Base vs fine-tuned")
    get_logger().info("report written to %s (wall time %.1f s)", paths["report"], wall)
    return {k: str(v) for k, v in paths.items()}
