"""NASA ADS: the client against the local ADS server (paging, ties, auth, rate limits, watermark reuse), and ADS
through the generic ingest stage and natural pairs, exactly as the other sources run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from st_workflow.config import load_config
from st_workflow.config.base import SecretRef
from st_workflow.config.ingest import AdsSource, RetryConfig
from st_workflow.ingest import build_natural_pairs, ingest_source, ingest_to_dir
from st_workflow.ingest.httpclient import HttpSourceError, RetryingClient
from st_workflow.ingest.sources.ads import AdsPager, AdsRateLimitError, paging_sort
from st_workflow.testing.ads import AdsServer, sample_docs

TOKEN = "s3cret-ads-token-for-tests"
ENV = "ST_TEST_ADS_TOKEN"


@pytest.fixture
def ads() -> AdsServer:
    with AdsServer(token=TOKEN) as srv:
        yield srv


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(ENV, TOKEN)
    return ENV


def _source(srv: AdsServer, **kw) -> AdsSource:
    retry = kw.pop("retry", RetryConfig(max_attempts=4, backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=5))
    return AdsSource(name="ads", base_url=srv.base_url, token=SecretRef(env=ENV), retry=retry, **kw)


def _client(retry: RetryConfig | None = None) -> RetryingClient:
    return RetryingClient(
        retry or RetryConfig(max_attempts=4, backoff_base_s=0.01, backoff_max_s=0.05),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )


def _pager(srv: AdsServer, client: RetryingClient, *, rows: int = 7, sort: str = "date desc", q: str = "*:*"):
    return AdsPager(client, srv.base_url, q, ["bibcode", "title", "date"], paging_sort(sort), rows)


# ================================================================================================ the server & client
def test_fixture_records_are_real_arxiv_records_with_date_ties() -> None:
    docs = sample_docs()
    assert len(docs) > 50
    assert len({d["bibcode"] for d in docs}) == len(docs)
    assert all(d["bibcode"][4:9] == "arXiv" and len(d["bibcode"]) == 19 for d in docs)
    dates = [d["date"] for d in docs]
    assert len(set(dates)) < len(dates)  # ties on the sort field, so the bibcode tiebreaker matters


def test_auth_401_without_or_with_a_wrong_token(ads: AdsServer) -> None:
    url = f"{ads.base_url}/search/query"
    assert httpx.get(url, params={"q": "*:*"}).status_code == 401
    assert httpx.get(url, params={"q": "*:*"}, headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = httpx.get(url, params={"q": "*:*"}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["response"]["numFound"] == len(ads.docs)


def test_cursor_paging_delivers_every_record_once_in_sort_order_with_ties_broken_by_bibcode(
    ads: AdsServer,
) -> None:
    with _client() as client:
        pager = _pager(ads, client, rows=7)
        got = [doc for doc, _ in pager]
    expected = sorted(ads.docs.values(), key=lambda d: (d["date"], d["bibcode"]), reverse=True)
    assert [d["bibcode"] for d in got] == [d["bibcode"] for d in expected]
    assert pager.hits == len(ads.docs) == pager.items
    assert pager.pages == -(-len(ads.docs) // 7) + 1  # the last request gets the unchanged cursor back
    assert all(set(d) == {"bibcode", "title", "date"} for d in got)  # fl projection
    marks = [r.param("cursorMark") for r in ads.search_requests()]
    assert marks[0] == "*" and len(set(marks)) == len(marks)


def test_q_filters_simple_fields_and_ranges(ads: AdsServer) -> None:
    some = sorted(ads.docs.values(), key=lambda d: d["entry_date"])[len(ads.docs) // 2]["entry_date"]
    with _client() as client:
        newer = [d for d, _ in _pager(ads, client, q=f'(*:*) AND entry_date:["{some}" TO *]')]
        y2007 = [d for d, _ in _pager(ads, client, q="year:2007 abs:plasma")]
    assert len(newer) == sum(1 for d in ads.docs.values() if d["entry_date"] >= some)
    assert {d["bibcode"] for d in y2007} == {
        b for b, d in ads.docs.items() if d["year"] == "2007" and "plasma" in d["abstract"].lower()
    }


def test_a_cursor_without_a_unique_last_sort_field_is_refused(ads: AdsServer) -> None:
    with _client() as client, pytest.raises(HttpSourceError, match="uniqueKey") as e:
        list(AdsPager(client, ads.base_url, "*:*", ["bibcode"], "date desc", 10))
    assert e.value.status == 400
    assert paging_sort("date desc") == "date desc,bibcode desc"


def test_rate_limit_headers_decrement_and_429_waits_for_the_reset() -> None:
    with AdsServer(token=TOKEN, rate_limit=3, window_s=1.0) as srv:
        url, auth = f"{srv.base_url}/search/query", {"Authorization": f"Bearer {TOKEN}"}
        remaining = [
            httpx.get(url, params={"q": "*:*"}, headers=auth).headers["X-RateLimit-Remaining"]
            for _ in range(3)
        ]
        assert remaining == ["2", "1", "0"]
        exhausted = httpx.get(url, params={"q": "*:*"}, headers=auth)
        assert exhausted.status_code == 429 and int(exhausted.headers["X-RateLimit-Reset"]) > 0
        # The pager starts on an exhausted quota: it waits for the reset (429), then whenever Remaining hits 0.
        retry = RetryConfig(max_attempts=4, backoff_base_s=0.01, backoff_max_s=5.0)
        with _client(retry) as client:
            got = [d for d, _ in _pager(srv, client, rows=40)]
        assert len(got) == len(srv.docs)
        statuses = [r.status for r in srv.search_requests()[4:]]
        assert statuses[0] == 429 and statuses.count(429) == 1 and set(statuses[1:]) == {200}


def test_a_quota_that_resets_later_than_the_retry_policy_waits_fails_clearly() -> None:
    with AdsServer(token=TOKEN, rate_limit=1, window_s=3600) as srv, _client() as client:
        with pytest.raises(AdsRateLimitError, match="resets at epoch"):
            list(_pager(srv, client, rows=10))
        with pytest.raises(HttpSourceError, match="429"):
            list(_pager(srv, client, rows=10))


# ================================================================================================ through the stage
def test_ads_ingests_through_the_generic_stage_with_watermark_reuse(
    ads: AdsServer, token_env: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "ads"
    src = _source(ads, rows=25)
    m1 = ingest_to_dir(src, out)
    n = len(ads.docs)
    assert m1.counts["kept"] == n and m1.counts["added"] == n and m1.metrics["kind"] == "ads"
    assert m1.metrics["listing"] == {"expected": n, "received": n, "shortfall": 0, "complete": True}
    state = json.loads((out / "state.json").read_text())
    assert state["watermark"] == max(d["entry_date"] for d in ads.docs.values())
    rows = pq.read_table(out / "documents.parquet").to_pylist()
    one = next(r for r in rows if r["id"] == next(iter(ads.docs)))
    doc = ads.docs[one["id"]]
    assert one["title"] == doc["title"][0] and one["url"].endswith(f"/abs/{doc['bibcode']}/abstract")

    # Nothing new: the run asks only from the watermark on, and the output is returned untouched.
    before = len(ads.search_requests())
    m2 = ingest_to_dir(src, out)
    assert m2.content_hash == m1.content_hash
    q = ads.search_requests()[before].param("q")
    assert q == f'(*:*) AND entry_date:["{state["watermark"]}" TO *]'

    # A new record past the watermark is added; the rest is carried over.
    new = dict(
        next(iter(ads.docs.values())), bibcode="2030arXiv3001.00001Z", entry_date="2030-01-01T00:00:00Z"
    )
    new["title"] = ["A brand new survey of exoplanet atmospheres"]
    ads.put(new)
    m3 = ingest_to_dir(src, out)
    assert m3.counts["added"] == 1 and m3.counts["updated"] == 0 and m3.counts["kept"] == n + 1
    assert json.loads((out / "state.json").read_text())["watermark"] == "2030-01-01T00:00:00Z"

    # The token is sent, but never logged or written.
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in ads.search_requests())
    written = "".join(p.read_text(errors="replace") for p in out.iterdir() if p.suffix in (".json", ".jsonl"))
    assert TOKEN not in caplog.text and TOKEN not in written


def test_ads_without_a_token_fails_naming_the_variable(ads: AdsServer, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(HttpSourceError, match=ENV):
        ingest_to_dir(_source(ads), tmp_path / "ads")


def test_ads_pipeline_source_gives_title_to_abstract_natural_pairs(
    ads: AdsServer, token_env: str, tmp_path: Path
) -> None:
    cfg_file = tmp_path / "ads.yaml"
    cfg_file.write_text(
        f"runs_dir: {tmp_path / 'runs'}\n"
        "ingest:\n  sources:\n"
        f"    - {{name: ads, kind: ads, base_url: '{ads.base_url}', token: {{env: {ENV}}}, rows: 50}}\n"
        "pairs:\n  holdout: {enabled: false}\n"
    )
    cfg = load_config(cfg_file)
    docs = ingest_source(cfg, "ads")
    pairs = build_natural_pairs(cfg, [docs], None)
    rows = pq.read_table(pairs.path("pairs")).to_pylist()
    by_id = {r["id"]: r for r in pq.read_table(docs.path("documents")).to_pylist()}
    assert rows and {r["type"] for r in rows} == {"title-abstract"} and {r["source"] for r in rows} == {"ads"}
    for r in rows:
        assert r["anchor"] == by_id[r["doc_id"]]["title"]
        assert r["positive"] == by_id[r["doc_id"]]["text"][: len(r["positive"])]


def test_the_ads_command_comes_from_the_registry(
    ads: AdsServer, token_env: str, tmp_path: Path, capsys
) -> None:
    from st_workflow.cli import main

    out = tmp_path / "cli"
    args = [
        "ingest",
        "ads",
        "--base-url",
        ads.base_url,
        "--token-env",
        ENV,
        "--q",
        "year:2007",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    n = sum(1 for d in ads.docs.values() if d["year"] == "2007")
    assert f"kept {n}," in capsys.readouterr().out
    assert main(args) == 0  # incremental re-run: nothing new, output untouched


def test_with_cursor_field_indexed_a_corrected_record_counts_as_updated(
    ads: AdsServer, token_env: str, tmp_path: Path
) -> None:
    out = tmp_path / "ads"
    src = _source(ads, cursor_field="indexed", rows=100)
    first = ingest_to_dir(src, out)
    bibcode = sorted(ads.docs)[0]
    ads.revise(
        bibcode, "2031-05-05T00:00:00Z", abstract="A corrected abstract that ADS re-indexed last night."
    )
    second = ingest_to_dir(src, out)
    assert second.counts["added"] == 0 and second.counts["updated"] == 1
    assert second.counts["kept"] == first.counts["kept"]
    rows = {r["id"]: r for r in pq.read_table(out / "documents.parquet").to_pylist()}
    assert rows[bibcode]["text"].startswith("A corrected abstract")


def test_transient_server_faults_are_retried(ads: AdsServer, token_env: str, tmp_path: Path) -> None:
    ads.faults.inject("503", route="ads", after=1)
    ads.faults.inject("truncate", route="ads", after=1)
    m = ingest_to_dir(_source(ads, rows=30), tmp_path / "ads")
    assert m.counts["kept"] == len(ads.docs) and ads.faults.pending() == 0
    assert {r.fault for r in ads.search_requests()} >= {"503", "truncate"}
