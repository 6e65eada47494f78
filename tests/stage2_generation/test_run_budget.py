"""One LLM budget per run: unpriced models are refused, and stages, shards, processes and retries share one cap.

Everything runs against the local OpenAI-compatible server; what it was paid for is read from its own counts
(``prompt_tokens`` + ``completion_tokens`` of every answer), never from our accounting.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from st_workflow.cli import main
from st_workflow.config import ConfigError, PipelineConfig, dump_config
from st_workflow.config.generation import Price
from st_workflow.manifest import Manifest
from st_workflow.stage2_generation import run_generation, run_relevancy_filter, write_benchmark_queries
from st_workflow.stage2_generation.benchmark_queries import QueryDoc
from st_workflow.stage2_generation.budget import BudgetConfigError, RunBudget
from st_workflow.stage2_generation.documents import load_documents
from st_workflow.testing.openai_server import OpenAICompatServer

from .conftest import make_cfg

MODEL = "local-model"
# $1 per million tokens both ways: a run's USD equals its tokens / 1e6. Set through the price table (an option
# older versions have too); ``generation.execution.price`` is the shortcut for the endpoint's model.
PRICED = (
    f"generation.endpoint.model={MODEL}",
    f"generation.execution.prices.{MODEL}.input_per_mtok=1",
    f"generation.execution.prices.{MODEL}.output_per_mtok=1",
    "generation.endpoint.max_tokens=1024",
)


def _paid_usd(srv: OpenAICompatServer) -> float:
    """What the server answered, in USD at $1 per million tokens."""
    s = srv.stats()
    return (s["prompt_tokens"] + s["completion_tokens"]) / 1e6


def _state(cfg: PipelineConfig) -> dict:
    return json.loads((cfg.cache_path / "llm" / "budgets" / f"{cfg.run_name}.json").read_text())


def _run_stats(m: Manifest) -> dict:
    return json.loads((Path(m.directory) / "run_stats.json").read_text())


# ---------------------------------------------------------------------- refusal
def test_an_unpriced_model_with_a_usd_budget_is_refused_before_any_request(
    tmp_path: Path, llm_server: OpenAICompatServer, docs: list[Manifest], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError) as e:
        make_cfg(
            tmp_path,
            llm_server.base_url,
            f"generation.endpoint.model={MODEL}",
            "generation.execution.budget_usd=1",
        )
    assert MODEL in str(e.value) and "generation.execution.price" in str(e.value)

    # A config built in code skips the load-time check; every LLM stage still refuses before its first request.
    cfg = make_cfg(tmp_path, llm_server.base_url, f"generation.endpoint.model={MODEL}")
    cfg.generation.execution.budget_usd = 1.0
    qdocs = [QueryDoc(d.source, d.id, d.title, d.text, d.content_hash) for d in load_documents(docs)[:2]]
    for start in (
        lambda: run_relevancy_filter(cfg, docs),
        lambda: run_generation(cfg, docs, None),
        lambda: write_benchmark_queries(cfg, qdocs, work_dir=tmp_path / "q"),
    ):
        with pytest.raises(BudgetConfigError) as e:
            start()
        assert MODEL in str(e.value) and "generation.execution.price" in str(e.value)
    cfg.generation.execution.budget_usd = None
    cfg.generation.execution.budget_tokens = 10_000
    cfg.generation.endpoint.max_tokens = None  # no worst case to reserve
    with pytest.raises(BudgetConfigError, match="max_tokens"):
        run_generation(cfg, docs, None)

    rc = main(
        [
            "generate",
            *[a for m in docs for a in ("--docs", m.directory)],
            "--out",
            str(tmp_path / "out"),
            "--base-url",
            llm_server.base_url,
            "--model",
            MODEL,
            "--set",
            f"cache_dir={tmp_path / 'cache'}",
            "--set",
            "generation.execution.budget_usd=5",
        ]
    )
    assert rc == 2 and MODEL in capsys.readouterr().err
    assert llm_server.stats()["requests"] == 0

    # Given a price (here: declared free), the same budget is accepted.
    ok = make_cfg(
        tmp_path,
        llm_server.base_url,
        f"generation.endpoint.model={MODEL}",
        "generation.execution.budget_usd=1",
        "generation.execution.price.input_per_mtok=0",
        "generation.execution.price.output_per_mtok=0",
    )
    assert ok.generation.execution.price_for(MODEL) == Price()


# ---------------------------------------------------------------------- one budget, shared
def test_the_filter_and_the_generator_share_one_budget(
    tmp_path: Path, llm_server: OpenAICompatServer, docs: list[Manifest]
) -> None:
    cap = 0.012  # less than either stage costs on its own
    cfg = make_cfg(tmp_path, llm_server.base_url, *PRICED, f"generation.execution.budget_usd={cap}")
    fm = run_relevancy_filter(cfg, docs)
    gm = run_generation(cfg, docs, fm)
    assert fm is not None and gm is not None
    assert fm.counts["judged"] > 0 and fm.counts["skipped_budget"] > 0
    assert _paid_usd(llm_server) <= cap  # both stages together
    assert _state(cfg)["spent_usd"] == pytest.approx(_paid_usd(llm_server), abs=1e-9)
    assert _run_stats(gm)["spent"]["budget_hit"]


def test_two_shards_in_parallel_share_one_budget(
    tmp_path: Path, llm_server: OpenAICompatServer, docs: list[Manifest]
) -> None:
    cap = 0.01
    cfg = make_cfg(
        tmp_path,
        llm_server.base_url,
        *PRICED,
        f"generation.execution.budget_usd={cap}",
        "generation.filter.enabled=false",
    )
    # As the flow's per-source fan-out: one generation per source shard, side by side, each in its own directory.
    with ThreadPoolExecutor(2) as pool:
        shards = list(
            pool.map(
                lambda m: run_generation(cfg, [m], None, out_dir=cfg.stage_dir("llm-pairs") / m.name),
                docs,
            )
        )
    assert all(s is not None for s in shards)
    assert sum(s.counts["generated"] for s in shards) > 0
    assert sum(s.counts["skipped_budget"] for s in shards) > 0
    assert _paid_usd(llm_server) <= cap
    assert _state(cfg)["spent_usd"] == pytest.approx(_paid_usd(llm_server), abs=1e-9)


def test_two_processes_of_one_run_share_one_budget(
    tmp_path: Path, llm_server: OpenAICompatServer, docs: list[Manifest]
) -> None:
    cap = 0.012
    cfg = make_cfg(tmp_path, llm_server.base_url, *PRICED, f"generation.execution.budget_usd={cap}")
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(dump_config(cfg))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "st_workflow.cli",
                "generate",
                *[a for m in docs for a in ("--docs", m.directory)],
                "--out",
                str(tmp_path / name),
                "--config",
                str(cfg_path),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("a", "b")
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [4, 4], outs  # both stopped by the budget, incomplete
    assert _paid_usd(llm_server) <= cap
    assert _state(cfg)["spent_usd"] == pytest.approx(_paid_usd(llm_server), abs=1e-9)
    assert _state(cfg)["reservations"] == {}


def test_a_retried_run_gets_no_fresh_budget(
    tmp_path: Path, llm_server: OpenAICompatServer, docs: list[Manifest]
) -> None:
    cap = 0.01
    sets = (*PRICED, "generation.filter.enabled=false")
    cfg = make_cfg(tmp_path, llm_server.base_url, *sets, f"generation.execution.budget_usd={cap}")
    first = run_generation(cfg, docs, None)
    assert first is not None and not first.metrics["complete"]
    paid_first = _paid_usd(llm_server)
    again = run_generation(cfg, docs, None)  # a task retry, a resumed or re-triggered run: same run_name
    assert again is not None and not again.metrics["complete"]
    assert _paid_usd(llm_server) <= cap  # the two attempts together
    assert _state(cfg)["spent_usd"] >= paid_first  # spent stays spent
    assert _state(cfg)["spent_usd"] == pytest.approx(_paid_usd(llm_server), abs=1e-9)

    # A higher cap continues the same run: it pays only for what is missing, cached answers cost nothing.
    more = make_cfg(tmp_path, llm_server.base_url, *sets, "generation.execution.budget_usd=1")
    done = run_generation(more, docs, None)
    assert done is not None and done.metrics["complete"]
    assert set(llm_server.calls().values()) == {1}  # no document paid twice
    assert _state(more)["spent_usd"] == pytest.approx(_paid_usd(llm_server), abs=1e-9)


# ---------------------------------------------------------------------- the shared state itself
def _spend_until_refused(root: str, start: Any) -> int:
    budget = RunBudget(
        Path(root), "r", Price(input_per_mtok=1, output_per_mtok=1), budget_usd=0.02, max_tokens=1
    )
    start.wait()
    n = 0
    while True:
        decision, rid = budget.try_reserve(0.001, 1000)
        if decision == "exhausted":
            return n
        if decision == "go":
            assert rid is not None
            budget.settle(rid, 0.001, 1000)
            n += 1


def test_processes_racing_for_the_last_dollars_never_overspend(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Manager().Event()
    with ctx.Pool(3) as pool:
        results = [pool.apply_async(_spend_until_refused, (str(tmp_path), start)) for _ in range(3)]
        start.set()
        counts = [r.get(timeout=120) for r in results]
    state = json.loads((tmp_path / "r.json").read_text())
    assert sum(counts) == 20 == state["requests"]  # exactly the cap: $0.02 in $0.001 requests
    assert state["spent_usd"] == pytest.approx(0.02) and state["reservations"] == {}


def test_a_dead_processes_reservation_stays_spent(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path;"
        "from st_workflow.config.generation import Price;"
        "from st_workflow.stage2_generation.budget import RunBudget;"
        "b = RunBudget(Path(sys.argv[1]), 'r', Price(input_per_mtok=1, output_per_mtok=1), budget_usd=0.01,"
        " max_tokens=1);"
        "print(b.try_reserve(0.004, 4000)[0], flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "go"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    b = RunBudget(tmp_path, "r", Price(input_per_mtok=1, output_per_mtok=1), budget_usd=0.01, max_tokens=1)
    # Its request may have been billed: the reservation is charged, never handed back.
    assert b.try_reserve(0.007, 7000)[0] == "exhausted"
    snap = b.snapshot()
    assert (snap["spent_usd"], snap["charged_unknown"], snap["reserved_usd"]) == (0.004, 1, 0)
    assert b.try_reserve(0.006, 6000)[0] == "go"
