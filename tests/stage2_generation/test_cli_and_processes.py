"""The ``generate``/``filter`` commands, ``kill -9`` + resume, and two concurrent runs sharing the answer cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from st_workflow.cli import main
from st_workflow.config import PipelineConfig, dump_config
from st_workflow.manifest import Manifest
from st_workflow.schemas import PAIR_SCHEMA
from st_workflow.stage2_generation import run_generation
from st_workflow.stage2_generation.documents import load_documents
from st_workflow.stage2_generation.generate import PairGenerator
from st_workflow.testing.openai_server import Faults, OpenAICompatServer

from .conftest import make_cfg


def _doc_args(docs: list[Manifest]) -> list[str]:
    return [a for m in docs for a in ("--docs", m.directory)]


def _sets(tmp_path: Path, *extra: str) -> list[str]:
    sets = [
        f"cache_dir={tmp_path / 'cache'}",
        "generation.endpoint.api_key.env=ST_TEST_LLM_KEY",
        "generation.execution.backoff_base_s=0.01",
        "generation.execution.claim_poll_s=0.05",
        "generation.execution.prefect_concurrency_limit=null",
        "generation.pairs.min_items=2",
        "generation.pairs.max_items=5",
        "generation.pairs.chars_per_item=250",
        *extra,
    ]
    return [a for s in sets for a in ("--set", s)]


def test_generate_and_filter_commands(
    tmp_path: Path, llm_server: OpenAICompatServer, docs: list[Manifest], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    rc = main(
        [
            "generate",
            *_doc_args(docs),
            "--out",
            str(out),
            "--base-url",
            llm_server.base_url,
            "--model",
            "qwen3:4b",
            *_sets(tmp_path),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "pairs kept" in printed and str(out / "pairs.parquet") in printed
    pairs = pq.read_table(out / "pairs.parquet")
    assert pairs.schema.equals(PAIR_SCHEMA) and pairs.num_rows > 0
    assert set(pairs.column("model").to_pylist()) == {"qwen3:4b"}
    assert Manifest.read(out).stage == "llm-gates" and Manifest.read(out / "llm-pairs").stage == "llm-pairs"
    assert Manifest.read(out / "llm-filter").counts["judged"] == 20

    judged = tmp_path / "judged"
    rc = main(
        [
            "filter",
            *_doc_args(docs),
            "--out",
            str(judged),
            "--base-url",
            llm_server.base_url,
            "--json",
            *_sets(tmp_path),
        ]
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["stage"] == "llm-filter" and result["counts"]["judged"] == 20
    assert (judged / "judgements.parquet").is_file() and (judged / "kept_ids.json").is_file()


def test_command_errors_have_distinct_exit_codes(
    tmp_path: Path, docs: list[Manifest], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", *_doc_args(docs), "--out", str(tmp_path / "o"), *_sets(tmp_path)]) == 2
    assert "no endpoint configured" in capsys.readouterr().err
    monkeypatch.setenv("ST_TEST_LLM_KEY", "sk-wrong")

    def run_filter(srv: OpenAICompatServer, *sets: str) -> int:
        out = str(tmp_path / "o")
        return main(
            ["filter", *_doc_args(docs), "--out", out, "--base-url", srv.base_url, *_sets(tmp_path, *sets)]
        )

    with OpenAICompatServer(api_key="sk-right") as srv:
        assert run_filter(srv) == 3 and "HTTP 401" in capsys.readouterr().err
    with OpenAICompatServer() as srv:
        assert run_filter(srv, "generation.execution.budget_tokens=1500") == 4
        assert "run the same command again" in capsys.readouterr().err
        assert run_filter(srv) == 0
        assert set(srv.calls("relevancy").values()) == {1}  # the re-run finished the rest only


def _cli(cfg_path: Path, docs: list[Manifest], out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "st_workflow.cli",
            "generate",
            *_doc_args(docs),
            "--out",
            str(out),
            "--config",
            str(cfg_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _write_cfg(tmp_path: Path, cfg: PipelineConfig) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(dump_config(cfg))
    return p


def test_kill_9_loses_only_the_calls_in_flight(tmp_path: Path, docs: list[Manifest]) -> None:
    with OpenAICompatServer(latency=0.3) as srv:
        cfg = make_cfg(
            tmp_path, srv.base_url, "generation.filter.enabled=false", "generation.execution.concurrency=2"
        )
        keys = {PairGenerator(cfg.generation).job(d).key: d.title for d in load_documents(docs)}
        store = tmp_path / "cache" / "llm" / "pairs"
        proc = _cli(_write_cfg(tmp_path, cfg), docs, tmp_path / "out")
        try:
            deadline = time.monotonic() + 60
            while len(list(store.rglob("*.json"))) < 4:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "no progress before the kill"
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        done_before = {keys[p.stem] for p in store.rglob("*.json")}
        paid_before = srv.calls()
        assert 4 <= len(done_before) < len(keys)
        assert not (tmp_path / "out" / "llm-pairs" / "manifest.json").exists()  # never committed half a stage

        gm = run_generation(cfg, docs, None, out_dir=tmp_path / "out" / "llm-pairs")  # resume
        assert gm.metrics["complete"] and gm.counts["generated"] == 20
        paid = srv.calls()
        assert set(paid) == set(keys.values())  # every document done
        assert all(paid[t] == paid_before[t] == 1 for t in done_before)  # finished ones never paid again
        repaid = [t for t, n in paid.items() if n > 1]
        assert len(repaid) <= cfg.generation.execution.concurrency and all(paid[t] == 2 for t in repaid)
        assert not list(
            (tmp_path / "out" / "llm-pairs").glob(".staging-*")
        )  # the dead run's staging is swept


def test_two_concurrent_runs_pay_once_per_document(tmp_path: Path, docs: list[Manifest]) -> None:
    with OpenAICompatServer(latency=0.15, faults=Faults(rate_limit=1, retry_after=0.02)) as srv:
        cfg = make_cfg(tmp_path, srv.base_url, "generation.execution.concurrency=3")
        cfg_path = _write_cfg(tmp_path, cfg)
        a, b = _cli(cfg_path, docs, tmp_path / "a"), _cli(cfg_path, docs, tmp_path / "b")
        outs = [p.communicate(timeout=120)[0] for p in (a, b)]
        assert a.returncode == 0 and b.returncode == 0, outs
        titles = {d.title for d in load_documents(docs)}
        assert srv.calls("relevancy") == {t: 1 for t in titles}
        assert srv.calls("qa") + srv.calls("search_terms") == {t: 1 for t in titles}
        assert (tmp_path / "a" / "pairs.parquet").read_bytes() == (
            tmp_path / "b" / "pairs.parquet"
        ).read_bytes()
        stats = [
            json.loads((tmp_path / x / "llm-pairs" / "run_stats.json").read_text())["engine"] for x in "ab"
        ]
        assert sum(s["statuses"].get("ok", 0) for s in stats) == 20  # the work was shared, not duplicated
