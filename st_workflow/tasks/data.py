"""Tasks of the stage-2 data flow: ingest, hold-out benchmark, natural pairs, LLM stages, pairs dataset."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from st_workflow.config import PipelineConfig
from st_workflow.log import banner, get_logger
from st_workflow.manifest import Manifest
from st_workflow.tasks.artifacts import publish_table
from st_workflow.tasks.caching import ManifestCachePolicy, transient_error
from st_workflow.tasks.progress import reports_progress

# Ingest always runs: file sources re-use their output inside the stage function (cheap hash check) and live API
# sources ask only for what changed since the last successful ingest. Downstream tasks are then cached on content.


@task(
    name="ingest",
    task_run_name="ingest-{source_name}",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=transient_error,
)
@reports_progress
def ingest_task(cfg: PipelineConfig, source_name: str) -> Manifest:
    """Ingest one document source into ``<run>/ingest/<source>/``."""
    from st_workflow.ingest import ingest_source

    get_logger().info(banner(f"ingest {source_name}"))
    m = ingest_source(cfg, source_name)
    publish_table(
        f"ingest-{source_name}",
        [{"source": source_name, **m.counts}],
        f"Records of source {source_name}: kept, quarantined, duplicates",
    )
    return m


@task(
    name="holdout-benchmark",
    cache_policy=ManifestCachePolicy(
        sections=("pairs", "generation"), code=("ingest", "beir", "near_duplicates")
    ),
    persist_result=True,
)
@reports_progress
def holdout_task(cfg: PipelineConfig, doc_manifests: list[Manifest]) -> Manifest | None:
    """Hold out a seeded share of documents as the in-domain BEIR benchmark."""
    from st_workflow.ingest import build_holdout

    get_logger().info(banner("hold-out benchmark"))
    m = build_holdout(cfg, doc_manifests)
    if m is not None:
        publish_table(
            "holdout-benchmark", [{"benchmark": m.name, **m.counts}], "In-domain benchmark held out"
        )
    return m


@task(
    name="natural-pairs",
    cache_policy=ManifestCachePolicy(
        sections=("pairs", "evaluation"), code=("ingest", "leakage", "near_duplicates", "beir", "schemas")
    ),
    persist_result=True,
)
@reports_progress
def natural_pairs_task(
    cfg: PipelineConfig, doc_manifests: list[Manifest], holdout: Manifest | None
) -> Manifest:
    """Title -> abstract / description pairs from the documents that were not held out."""
    from st_workflow.ingest import build_natural_pairs

    get_logger().info(banner("natural pairs"))
    m = build_natural_pairs(cfg, doc_manifests, holdout)
    publish_table(
        "natural-pairs", [{"stage": "natural pairs", **m.counts}], "Natural pairs by type and source"
    )
    return m


_LLM_CACHE = ManifestCachePolicy(sections=("generation",), code=("stage2_generation",))
_FILTER_CACHE = replace(_LLM_CACHE, progress=("relevancy-filter", "Relevancy filter"))
_PAIRS_CACHE = replace(_LLM_CACHE, progress=("generation", "Generating pairs"))
# The tasks that call the endpoint retry its transient faults (rate limits, 5xx, timeouts) twice, minutes apart;
# finished documents are in the LLM cache, so a retry pays only for the rest.
_LLM_CALLS = {
    "cache_policy": _LLM_CACHE,
    "persist_result": True,
    "retries": 2,
    "retry_delay_seconds": [30, 120],
    "retry_condition_fn": transient_error,
}


@task(name="relevancy-filter", **{**_LLM_CALLS, "cache_policy": _FILTER_CACHE})
@reports_progress
def relevancy_filter_task(
    cfg: PipelineConfig, doc_manifests: list[Manifest], shard: str | None = None
) -> Manifest | None:
    """Judge each document's fitness for grounded QA (Pydantic AI); ``shard`` names a per-source fan-out slice."""
    from st_workflow.stage2_generation import STAGE_FILTER, run_relevancy_filter

    get_logger().info(banner(f"relevancy filter {shard or ''}"))
    m = run_relevancy_filter(cfg, doc_manifests, out_dir=_shard_dir(cfg, STAGE_FILTER, shard))
    _publish_llm_stage(
        m, "relevancy-filter", shard, "relevancy filter", "Documents judged and kept, tokens and cost"
    )
    return m


@task(name="generate-pairs", **{**_LLM_CALLS, "cache_policy": _PAIRS_CACHE})
@reports_progress
def generate_pairs_task(
    cfg: PipelineConfig,
    doc_manifests: list[Manifest],
    filter_manifest: Manifest | None,
    shard: str | None = None,
) -> Manifest | None:
    """Synthetic question/context pairs and search terms (Instructor)."""
    from st_workflow.stage2_generation import STAGE_PAIRS, run_generation

    get_logger().info(banner(f"generate pairs {shard or ''}"))
    m = run_generation(cfg, doc_manifests, filter_manifest, out_dir=_shard_dir(cfg, STAGE_PAIRS, shard))
    _publish_llm_stage(
        m, "generate-pairs", shard, "generation", "Documents, generated pairs, tokens and cost"
    )
    return m


@task(
    name="pair-gates",
    cache_policy=ManifestCachePolicy(
        sections=("generation",), code=("stage2_generation",), benchmarks=("benchmark_dirs",)
    ),
    persist_result=True,
)
@reports_progress
def pair_gates_task(
    cfg: PipelineConfig,
    generated: Manifest,
    doc_manifests: list[Manifest],
    benchmark_dirs: list[dict[str, Any]],
    filter_manifest: Manifest | None = None,
    shard: str | None = None,
) -> Manifest:
    """Verbatim, dedup, leakage and length gates; publishes the stage-2 summary (yields, tokens, cost)."""
    from st_workflow.stage2_generation import STAGE_GATES, run_gates

    get_logger().info(banner(f"pair gates {shard or ''}"))
    return run_gates(
        cfg,
        generated,
        doc_manifests,
        benchmark_dirs,
        filter_manifest=filter_manifest,
        out_dir=_shard_dir(cfg, STAGE_GATES, shard),
    )


@task(
    name="assemble-pairs",
    cache_policy=ManifestCachePolicy(sections=("pairs",), code=("pairset",), benchmarks=("benchmark_dirs",)),
    persist_result=True,
)
@reports_progress
def assemble_pairs_task(
    cfg: PipelineConfig, pair_manifests: list[Manifest | None], benchmark_dirs: list[dict[str, Any]]
) -> Manifest:
    """One de-duplicated, leakage-checked pairs dataset for training."""
    from st_workflow.pairset import assemble_pairs

    get_logger().info(banner("pairs dataset"))
    m = assemble_pairs(cfg, [p for p in pair_manifests if p is not None], benchmark_dirs)
    publish_table(
        "pairs-dataset",
        [{"count": k, "value": v} for k, v in m.counts.items()],
        "Training pairs by type and source, with removals",
    )
    return m


def _shard_dir(cfg: PipelineConfig, stage: str, shard: str | None) -> Path | None:
    """Per-source directory of a fanned-out LLM stage (``<run>/<stage>/<source>``); None keeps the default."""
    return cfg.stage_dir(stage) / shard if shard else None


def _shard_key(key: str, shard: str | None) -> str:
    """Artifact key of a fanned-out stage: one per source shard, so shards do not overwrite each other's table."""
    return f"{key}-{shard}" if shard else key


def _publish_llm_stage(m: Manifest | None, key: str, shard: str | None, stage: str, title: str) -> None:
    """An LLM stage's counts, tokens and cost as one table (one per source shard); nothing when it did not run."""
    if m is not None:
        publish_table(_shard_key(key, shard), [{"stage": stage, **m.counts, **_cost(m)}], title)


def _cost(m: Manifest) -> dict[str, float]:
    return {
        k: v for k, v in m.metrics.items() if isinstance(v, int | float) and ("cost" in k or "token" in k)
    }
