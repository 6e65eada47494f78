"""Deployments end to end on a real Prefect server: `prefect deploy --all` from prefect.yaml, a process worker,
`prefect deployment run`, artifacts read back through the API, idempotent concurrent regeneration, and a cancelled
training run that leaves no process behind.

Local servers stand in for the outside world over real HTTP: the CMR/PDS replay server and an OpenAI-compatible
chat-completions server.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from st_workflow.testing.openai_server import OpenAICompatServer
from st_workflow.testing.replay_server import ReplayServer
from tests.flows.prefect_server import REPO, PrefectStack, prefect_stack, processes_with

pytestmark = pytest.mark.slow

SECRET = "sk-integration-secret-4242"


def _config(tmp: Path, replay: ReplayServer, llm: OpenAICompatServer) -> Path:
    cfg = {
        "extends": str(REPO / "configs" / "tiny.yaml"),
        "run_name": "e2e",
        "runs_dir": str(tmp / "runs"),
        "cache_dir": str(tmp / "cache"),
        "ingest": {
            "sources": [
                {
                    "name": "cmr",
                    "kind": "cmr",
                    "base_url": replay.cmr_url,
                    "params": {"provider": "PODAAC"},
                    "page_size": 40,
                    "max_records": 80,
                },
                {
                    "name": "pds",
                    "kind": "pds",
                    "base_url": replay.pds_url,
                    "endpoint": "products",
                    "limit": 40,
                    "max_records": 80,
                },
                {
                    "name": "arxiv",
                    "kind": "arxiv",
                    "max_records": 60,
                    "snapshot": ["pkg://samples/arxiv/arxiv-browse.abs_converted.physics_astro.519.jsonl"],
                },
            ]
        },
        "generation": {
            "endpoint": {"base_url": llm.base_url, "model": "local-stub"},
            "execution": {"concurrency": 8, "backoff_base_s": 0.1, "prefect_concurrency_limit": "llm-calls"},
            "pairs": {"max_documents": 15},
        },
        "training": {"max_steps": 6},
    }
    path = tmp / "e2e.yaml"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("prefect-e2e")
    with ReplayServer() as replay, OpenAICompatServer() as llm, prefect_stack(tmp / "prefect") as st:
        st.env["OPENAI_API_KEY"] = SECRET
        st.cli("work-pool", "create", "st-workflow-process", "--type", "process")
        st.cli("--no-prompt", "deploy", "--all")
        st.cli("gcl", "create", "llm-calls", "--limit", "4")  # bounds LLM calls across concurrent runs
        st.start_worker("st-workflow-process")
        yield st, _config(tmp, replay, llm), llm, tmp


def _artifact_text(arts: list[dict]) -> str:
    return json.dumps([a.get("data") for a in arts])


def test_regenerate_twice_at_once_generates_each_document_once(stack) -> None:
    st: PrefectStack
    st, config, llm, _ = stack
    params = {"config_path": str(config), "overrides": []}
    a = st.run_deployment("stage2-data/regenerate", params)
    b = st.run_deployment("stage2-data/regenerate", params)
    states = sorted([st.wait(a), st.wait(b)])
    assert "COMPLETED" in states, st.log("worker.log")
    # The second concurrent run is cancelled by the deployment's CANCEL_NEW limit (or, had it run, it would have
    # found every answer cached): either way no document is paid for twice.
    assert set(states) <= {"COMPLETED", "CANCELLED"}
    for task, per_doc in llm.stats()["by_task"].items():
        paid = {doc: c.get("answered", 0) for doc, c in per_doc.items()}
        assert max(paid.values()) == 1, f"{task}: documents answered more than once: {paid}"
    assert 0 < llm.stats()["max_inflight"] <= 4, "the global concurrency limit did not bound the LLM calls"
    limit = st.cli("gcl", "inspect", "llm-calls", "--output", "json")
    assert json.loads(limit)["active_slots"] == 0, limit
    done = a if st.state(a) == "COMPLETED" else b
    arts = st.artifacts(done)
    keys = {x["key"] for x in arts}
    assert {"holdout-benchmark", "natural-pairs", "pairs-dataset"} <= keys, keys
    assert any(x["type"] == "table" for x in arts)
    assert SECRET not in _artifact_text(arts)
    assert SECRET not in st.logs(done)


def test_train_deployment_completes_with_artifacts(stack) -> None:
    st, config, _, tmp = stack
    _ensure_pairs(st, config, tmp)
    run = st.run_deployment("train/default", {"config_path": str(config), "overrides": []})
    assert st.wait(run) == "COMPLETED", st.logs(run)[-4000:]
    arts = st.artifacts(run)
    by_key = {x["key"]: x for x in arts}
    assert by_key["run-report"]["type"] == "markdown"
    assert "fine_tuned" in by_key["run-report"]["data"]
    assert by_key["ir-metrics"]["type"] == "table"
    assert "promotion" in by_key
    assert by_key["run-chart"]["data"].startswith("![")  # the PNG inline
    summary = json.loads((tmp / "runs" / "e2e" / "summary.json").read_text())
    assert set(summary["models"]) >= {"base", "fine_tuned"}
    assert SECRET not in _artifact_text(arts)


def _ensure_pairs(st: PrefectStack, config: Path, tmp: Path) -> None:
    if not (tmp / "runs" / "e2e" / "pairs" / "manifest.json").is_file():
        run = st.run_deployment("stage2-data/regenerate", {"config_path": str(config), "overrides": []})
        assert st.wait(run) == "COMPLETED", st.logs(run)[-3000:]


def test_cancelling_training_leaves_no_process(stack) -> None:
    st, config, _, tmp = stack
    _ensure_pairs(st, config, tmp)
    marker = str(tmp / "runs")
    overrides = ["training.max_steps=100000", "training.launch.nproc_per_node=2", "evaluation.enabled=false"]
    run = st.run_deployment("train/default", {"config_path": str(config), "overrides": overrides})
    deadline = time.time() + 600
    while time.time() < deadline and len(processes_with(marker)) < 3:  # launcher/torchrun + 2 workers
        assert st.state(run) not in {"COMPLETED", "FAILED", "CRASHED"}, st.logs(run)[-3000:]
        time.sleep(1)
    assert len(processes_with(marker)) >= 3, f"training never started: {st.logs(run)[-3000:]}"
    st.cli("flow-run", "cancel", run)
    final = st.wait(run, timeout=180)
    assert final == "CANCELLED", f"{final}: {st.logs(run)[-4000:]}\n{st.log('worker.log')[-3000:]}"
    deadline = time.time() + 60
    while time.time() < deadline and processes_with(marker):
        time.sleep(1)
    left = processes_with(marker)
    assert not left, f"processes left after cancellation: {left}"
    assert os.environ.get("PREFECT_API_URL") != st.api  # the test process itself was never re-pointed
