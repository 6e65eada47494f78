"""The three LLM stages end to end against the local server: real HTTP, real Instructor and Pydantic AI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from st_workflow.manifest import Manifest
from st_workflow.schemas import PAIR_SCHEMA, normalize_whitespace
from st_workflow.stage2_generation import (
    EndpointFatalError,
    llm_configured,
    llm_skip_reason,
    run_gates,
    run_generation,
    run_relevancy_filter,
)
from st_workflow.stage2_generation.generate import GENERATED_SCHEMA
from st_workflow.stage2_generation.shards import read_shards
from st_workflow.testing.documents import write_documents
from st_workflow.testing.openai_server import Faults, OpenAICompatServer

from .conftest import SECRET, make_cfg

CLIENT_LOGGERS = (
    "st_workflow",
    "openai",
    "httpx",
    "httpx2",
    "httpcore",
    "httpcore2",
    "instructor",
    "pydantic_ai",
)


def _all_titles(doc_rows: dict[str, list[dict]]) -> dict[str, str]:
    return {r["title"]: s for s, rows in doc_rows.items() for r in rows}


def test_filter_generate_gates_end_to_end(
    tmp_path: Path, llm_server: OpenAICompatServer, doc_rows: dict[str, list[dict]]
) -> None:
    # A duplicate of an arXiv document under another id: same content, so it must not cost a second call.
    dup = {**doc_rows["arxiv"][0], "id": "dup-of-first"}
    docs = [
        write_documents(tmp_path / "ingest" / "arxiv", [*doc_rows["arxiv"], dup], "arxiv"),
        write_documents(tmp_path / "ingest" / "cmr", doc_rows["cmr"], "cmr"),
    ]
    poor = doc_rows["arxiv"][1]["title"]
    llm_server.qualities[poor] = "POOR"
    cfg = make_cfg(tmp_path, llm_server.base_url)
    titles = _all_titles(doc_rows)

    fm = run_relevancy_filter(cfg, docs)
    assert fm is not None and fm.metrics["complete"]
    assert fm.counts["documents"] == 21 and fm.counts["judged"] == 21 and fm.counts["kept"] == 20
    assert llm_server.calls("relevancy") == {t: 1 for t in titles}  # every document judged, exactly once
    judged = pq.read_table(fm.path("judgements")).to_pylist()
    assert {j["quality"] for j in judged if j["doc_id"] == doc_rows["arxiv"][1]["id"]} == {"POOR"}
    assert all(j["reasons"] and j["prompt_version"].startswith("relevancy.v1@") for j in judged)

    gm = run_generation(cfg, docs, fm)
    assert gm is not None and gm.metrics["complete"] and gm.metrics["filter_applied"] == "before"
    generated = {t for t in titles if t != poor}
    assert llm_server.calls("qa") + llm_server.calls("search_terms") == {t: 1 for t in generated}
    assert set(llm_server.calls("search_terms")) == {r["title"] for r in doc_rows["cmr"]}  # CMR: terms only
    rows = read_shards(gm.path("generated"), GENERATED_SCHEMA).to_pylist()
    assert len(rows) == 20 and {r["doc_id"] for r in rows} >= {"dup-of-first"}
    # Cost accounting is real: the tokens in the outputs are the tokens the server reported.
    stats = llm_server.stats()
    assert (
        fm.metrics["prompt_tokens"] + gm.metrics["prompt_tokens"] == stats["prompt_tokens"]
        and fm.metrics["completion_tokens"] + gm.metrics["completion_tokens"] == stats["completion_tokens"]
    )
    assert gm.metrics["cost_usd"] == pytest.approx(
        (gm.metrics["prompt_tokens"] * 0.15 + gm.metrics["completion_tokens"] * 0.60) / 1e6
    )

    sm = run_gates(cfg, gm, docs, [])
    pairs = pq.read_table(sm.path("pairs"))
    assert pairs.schema.equals(PAIR_SCHEMA)
    table = pairs.to_pylist()
    assert {p["type"] for p in table} == {"question-answer", "search_term-document"}
    assert all(p["synthesized"] and p["model"] == "gpt-4o-mini" and p["negative"] is None for p in table)
    by_id = {r["id"]: r for s in doc_rows.values() for r in s}
    for p in table:
        if p["type"] == "question-answer":
            assert p["prompt_version"].startswith("qa_pairs.v1@")
            assert normalize_whitespace(p["positive"]) in normalize_whitespace(by_id[p["doc_id"]]["text"])
        else:
            assert p["positive"].startswith(by_id[p["doc_id"]]["title"])
    assert not [p for p in table if p["doc_id"] == "dup-of-first"]  # the duplicate document adds no pairs
    summary = json.loads(sm.path("summary").read_text())
    assert summary["documents"]["in"] == 21 and summary["documents"]["kept_by_filter"] == 20
    assert summary["pairs"]["kept"] == pairs.num_rows and summary["pairs"]["gates"][0]["gate"] == "length"
    assert summary["cost_usd"]["per_kept_pair"] == pytest.approx(
        summary["cost_usd"]["total"] / pairs.num_rows, rel=1e-3
    )
    assert set(summary["cost_usd"]["by_source"]) == {"arxiv", "cmr"}

    # A re-run pays nothing and produces identical manifests (stage reuse) ...
    before = stats["requests"]
    assert run_relevancy_filter(cfg, docs).content_hash == fm.content_hash
    assert run_generation(cfg, docs, fm).content_hash == gm.content_hash
    # ... and so does a new run directory sharing the answer cache (content-addressed, not run-addressed).
    cfg2 = make_cfg(tmp_path, llm_server.base_url, "run_name=other")
    fm2 = run_relevancy_filter(cfg2, docs)
    gm2 = run_generation(cfg2, docs, fm2)
    assert llm_server.stats()["requests"] == before
    assert (fm2.content_hash, gm2.content_hash) == (fm.content_hash, gm.content_hash)
    assert json.loads((Path(gm2.directory) / "run_stats.json").read_text())["engine"]["statuses"] == {
        "cached": 19
    }


def test_json_mode_recovers_from_every_fault(
    tmp_path: Path, docs: list[Manifest], doc_rows: dict[str, list[dict]]
) -> None:
    faults = Faults(
        rate_limit=1,
        retry_after=0.01,
        server_error=1,
        drop=1,
        slow=1,
        slow_latency=0.8,
        invalid=1,
        nonverbatim=1,
    )
    with OpenAICompatServer(faults=faults) as srv:
        cfg = make_cfg(
            tmp_path,
            srv.base_url,
            "generation.pairs.mode=json",
            "generation.endpoint.timeout_s=0.4",
            "generation.execution.concurrency=20",
        )
        fm = run_relevancy_filter(cfg, docs)
        gm = run_generation(cfg, docs, fm)
        assert fm.metrics["complete"] and gm.metrics["complete"] and gm.counts["salvaged"] == 0
        assert srv.wait_idle()
        qa = srv.stats()["by_task"]["qa"]
        # 429, 500, a dropped connection and a timeout are retried under Instructor; the invalid and the non-verbatim
        # answers are re-asked: the last of the paid answers is valid (the timed-out one is billed too). A loaded
        # machine may time out one more request: hence ">=".
        assert all(c["answered"] >= 4 and c["requests"] == c["answered"] + 3 for c in qa.values())
        assert all(
            c[f] == 1 for c in qa.values() for f in ("rate_limit", "server_error", "drop", "slow", "invalid")
        )
        run = json.loads((Path(gm.directory) / "run_stats.json").read_text())
        n = gm.counts["documents"]
        retries = run["spent"]["retries"]
        assert (retries["rate_limit"], retries["server_error"], retries["connection"]) == (n, n, n)
        assert retries["timeout"] >= n
        answered = sum(
            c["answered"] for t in ("qa", "search_terms") for c in srv.stats()["by_task"][t].values()
        )
        # Our count excludes the answers that arrived after the client had timed out.
        assert run["spent"]["requests"] == answered - retries["timeout"]


def test_salvaged_answers_meet_the_verbatim_gate(tmp_path: Path, docs: list[Manifest]) -> None:
    with OpenAICompatServer(faults=Faults(nonverbatim_always=True)) as srv:
        cfg = make_cfg(
            tmp_path, srv.base_url, "generation.filter.enabled=false", "generation.execution.max_reasks=1"
        )
        assert run_relevancy_filter(cfg, docs) is None
        gm = run_generation(cfg, docs, None)
        n_qa = sum(1 for c in srv.calls("qa").values() if c)
        assert gm.counts["salvaged"] == n_qa == 12 and gm.metrics["complete"]
        assert set(srv.calls("qa").values()) == {2}  # first answer + one re-ask, then salvaged
        sm = run_gates(cfg, gm, docs, [])
        verbatim = next(g for g in sm.metrics["gates"] if g["gate"] == "verbatim")
        assert verbatim["dropped"] == n_qa  # exactly the one paraphrased context per answer
        rejected = pq.read_table(sm.path("rejected")).to_pylist()
        assert {r["gate"] for r in rejected} == {"verbatim"} and all(
            "(paraphrased)" in r["positive"] for r in rejected
        )


def test_budget_cap_stops_cleanly_and_the_next_run_continues(
    tmp_path: Path, llm_server: OpenAICompatServer, docs: list[Manifest], doc_rows: dict[str, list[dict]]
) -> None:
    cfg = make_cfg(
        tmp_path,
        llm_server.base_url,
        "generation.filter.enabled=false",
        "generation.execution.budget_usd=0.002",
        "generation.endpoint.max_tokens=1024",  # each request reserves its worst case: prompt + max_tokens
    )
    gm = run_generation(cfg, docs, None)
    run = json.loads((Path(gm.directory) / "run_stats.json").read_text())
    assert run["spent"]["cost_usd"] <= 0.002 and run["spent"]["budget_hit"]
    assert gm.counts["skipped_budget"] > 0 and gm.counts["generated"] + gm.counts["skipped_budget"] == 20
    assert not gm.metrics["complete"] and gm.cache_key == ""  # incomplete: the next run re-enters the stage
    failures = [json.loads(x) for x in gm.path("failures").read_text().splitlines()]
    assert {f["cause"] for f in failures} == {"budget"} and len(failures) == gm.counts["skipped_budget"]
    done = gm.counts["generated"]
    assert done > 0 and sum(llm_server.calls().values()) == done  # nothing beyond what was kept was paid for

    cfg = make_cfg(
        tmp_path,
        llm_server.base_url,
        "generation.filter.enabled=false",
        "generation.endpoint.max_tokens=1024",
    )
    gm = run_generation(cfg, docs, None)
    assert gm.metrics["complete"] and gm.counts["generated"] == 20
    assert llm_server.calls() == {t: 1 for t in _all_titles(doc_rows)}  # no document paid twice


def test_secrets_never_reach_logs_or_artifacts(
    tmp_path: Path,
    docs: list[Manifest],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ST_TEST_LLM_KEY", SECRET)
    for name in CLIENT_LOGGERS:  # the clients' debug logs (request options, headers) included
        caplog.set_level(logging.DEBUG, logger=name)
    with OpenAICompatServer(api_key=SECRET, faults=Faults(rate_limit=1, retry_after=0.01, invalid=1)) as srv:
        cfg = make_cfg(tmp_path, srv.base_url)
        fm = run_relevancy_filter(cfg, docs)
        gm = run_generation(cfg, docs, fm)
        run_gates(cfg, gm, docs, [])
        assert srv.stats()["auth"] == {"bearer": srv.stats()["requests"]}  # the key was really sent
    out, err = capfd.readouterr()
    text = caplog.text + out + err + "".join(r.getMessage() + repr(r.args) for r in caplog.records)
    assert caplog.records and SECRET not in text
    for root in (tmp_path / "runs", tmp_path / "cache"):
        for f in root.rglob("*"):
            if f.is_file():
                assert SECRET.encode() not in f.read_bytes(), f
    assert SECRET not in json.dumps(cfg.model_dump(mode="json"))


def test_no_endpoint_skips_with_one_clear_line(
    tmp_path: Path, docs: list[Manifest], caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_cfg(tmp_path, None)
    assert not llm_configured(cfg)
    reason = llm_skip_reason(cfg)
    assert reason and "generation.endpoint.base_url" in reason and "\n" not in reason
    caplog.set_level(logging.INFO, logger="st_workflow")
    assert run_relevancy_filter(cfg, docs) is None and run_generation(cfg, docs, None) is None
    assert [r.getMessage() for r in caplog.records] == [reason, reason]
    assert not (tmp_path / "runs").exists()


def test_a_refused_key_stops_the_stage(
    tmp_path: Path, docs: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ST_TEST_LLM_KEY", "sk-wrong")
    with OpenAICompatServer(api_key="sk-right") as srv:
        cfg = make_cfg(tmp_path, srv.base_url, "generation.filter.enabled=false")
        with pytest.raises(EndpointFatalError, match="HTTP 401"):
            run_generation(cfg, docs, None)
        assert srv.stats()["requests"] <= cfg.generation.execution.concurrency  # no retry storm
    assert not (cfg.stage_dir("llm-pairs") / "manifest.json").exists()
    assert not list(cfg.stage_dir("llm-pairs").glob(".staging-*"))


def test_filter_after_generation(
    tmp_path: Path, llm_server: OpenAICompatServer, docs: list[Manifest], doc_rows: dict[str, list[dict]]
) -> None:
    poor = doc_rows["arxiv"][2]
    llm_server.qualities[poor["title"]] = "POOR"
    cfg = make_cfg(tmp_path, llm_server.base_url, "generation.filter_before_generation=false")
    fm = run_relevancy_filter(cfg, docs)
    gm = run_generation(cfg, docs, fm)
    assert gm.metrics["filter_applied"] == "after" and gm.counts["generated"] == 20  # the POOR one too
    assert llm_server.calls("relevancy")[poor["title"]] == 1  # judged once
    sm = run_gates(cfg, gm, docs, [])
    relevancy = sm.metrics["gates"][0]
    assert relevancy["gate"] == "relevancy" and relevancy["dropped"] > 0
    assert poor["id"] not in set(pq.read_table(sm.path("pairs")).column("doc_id").to_pylist())


def test_latex_braces_reach_the_model_unchanged(tmp_path: Path, llm_server: OpenAICompatServer) -> None:
    text = (
        "We compute the one-loop correction $\\delta m = \\mathcal{O}(\\epsilon^{{2}})$ for the Higgs mass in the "
        "minimal supersymmetric model. The template-like string {% raw %} and the comment marker {#1} appear in "
        "the macro definitions of the appendix, which lists every counterterm. Numerical results are given for "
        "stop masses between 500 GeV and 2 TeV, and the correction stays below four percent in that range. "
        "The renormalisation scale dependence is reduced by a factor of three compared with the tree level."
    )
    docs = [
        write_documents(
            tmp_path / "ingest" / "arxiv",
            [{"id": "x1", "source": "arxiv", "title": "MSSM Higgs mass", "text": text}],
            "arxiv",
        )
    ]
    cfg = make_cfg(tmp_path, llm_server.base_url, "generation.filter.enabled=false")
    gm = run_generation(cfg, docs, None)
    row = read_shards(gm.path("generated"), GENERATED_SCHEMA).to_pylist()[0]
    assert row["status"] == "ok" and llm_server.calls("qa") == {"MSSM Higgs mass": 1}  # no re-ask needed
    contexts = " ".join(p["context"] for p in row["question_context"])
    assert "{{2}}" in contexts and "{% raw %}" in contexts


def test_two_runs_in_one_run_directory_at_once(
    tmp_path: Path, docs: list[Manifest], doc_rows: dict[str, list[dict]]
) -> None:
    import threading

    with OpenAICompatServer(latency=0.05) as srv:
        cfg = make_cfg(tmp_path, srv.base_url)
        results: list[Manifest] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                fm = run_relevancy_filter(cfg, docs)
                gm = run_generation(cfg, docs, fm)
                results.append(run_gates(cfg, gm, docs, []))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        titles = set(_all_titles(doc_rows))
        assert srv.calls("relevancy") == dict.fromkeys(titles, 1)
        assert srv.calls("qa") + srv.calls("search_terms") == dict.fromkeys(titles, 1)
        assert results[0].content_hash == results[1].content_hash
        Manifest.read(cfg.stage_dir("llm-pairs")).verify(deep=True)
        Manifest.read(cfg.stage_dir("llm-gates")).verify(deep=True)
