"""Fixtures of the ingest tests: fast retry policies, a replay server, configs pointing at temporary run dirs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from st_workflow.config import PipelineConfig, load_config
from st_workflow.config.ingest import RetryConfig
from st_workflow.testing.replay_server import ReplayServer

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def fast_retry() -> RetryConfig:
    """Retries in milliseconds so that fault tests stay fast (the policy is the same code)."""
    return RetryConfig(max_attempts=5, backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=3.0)


@pytest.fixture
def replay() -> Iterator[ReplayServer]:
    """A fresh replay server per test (tests add and revise records)."""
    with ReplayServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def shared_replay() -> Iterator[ReplayServer]:
    """One replay server for read-only tests of a module."""
    with ReplayServer() as srv:
        yield srv


@pytest.fixture
def demo_cfg(tmp_path: Path) -> PipelineConfig:
    """The embedded demo config (all three bundled sources) writing under a temporary runs dir."""
    return load_config(CONFIGS / "demo.yaml", [f"runs_dir={tmp_path / 'runs'}"])
