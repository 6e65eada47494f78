"""Scale-out: ingest and LLM generation fan out over a Dask LocalCluster (prefect-dask)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from st_workflow.config import load_config
from st_workflow.flows.stage2_data import _task_runner, ingest_fanout, stage2_data_flow
from st_workflow.ingest import ingest_to_dir
from st_workflow.testing.openai_server import OpenAICompatServer

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_stage2_fans_out_per_source_on_dask(prefect_harness, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dask-test")
    with OpenAICompatServer() as llm:
        overrides = [
            f"runs_dir={tmp_path / 'runs'}",
            f"cache_dir={tmp_path / 'cache'}",
            "orchestration.dask.enabled=true",
            "orchestration.dask.n_workers=2",
            f"generation.endpoint.base_url={llm.base_url}",
            "generation.endpoint.model=local-stub",
            "generation.execution.prefect_concurrency_limit=null",
            "generation.pairs.max_documents=4",
            "ingest.sources.cmr.max_records=40",
            "ingest.sources.pds.max_records=40",
            "ingest.sources.arxiv.max_records=40",
        ]
        out = stage2_data_flow(str(REPO / "configs" / "tiny.yaml"), overrides)
        stats = llm.stats()
    assert {m.name for m in out["documents"]} == {"cmr", "pds", "arxiv"}
    gated = [m for m in out["synthetic"] if m is not None]
    assert sorted(Path(m.directory).name for m in gated) == ["arxiv", "cmr", "pds"]
    pairs = pq.read_table(out["pairs"].path("pairs")).to_pylist()
    synthetic_sources = {p["source"] for p in pairs if p["synthesized"]}
    assert synthetic_sources == {"cmr", "pds", "arxiv"}, synthetic_sources
    for task, per_doc in stats["by_task"].items():
        assert max(c.get("answered", 0) for c in per_doc.values()) == 1, (task, json.dumps(per_doc)[:500])


def test_ingest_fanout_parses_snapshots_over_the_threshold_on_dask(prefect_harness, tmp_path: Path) -> None:
    """A snapshot over ``parallel_min_bytes`` with workers asked for, ingested inside a Dask worker process.

    Dask worker processes are daemonic and may not start the parallel parser's process pool; the ingest must still
    succeed there, with the documents an in-process parse writes.
    """
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [
            f"runs_dir={tmp_path / 'runs'}",
            f"cache_dir={tmp_path / 'cache'}",
            "orchestration.dask.enabled=true",
            "orchestration.dask.n_workers=2",
            "ingest.parallel_min_bytes=1",  # the 836 kB bundled snapshot is "big"
            "ingest.workers=2",  # asked for explicitly, whatever the load of this machine
            "ingest.sources.cmr.max_records=20",
            "ingest.sources.pds.max_records=20",
        ],
    )
    runner = _task_runner(cfg)
    assert runner is not None
    docs = {m.name: m for m in ingest_fanout.with_options(task_runner=runner)(cfg)}
    assert set(docs) == {"cmr", "pds", "arxiv"}
    assert docs["arxiv"].counts["kept"] == 100
    in_process = ingest_to_dir(
        cfg.ingest.source("arxiv"),
        tmp_path / "arxiv-in-process",
        ingest=cfg.ingest.model_copy(update={"workers": 0}),
    )
    assert docs["arxiv"].files["documents"].sha256 == in_process.files["documents"].sha256
    assert docs["arxiv"].counts == in_process.counts
