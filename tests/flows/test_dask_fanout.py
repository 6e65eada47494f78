"""Scale-out: ingest and LLM generation fan out over a Dask LocalCluster (prefect-dask)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from st_workflow.flows.stage2_data import stage2_data_flow
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
