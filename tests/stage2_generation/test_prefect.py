"""Inside Prefect: one global-concurrency slot per LLM request across runs, and the report artifact."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from st_workflow.manifest import Manifest
from st_workflow.stage2_generation import ARTIFACT_KEY, run_gates, run_generation
from st_workflow.testing.openai_server import OpenAICompatServer

from .conftest import make_cfg


class _Collect(logging.Handler):
    """Collects messages straight from the loggers (independent of propagation and output capture)."""

    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


@pytest.fixture
def prefect_api(prefect_harness: None) -> Iterator[None]:
    """The session's temporary Prefect API (one per test session: two nested harnesses confuse Prefect's services)."""
    yield


@pytest.mark.slow
def test_llm_requests_hold_prefect_slots_and_the_report_is_an_artifact(
    prefect_api: None,
    tmp_path: Path,
    docs: list[Manifest],
) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="llm-test", limit=2))

    with OpenAICompatServer(latency=0.2) as srv:
        common = (
            "generation.filter.enabled=false",
            "generation.execution.concurrency=6",
            "generation.pairs.sources=[arxiv]",
        )

        @flow(name="st-llm-slots")
        def limited() -> Manifest:
            cfg = make_cfg(
                tmp_path, srv.base_url, *common, "generation.execution.prefect_concurrency_limit=llm-test"
            )
            gm = run_generation(cfg, docs, None)
            run_gates(cfg, gm, docs, [])
            return gm

        gm = limited()
        assert gm.counts["generated"] == 12
        assert srv.stats()["max_inflight"] <= 2  # 6 workers, but only 2 slots across the Prefect server

        srv.reset()
        said: list[str] = []
        collect = _Collect(said)
        watched = [logging.getLogger(n) for n in ("prefect.flow_runs", "prefect.task_runs", "st_workflow")]
        for lg in watched:
            lg.addHandler(collect)

        @flow(name="st-llm-no-limit")
        def unlimited() -> Manifest:
            cfg = make_cfg(
                tmp_path,
                srv.base_url,
                *common,
                "run_name=u",
                "cache_dir=" + str(tmp_path / "c2"),
                "generation.execution.prefect_concurrency_limit=missing-limit",
            )
            return run_generation(cfg, docs, None)

        try:
            unlimited()
        finally:
            for lg in watched:
                lg.removeHandler(collect)
        assert srv.stats()["max_inflight"] > 2
        missing = [m for m in said if "'missing-limit' does not exist" in m]
        assert len(missing) == 1, missing  # logged once, not per call

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[ARTIFACT_KEY]))
        )
    assert arts and arts[0].type == "table"
    assert "pairs kept" in str(arts[0].data)
