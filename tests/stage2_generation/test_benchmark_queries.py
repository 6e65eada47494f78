"""LLM-written benchmark queries against the local server: real HTTP, real Instructor, the shared LLM machinery."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
from pathlib import Path

import pytest

from st_workflow.schemas import content_hash, normalize_for_match
from st_workflow.stage2_generation import (
    BenchmarkQuery,
    EndpointFatalError,
    QueryDoc,
    benchmark_query_fingerprint,
    write_benchmark_queries,
)
from st_workflow.stage2_generation.benchmark_queries import (
    FAILURES_FILE,
    NAMESPACE,
    QUERIES_FILE,
    RUN_STATS_FILE,
)
from st_workflow.stage2_generation.models import vague_reference
from st_workflow.testing.openai_server import Faults, OpenAICompatServer

from .conftest import make_cfg

_WORD = re.compile(r"[a-z][a-z0-9\-]{2,}")


def _docs(doc_rows: dict[str, list[dict]]) -> list[QueryDoc]:
    return [
        QueryDoc(
            source=r["source"],
            id=r["id"],
            title=r["title"],
            text=r["text"],
            content_hash=content_hash(r["title"], r["text"]),
        )
        for rows in doc_rows.values()
        for r in rows
    ]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _cache_entries(cfg) -> list[dict]:
    """Every stored answer; each must be whole JSON (answers are written atomically)."""
    root = cfg.cache_path / "llm" / NAMESPACE
    assert not [p for p in root.rglob("*") if ".tmp" in p.name]
    return [json.loads(p.read_text(encoding="utf-8")) for p in root.rglob("*.json")]


def _assert_good_query(query: str, doc: QueryDoc, lo: int = 10, hi: int = 300) -> None:
    assert lo <= len(query) <= hi, query
    assert normalize_for_match(query).strip(" ?") != normalize_for_match(doc.title), query
    assert normalize_for_match(doc.title) not in normalize_for_match(query), query  # not the title wrapped
    assert vague_reference(query) is None, query  # standalone
    body_words = set(_WORD.findall(doc.text.lower()))
    assert len(set(_WORD.findall(query.lower())) & body_words) >= 2, query  # about the document's own text


def test_every_document_gets_a_grounded_query_and_a_rerun_is_free(
    tmp_path: Path, llm_server: OpenAICompatServer, doc_rows: dict[str, list[dict]]
) -> None:
    docs = _docs(doc_rows)
    dup = dataclasses.replace(docs[0], id="dup-of-first")  # same content: shares the first one's call
    cfg = make_cfg(tmp_path, llm_server.base_url)
    work = tmp_path / "work"

    res = write_benchmark_queries(cfg, [*docs, dup], work_dir=work)
    assert res.complete and not res.failures and res.skipped is None
    assert set(res.queries) == {d.key for d in [*docs, dup]}
    for d in docs:
        _assert_good_query(res.queries[d.key], d)
    assert res.queries[dup.key] == res.queries[docs[0].key]
    assert len(set(res.queries.values())) == len(docs)  # one distinct query per distinct document
    assert llm_server.calls("benchmark_query") == {d.title: 1 for d in docs}  # the duplicate cost nothing
    assert res.prompt_version.startswith("benchmark_query.v1@") and res.model == "gpt-4o-mini"
    # Accounting is real: the tokens we counted are the tokens the server reported, priced at gpt-4o-mini's rate.
    stats = llm_server.stats()
    u = res.usage
    assert (u["calls"], u["new"], u["cached"], u["distinct"], u["documents"]) == (20, 20, 0, 20, 21)
    assert (u["prompt_tokens"], u["completion_tokens"]) == (
        stats["prompt_tokens"],
        stats["completion_tokens"],
    )
    assert u["cost_usd"] == pytest.approx(
        (u["prompt_tokens"] * 0.15 + u["completion_tokens"] * 0.60) / 1e6, abs=1e-6
    )
    assert u["produced"]["prompt_tokens"] == u["prompt_tokens"]
    rows = _jsonl(work / QUERIES_FILE)
    assert [(r["source"], r["doc_id"]) for r in rows] == sorted(res.queries)
    assert {(r["source"], r["doc_id"]): r["query"] for r in rows} == res.queries
    assert _jsonl(work / FAILURES_FILE) == []
    assert len(_cache_entries(cfg)) == 20

    # A second call pays nothing (not one HTTP request) and gives the same queries and records ...
    records = (work / QUERIES_FILE).read_bytes()
    again = write_benchmark_queries(cfg, [*docs, dup], work_dir=work)
    assert llm_server.stats()["requests"] == stats["requests"]
    assert again.queries == res.queries and again.complete
    assert (again.usage["calls"], again.usage["cost_usd"], again.usage["cached"]) == (0, 0.0, 20)
    assert again.usage["produced"] == res.usage["produced"] and (work / QUERIES_FILE).read_bytes() == records
    assert json.loads((work / RUN_STATS_FILE).read_text())["engine"]["statuses"] == {"cached": 20}
    # ... and so does another run directory sharing the answer cache (content-addressed, not run-addressed).
    other = make_cfg(tmp_path, llm_server.base_url, "run_name=other")
    assert write_benchmark_queries(other, docs, work_dir=tmp_path / "w2").queries == {
        d.key: res.queries[d.key] for d in docs
    }
    assert llm_server.stats()["requests"] == stats["requests"]
    # A different prompt setting is a different answer: it is asked again.
    assert benchmark_query_fingerprint(cfg) != benchmark_query_fingerprint(
        make_cfg(tmp_path, llm_server.base_url, "generation.benchmark_queries.max_query_chars=200")
    )


def test_bad_answers_are_re_asked_in_json_mode(tmp_path: Path, doc_rows: dict[str, list[dict]]) -> None:
    """A 429 is retried under Instructor; a schema violation and a copy of the title are re-asked."""
    docs = _docs(doc_rows)[:6]
    faults = Faults(rate_limit=1, retry_after=0.01, invalid=1, nonverbatim=1, tasks=("benchmark_query",))
    with OpenAICompatServer(faults=faults) as srv:
        cfg = make_cfg(tmp_path, srv.base_url, "generation.benchmark_queries.mode=json")
        res = write_benchmark_queries(cfg, docs, work_dir=tmp_path / "work")
        assert res.complete and set(res.queries) == {d.key for d in docs}
        for d in docs:
            _assert_good_query(res.queries[d.key], d)
        per_doc = srv.stats()["by_task"]["benchmark_query"]
        assert per_doc == {
            d.title: {"requests": 4, "rate_limit": 1, "invalid": 1, "nonverbatim": 1, "answered": 3}
            for d in docs
        }
        # The re-asks were paid for, and counted.
        assert res.usage["requests"] == 3 * len(docs) and res.usage["retries"] == {"rate_limit": len(docs)}


def test_answers_that_stay_invalid_are_failures_and_keep_their_title(
    tmp_path: Path, doc_rows: dict[str, list[dict]]
) -> None:
    docs = _docs(doc_rows)[:3]
    with OpenAICompatServer(faults=Faults(nonverbatim_always=True)) as srv:  # every answer copies the title
        cfg = make_cfg(tmp_path, srv.base_url, "generation.execution.max_reasks=1")
        res = write_benchmark_queries(cfg, docs, work_dir=tmp_path / "work")
        assert not res.complete and res.queries == {}
        assert set(res.failures) == {d.key for d in docs}
        assert all(r.startswith("invalid_output:") and "title" in r for r in res.failures.values())
        assert srv.calls("benchmark_query") == {d.title: 2 for d in docs}  # first answer + one re-ask
    assert [f["cause"] for f in _jsonl(tmp_path / "work" / FAILURES_FILE)] == ["invalid_output"] * 3
    assert _cache_entries(cfg) == []  # nothing invalid is stored: the next run asks again


def test_budget_cap_leaves_an_incomplete_result_and_the_next_call_continues(
    tmp_path: Path, llm_server: OpenAICompatServer, doc_rows: dict[str, list[dict]]
) -> None:
    docs = _docs(doc_rows)
    probe = write_benchmark_queries(
        make_cfg(tmp_path, llm_server.base_url, f"cache_dir={tmp_path / 'probe-cache'}"),
        docs,
        work_dir=tmp_path / "p",
    )
    cap = probe.usage["total_tokens"] // 2
    llm_server.reset()

    # One call at a time: which documents fit the cap is then the same on every run.
    cfg = make_cfg(
        tmp_path,
        llm_server.base_url,
        f"generation.execution.budget_tokens={cap}",
        "generation.execution.concurrency=1",
    )
    work = tmp_path / "work"
    res = write_benchmark_queries(cfg, docs, work_dir=work)
    assert not res.complete and res.usage["budget_hit"] and res.usage["total_tokens"] <= cap
    assert res.queries and res.failures and not set(res.queries) & set(res.failures)
    assert set(res.queries) | set(res.failures) == {d.key for d in docs}
    assert all(r.startswith("budget:") for r in res.failures.values())
    assert res.usage["skipped_budget"] == len(res.failures)
    # No partial corruption: every query returned is whole and valid, stored, and written; every failure recorded.
    by_key = {d.key: d for d in docs}
    for k, q in res.queries.items():
        assert q == probe.queries[k]
        _assert_good_query(q, by_key[k])
    assert len(_cache_entries(cfg)) == len(res.queries)
    assert {(r["source"], r["doc_id"]) for r in _jsonl(work / QUERIES_FILE)} == set(res.queries)
    assert {(r["source"], r["doc_id"]) for r in _jsonl(work / FAILURES_FILE)} == set(res.failures)
    assert sum(llm_server.calls().values()) == len(res.queries)  # nothing was paid for beyond what was kept

    cfg = make_cfg(tmp_path, llm_server.base_url)
    done = write_benchmark_queries(cfg, docs, work_dir=work)
    assert done.complete and done.queries == probe.queries
    assert (done.usage["cached"], done.usage["new"]) == (len(res.queries), len(res.failures))
    assert llm_server.calls("benchmark_query") == {d.title: 1 for d in docs}  # no document paid twice


def test_an_unreachable_endpoint_records_every_document_as_failed(
    tmp_path: Path, doc_rows: dict[str, list[dict]]
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    docs = _docs(doc_rows)[:3]
    cfg = make_cfg(tmp_path, f"http://127.0.0.1:{port}/v1", "generation.execution.max_attempts=2")
    res = write_benchmark_queries(cfg, docs, work_dir=tmp_path / "work")
    assert not res.complete and res.queries == {}
    assert set(res.failures) == {d.key for d in docs}
    assert all(r.startswith("connection:") for r in res.failures.values()), res.failures
    assert res.usage["retries"] == {"connection": 2 * len(docs)} and res.usage["failed"] == len(docs)


def test_a_refused_key_stops_with_a_clear_error(
    tmp_path: Path, doc_rows: dict[str, list[dict]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ST_TEST_LLM_KEY", "sk-wrong")
    with OpenAICompatServer(api_key="sk-right") as srv:
        cfg = make_cfg(tmp_path, srv.base_url)
        with pytest.raises(EndpointFatalError, match="HTTP 401"):
            write_benchmark_queries(cfg, _docs(doc_rows), work_dir=tmp_path / "work")
        assert srv.stats()["requests"] <= cfg.generation.execution.concurrency  # no retry storm
    assert not (tmp_path / "work").exists()


def test_no_endpoint_or_disabled_asks_nothing(
    tmp_path: Path, llm_server: OpenAICompatServer, doc_rows: dict[str, list[dict]]
) -> None:
    docs = _docs(doc_rows)
    for cfg in (
        make_cfg(tmp_path, None),
        make_cfg(tmp_path, llm_server.base_url, "generation.benchmark_queries.enabled=false"),
    ):
        res = write_benchmark_queries(cfg, docs, work_dir=tmp_path / "work")
        assert res.skipped and not res.complete and res.queries == {} and res.failures == {}
        assert res.usage["calls"] == 0 and res.usage["documents"] == len(docs)
    assert (
        "generation.endpoint.base_url"
        in write_benchmark_queries(make_cfg(tmp_path, None), docs, work_dir=tmp_path).skipped
    )
    assert llm_server.stats()["requests"] == 0 and not (tmp_path / "work").exists()


def test_a_document_given_twice_must_be_the_same() -> None:
    from st_workflow.config import load_config

    a = QueryDoc(source="cmr", id="C1", title="SWOT", text="River heights.", content_hash="h1")
    b = QueryDoc(source="cmr", id="C1", title="SWOT", text="Lake heights.", content_hash="h2")
    cfg = load_config(None, ["generation.endpoint.base_url=http://127.0.0.1:9/v1"])
    with pytest.raises(ValueError, match="cmr:C1 is given twice"):
        write_benchmark_queries(cfg, [a, b], work_dir=Path("/nonexistent"))


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("", "empty"),
        ("  ''  ", "empty"),
        ("SWOT?", "at least 10"),
        ("x" * 301, "at most 300"),
        (
            "above: airswot  ka-band radar over surface waters of alaska and canada, 2017?",
            "repeats the document title",
        ),
        (
            "What is ABoVE: AirSWOT Ka-band Radar over Surface Waters of Alaska and Canada, 2017?",
            "whole document title",
        ),
        ("What does this dataset measure over Alaska?", "'this dataset'"),
        ("Which radar did the authors fly over Alaska?", "'the authors'"),
    ],
)
def test_query_validator_refuses_with_a_message_for_the_model(query: str, problem: str) -> None:
    ctx = {
        "title": "ABoVE: AirSWOT Ka-band Radar over Surface Waters of Alaska and Canada, 2017",
        "query_chars": (10, 300),
        "title_copy_min_words": 4,
    }
    with pytest.raises(ValueError, match=re.escape(problem)):
        BenchmarkQuery.model_validate({"query": query}, context=ctx)


def test_query_validator_accepts_and_normalises() -> None:
    ctx = {"title": "SWOT", "query_chars": (10, 300), "title_copy_min_words": 4}
    ok = BenchmarkQuery.model_validate({"query": ' "When did the  SWOT mission launch?" '}, context=ctx)
    assert (
        ok.query == "When did the SWOT mission launch?"
    )  # a short title (a mission name) may be named whole
    long_title = {**ctx, "title": "Lagrangian quantum field theory in momentum picture"}
    q = "Lagrangian quantum field theory commutation relations for free fields"
    assert BenchmarkQuery.model_validate({"query": q}, context=long_title).query == q
