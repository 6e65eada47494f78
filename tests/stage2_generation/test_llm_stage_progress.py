"""Issue 15 for the LLM stages: the skeleton reports documents done of total with this run's tokens and dollars,
says "reused" at once for a cached stage, and stops below 100 when the endpoint refuses the run."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from st_workflow import progress
from st_workflow.manifest import Manifest
from st_workflow.progress import ProgressState
from st_workflow.stage2_generation import EndpointFatalError, run_generation, run_relevancy_filter
from st_workflow.testing.openai_server import OpenAICompatServer

from .conftest import make_cfg

DETAIL = re.compile(r"^(\d+) tokens, \$(\d+\.\d{4})$")


class RecordingSink:
    """Keeps a copy of every snapshot a sink is handed, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, ProgressState]] = []

    def open(self, state: ProgressState) -> None:
        self.seen.append(("open", dataclasses.replace(state)))

    def update(self, state: ProgressState) -> None:
        self.seen.append(("update", dataclasses.replace(state)))

    def close(self, state: ProgressState) -> None:
        self.seen.append(("close", dataclasses.replace(state)))

    def of(self, key: str) -> list[ProgressState]:
        return [s for _, s in self.seen if s.key == key]


def _tokens(m: Manifest) -> int:
    return int(m.metrics["prompt_tokens"]) + int(m.metrics["completion_tokens"])


def test_filter_and_generation_report_documents_tokens_and_dollars(
    tmp_path: Path, llm_server: OpenAICompatServer, docs: list[Manifest]
) -> None:
    cfg = make_cfg(
        tmp_path,
        llm_server.base_url,
        "generation.execution.price.input_per_mtok=1.0",
        "generation.execution.price.output_per_mtok=2.0",
    )
    sink = RecordingSink()
    with progress.sinks(sink):
        fm = run_relevancy_filter(cfg, docs)
        gm = run_generation(cfg, docs, fm)
    assert fm is not None and gm is not None and fm.metrics["complete"] and gm.metrics["complete"]

    for key, m, n_docs in (
        ("relevancy-filter", fm, fm.counts["judged"]),
        ("generation", gm, gm.counts["documents"]),
    ):
        states = sink.of(key)
        assert states[0].status == "running" and states[0].total == n_docs and states[0].unit == "docs"
        done = [s.completed for s in states]
        assert done == sorted(done)  # advances only forward, as jobs finish
        last = states[-1]
        assert last.status == "done" and last.percent == 100.0 and last.completed == n_docs
        match = DETAIL.match(last.detail or "")
        assert match, last.detail
        # Nothing was cached: what this run spent is what the data took.
        assert int(match.group(1)) == _tokens(m) > 0
        assert (
            float(match.group(2)) == pytest.approx(m.metrics["cost_usd"], abs=1e-4)
            and float(match.group(2)) > 0
        )
    assert [k for k, s in sink.seen if s.key == "generation"][-1] == "close"

    # Unchanged inputs, config and code: both stages say "reused" at once and nothing is called.
    calls = llm_server.stats()["requests"]
    again = RecordingSink()
    with progress.sinks(again):
        fm2 = run_relevancy_filter(cfg, docs)
        gm2 = run_generation(cfg, docs, fm2)
    assert fm2 is not None and gm2 is not None
    assert (fm2.content_hash, gm2.content_hash) == (fm.content_hash, gm.content_hash)
    assert llm_server.stats()["requests"] == calls
    for key in ("relevancy-filter", "generation"):
        last = again.of(key)[-1]
        assert last.status == "reused" and last.percent == 100.0 and last.detail == "reused"


def test_a_fully_cached_rerun_counts_its_documents_at_no_cost(
    tmp_path: Path, llm_server: OpenAICompatServer, docs: list[Manifest]
) -> None:
    cfg = make_cfg(tmp_path, llm_server.base_url, "generation.filter.enabled=false")
    assert run_generation(cfg, docs, None) is not None
    # Stage reuse off: the stage runs again, every answer comes from the LLM cache.
    cfg2 = make_cfg(
        tmp_path, llm_server.base_url, "generation.filter.enabled=false", "orchestration.cache=false"
    )
    sink = RecordingSink()
    with progress.sinks(sink):
        gm = run_generation(cfg2, docs, None)
    assert gm is not None
    last = sink.of("generation")[-1]
    assert (
        last.status == "done"
        and last.completed == gm.counts["documents"]
        and last.detail == "0 tokens, $0.0000"
    )


def test_a_refused_key_leaves_the_bar_below_100(
    tmp_path: Path, docs: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ST_TEST_LLM_KEY", "sk-wrong")
    sink = RecordingSink()
    with OpenAICompatServer(api_key="sk-right") as srv:
        cfg = make_cfg(tmp_path, srv.base_url, "generation.filter.enabled=false")
        with progress.sinks(sink), pytest.raises(EndpointFatalError):
            run_generation(cfg, docs, None)
    last = sink.of("generation")[-1]
    assert last.status == "failed" and last.percent < 100.0
