"""``stage2-data``: ingest -> hold-out benchmark -> natural pairs -> relevancy filter -> generation -> gates -> pairs."""

from __future__ import annotations

from typing import Any

from prefect import flow, unmapped

from st_workflow.config import PipelineConfig
from st_workflow.flows.common import StageClock, guarded_benchmarks, load_flow_config
from st_workflow.log import get_logger
from st_workflow.manifest import Manifest
from st_workflow.tasks.data import (
    assemble_pairs_task,
    generate_pairs_task,
    holdout_task,
    ingest_task,
    natural_pairs_task,
    pair_gates_task,
    relevancy_filter_task,
)


def _task_runner(cfg: PipelineConfig) -> Any:
    """Dask when configured (any cluster by address, else a LocalCluster), Prefect's thread pool otherwise."""
    if not cfg.orchestration.dask.enabled:
        return None
    from prefect_dask import DaskTaskRunner

    d = cfg.orchestration.dask
    if d.address:
        return DaskTaskRunner(address=d.address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": d.n_workers,
            "threads_per_worker": d.threads_per_worker,
            "processes": True,
        }
    )


LLM_STAGES = "llm-filter + llm-pairs + llm-gates"


@flow(name="ingest-fanout")
def ingest_fanout(cfg: PipelineConfig) -> list[Manifest]:
    """All enabled sources in parallel (threads, or Dask workers when the flow runs with a Dask task runner)."""
    names = [s.name for s in cfg.ingest.sources if s.enabled]
    return ingest_task.map(unmapped(cfg), names).result()


@flow(name="llm-fanout")
def llm_fanout(cfg: PipelineConfig, docs: list[Manifest], leak_dirs: list[dict[str, Any]]) -> list[Manifest]:
    """Filter -> generate -> gates once per source, the sources in parallel (on Dask workers when configured).

    With fan-out, ``generation.pairs.max_documents`` applies per source.
    """
    gated = []
    for m in docs:
        judged = relevancy_filter_task.submit(cfg, [m], shard=m.name)
        generated = generate_pairs_task.submit(cfg, [m], judged, shard=m.name)
        gated.append((generated, judged, m))
    out = []
    for generated, judged, m in gated:
        g = generated.result()
        if g is not None:
            out.append(pair_gates_task.submit(cfg, g, [m], leak_dirs, judged, shard=m.name))
    return [f.result() for f in out]


@flow(name="stage2-data")
def stage2_data_flow(
    config_path: str = "configs/demo.yaml",
    overrides: list[str] | None = None,
    started_at: float | None = None,
) -> dict[str, Any]:
    """Build the stage-2 training data: documents, the in-domain benchmark, natural and synthetic pairs."""
    cfg = load_flow_config(config_path, overrides)
    clock = StageClock(started_at)
    runner = _task_runner(cfg)
    fanout = ingest_fanout.with_options(task_runner=runner) if runner is not None else ingest_fanout
    docs = clock.run("ingest", fanout, cfg)
    holdout = clock.run("benchmark", holdout_task, cfg, docs)
    leak_dirs = guarded_benchmarks(cfg, holdout)
    natural = clock.run("pairs-natural", natural_pairs_task, cfg, docs, holdout)

    from st_workflow.stage2_generation import llm_configured, llm_skip_reason

    synthetic: list[Manifest | None] = []
    if llm_configured(cfg) and runner is not None:
        synthetic = clock.run("llm-gates", llm_fanout.with_options(task_runner=runner), cfg, docs, leak_dirs)
    elif llm_configured(cfg):
        judged = clock.run("llm-filter", relevancy_filter_task, cfg, docs)
        generated = clock.run("llm-pairs", generate_pairs_task, cfg, docs, judged)
        if generated is not None:
            synthetic = [clock.run("llm-gates", pair_gates_task, cfg, generated, docs, leak_dirs, judged)]
    else:
        reason = llm_skip_reason(cfg) or "no LLM endpoint configured"
        get_logger().info(reason)
        clock.skipped(LLM_STAGES, reason)

    pairs = clock.run("pairs", assemble_pairs_task, cfg, [natural, *synthetic], leak_dirs)
    return {
        "documents": docs,
        "benchmark": holdout,
        "natural": natural,
        "synthetic": synthetic,
        "pairs": pairs,
        "stages": clock.as_dicts(),
    }
