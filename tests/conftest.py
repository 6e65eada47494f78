"""Shared fixtures: offline environment, bundled samples, a tiny random BERT, the SciFact benchmark."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "st_workflow" / "data" / "samples"

# Offline and quiet for every test; tests that exercise W&B or the hub set their own values.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# Our loggers are routed to the Prefect API inside runs; outside a run (after a harness ran) they must stay quiet.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The real CMR / PDS / arXiv records bundled with the package."""
    return SAMPLES


@pytest.fixture(scope="session")
def test_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory shared by the whole test session (tiny models, tokenized data)."""
    return tmp_path_factory.mktemp("st-cache")


@pytest.fixture(scope="session")
def tiny_model_path(test_cache_dir: Path) -> Path:
    """A tiny random-weight BERT sentence-transformer (built once per session, ~3 s)."""
    from st_workflow.models.tiny import build_tiny_bert

    return build_tiny_bert(test_cache_dir / "models", hidden=32, layers=2, heads=2, vocab=2000, max_len=128)


def _scifact() -> Path | None:
    for cand in (os.environ.get("ST_WORKFLOW_SCIFACT"), REPO.parent / "shared" / "benchmarks" / "scifact"):
        if cand and (Path(cand) / "corpus.jsonl").is_file():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    """The SciFact BEIR benchmark (CC BY-NC, kept outside the repo: ``../shared/benchmarks/scifact``)."""
    path = _scifact()
    if path is None:
        pytest.skip("SciFact not found (set ST_WORKFLOW_SCIFACT or place it at ../shared/benchmarks/scifact)")
    return path


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API (SQLite) for the whole session; flows and tasks run against it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
