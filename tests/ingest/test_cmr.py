"""CMR: UMM-C normalisation, recorded dumps, and live ingest against the replay server (paging, faults, incremental)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from st_workflow.config.ingest import CmrSource, RetryConfig
from st_workflow.ingest import ingest_to_dir
from st_workflow.ingest.cmr import CmrPager, umm_candidate
from st_workflow.ingest.httpclient import HttpSourceError, RetryingClient, retry_after_seconds
from st_workflow.testing.replay_server import ReplayServer

CMR = "pkg://samples/cmr/"
DUMP = CMR + "collections.umm_json.nasa-cmr-inventory.dedup1433.trimmed.jsonl"


def _ids(m) -> list[str]:
    return pq.read_table(m.path("documents"), columns=["id"])["id"].to_pylist()


def _live(srv: ReplayServer, retry: RetryConfig, **kw) -> CmrSource:
    return CmrSource(name="cmr", base_url=srv.cmr_url, retry=retry, **kw)


def test_umm_record_fields(samples_dir: Path) -> None:
    body = json.loads(
        (samples_dir / "cmr" / "collections.umm_json.MUR-JPL-L4-GLOB-v4.1.body.json").read_text()
    )
    c = umm_candidate(body["items"][0], "mur#1")
    assert c.id == "C1996881146-POCLOUD"
    assert c.title.startswith("GHRSST Level 4 MUR Global Foundation Sea Surface Temperature Analysis")
    meta = c.metadata
    assert meta["short_name"] == "MUR-JPL-L4-GLOB-v4.1" and meta["provider"] == "POCLOUD"
    assert meta["doi"] == "10.5067/GHGMR-4FJ04" and meta["version"] == "4.1"
    assert any(k.startswith("EARTH SCIENCE > OCEANS > OCEAN TEMPERATURE") for k in meta["science_keywords"])
    assert "Aqua (Earth Observing System, Aqua)" in meta["platforms"]
    assert "MODIS (Moderate-Resolution Imaging Spectroradiometer)" in meta["instruments"]
    assert c.url == "https://cmr.earthdata.nasa.gov/search/concepts/C1996881146-POCLOUD.html"


def test_recorded_dump_and_saved_responses(tmp_path: Path) -> None:
    m = ingest_to_dir(CmrSource(name="cmr", from_file=DUMP), tmp_path / "dump")
    assert m.counts == {"seen": 1433, "kept": 1430, "quarantined": 1, "duplicates": 2, "filtered": 0}
    assert m.metrics["reasons"] == {"duplicate_content": 2, "too_short": 1}
    resp = ingest_to_dir(
        CmrSource(
            name="c2", from_file=CMR + "collections.umm_json.nasa-cmr-inventory.ornldaac_daymet.ds.raw.json"
        ),
        tmp_path / "resp",
    )
    assert resp.counts["kept"] == 5
    atom = ingest_to_dir(
        CmrSource(
            name="c3", from_file=CMR + "collections.json.SWOT_L2_HR_RiverSP_reach_2.0.page_size1.body.json"
        ),
        tmp_path / "atom",
    )
    assert atom.counts["kept"] == 1 and _ids(atom)[0].startswith("C")


def test_live_ingest_follows_search_after_with_short_pages(tmp_path: Path, fast_retry: RetryConfig) -> None:
    with ReplayServer(max_page_items=350) as srv:
        src = _live(srv, fast_retry, page_size=500, params={"provider": "ORNL_DAAC"})
        m = ingest_to_dir(src, tmp_path / "cmr")
        expected = [i for i in srv.cmr.ids() if i.endswith("-ORNL_DAAC")]
        reqs = srv.requests_to("cmr")
    assert set(_ids(m)) <= set(expected) and len(_ids(m)) == len(set(_ids(m)))
    assert m.counts["fetched"] == len(expected) == 862
    assert m.counts["kept"] + m.counts["quarantined"] + m.counts["duplicates"] == 862
    # 862 items at 350 per page: 3 full-ish pages plus the empty page that ends the chain.
    assert len(reqs) == 4
    assert reqs[0].headers.get("cmr-search-after") is None
    assert all(r.headers["cmr-search-after"] for r in reqs[1:])
    assert all(r.headers["client-id"] == "st-workflow" and r.param("page_size") == "500" for r in reqs)
    assert all(r.param("provider") == "ORNL_DAAC" for r in reqs)


@pytest.mark.parametrize("fault", ["429", "503", "truncate", "drop", "stall", "partial"])
def test_faults_end_with_every_record_exactly_once(tmp_path: Path, fault: str) -> None:
    retry = RetryConfig(max_attempts=4, backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=1.0)
    with ReplayServer() as srv:
        # The first page succeeds, then the next two requests fail: a fault in the middle of the chain.
        srv.inject(fault, route="cmr", times=2, after=1, retry_after=0, stall_s=3.0)
        m = ingest_to_dir(_live(srv, retry, page_size=100, params={"provider": "PODAAC"}), tmp_path / "cmr")
        faulted = [r for r in srv.requests_to("cmr") if r.fault]
        served = [i for i in srv.cmr.ids() if i.endswith("-PODAAC")]
    assert len(faulted) == 2 and {r.fault for r in faulted} == {fault}
    ids = _ids(m)
    assert len(ids) == len(set(ids)) and set(ids) <= set(served)
    # Every record exactly once: all 341 served records kept, none repeated, none lost.
    assert m.counts["fetched"] == len(served) == 341 == m.counts["kept"] == len(ids)
    assert m.counts["duplicates"] == 0 and m.counts["quarantined"] == 0


def test_retry_after_is_honoured(fast_retry: RetryConfig) -> None:
    retry = RetryConfig(max_attempts=3, backoff_base_s=0.01, backoff_max_s=5.0, timeout_s=3.0)
    with ReplayServer() as srv, RetryingClient(retry) as client:
        srv.inject("429", route="cmr", retry_after=1)
        pager = CmrPager(client, srv.cmr_url, params=[("concept_id", srv.cmr.ids()[0])], page_size=10)
        items = list(pager)
        reqs = srv.requests_to("cmr")
    assert len(items) == 1 and reqs[0].status == 429 and reqs[1].status == 200
    assert reqs[1].at - reqs[0].at >= 0.9


def test_giving_up_and_client_errors_name_the_problem(fast_retry: RetryConfig) -> None:
    retry = RetryConfig(max_attempts=2, backoff_base_s=0.01, backoff_max_s=0.02, timeout_s=3.0)
    with ReplayServer() as srv, RetryingClient(retry) as client:
        srv.inject("503", route="cmr", times=2)
        with pytest.raises(HttpSourceError, match=r"after 2 attempts: HTTP 503") as e:
            list(CmrPager(client, srv.cmr_url))
        assert e.value.transient
        with pytest.raises(HttpSourceError, match=r"HTTP 400 .*Parameter \[bogus\] was not recognized") as e:
            list(CmrPager(client, srv.cmr_url, params=[("bogus", "1")]))
        assert not e.value.transient


def test_recorded_granule_search_after_chain(fast_retry: RetryConfig) -> None:
    """The real three-page MOD02QKM chain: each response's CMR-Search-After is the next request's header."""
    with ReplayServer() as srv, RetryingClient(fast_retry) as client:
        pager = CmrPager(
            client, srv.cmr_url, "search/granules.umm_json", [("short_name", "MOD02QKM")], page_size=2
        )
        items = list(pager)
        sent = [r.headers.get("cmr-search-after") for r in srv.requests_to("cmr")]
    assert len(items) == 6 and pager.pages == 4 and pager.hits == 1404440
    assert sent == [
        None,
        '["laads",951351000000,1462754407]',
        '["laads",951351600000,1462754405]',
        '["laads",951352200000,1462754236]',
    ]


def test_incremental_ingest_asks_only_for_changes_and_merges(
    tmp_path: Path, fast_retry: RetryConfig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TEST_EARTHDATA_TOKEN", "s3cret-token-value")
    with ReplayServer() as srv:
        src = _live(srv, fast_retry, page_size=700, incremental_overlap_s=0)
        src.token.env = "TEST_EARTHDATA_TOKEN"
        out = tmp_path / "cmr"
        with caplog.at_level(logging.DEBUG):
            first = ingest_to_dir(src, out)
        state = json.loads((out / "state.json").read_text())
        assert state["watermark"] == max(srv.cmr.get(i)["meta"]["revision-date"] for i in srv.cmr.ids())
        assert srv.requests_to("cmr")[0].headers["authorization"] == "Bearer s3cret-token-value"
        assert srv.requests_to("cmr")[0].param("revision_date[]") is None

        # Nothing new: one small request with revision_date[], the manifest (and its hash) untouched.
        n_before = len(srv.requests)
        again = ingest_to_dir(src, out)
        new_reqs = [r for r in srv.requests[n_before:] if r.path == "/search/collections.umm_json"]
        # The page with the boundary record, then the empty page that ends the chain.
        assert len(new_reqs) == 2
        assert {r.param("revision_date[]") for r in new_reqs} == {f"{state['watermark']},"}
        # And the deletions since the same date: one request, XML, the date as the only parameter.
        gone_reqs = [r for r in srv.requests[n_before:] if r.path == "/search/deleted-collections"]
        assert [r.params for r in gone_reqs] == [[("revision_date", state["watermark"])]]
        assert gone_reqs[0].headers["accept"] == "application/xml" and gone_reqs[0].status == 200
        assert again == first and again.content_hash == first.content_hash

        # A revision of one collection and a brand-new one arrive.
        revised = srv.cmr.get("C179003302-ORNL_DAAC")  # the one quarantined for a too-short abstract
        revised["umm"]["Abstract"] = "A proper abstract long enough to pass the bounds this time."
        srv.cmr.put(revised)
        kept_one = srv.cmr.get(srv.cmr.ids()[5])
        kept_one["umm"]["Abstract"] += " Revised in a later revision."
        srv.cmr.put(kept_one)
        fresh = srv.cmr.get(srv.cmr.ids()[0])
        fresh["meta"]["concept-id"] = "C9999999999-TEST"
        fresh["umm"]["EntryTitle"] = "A brand new collection"
        fresh["umm"]["Abstract"] = "Brand new collection abstract, added after the first ingest."
        srv.cmr.put(fresh)
        merged = ingest_to_dir(src, out)
        # Only the three changed records (plus the one at the old watermark, asked again) were transferred.
        assert merged.counts["fetched"] == 4
        assert merged.counts["added"] == 2 and merged.counts["updated"] == 1
        assert merged.counts["kept"] == first.counts["kept"] + 2
        assert merged.counts["quarantined"] == first.counts["quarantined"] - 1
        ids = _ids(merged)
        assert ids == sorted(ids) and len(ids) == len(set(ids))
        docs = {r["id"]: r for r in pq.read_table(merged.path("documents")).to_pylist()}
        assert docs["C179003302-ORNL_DAAC"]["text"].startswith("A proper abstract")
        assert docs[kept_one["meta"]["concept-id"]]["text"].endswith("Revised in a later revision.")

        # A full refresh of the same server state writes byte-identical documents.
        full = ingest_to_dir(src, tmp_path / "full", full_refresh=True)
        assert full.files["documents"].sha256 == merged.files["documents"].sha256
    # The token never reaches logs, manifests or state.
    for text in [caplog.text, (out / "manifest.json").read_text(), (out / "state.json").read_text()]:
        assert "s3cret-token-value" not in text


def test_failed_run_keeps_the_previous_output(tmp_path: Path) -> None:
    retry = RetryConfig(max_attempts=2, backoff_base_s=0.01, backoff_max_s=0.02, timeout_s=3.0)
    with ReplayServer(max_page_items=500) as srv:
        src = _live(srv, retry, page_size=500, incremental=False)
        out = tmp_path / "cmr"
        first = ingest_to_dir(src, out)
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        srv.inject("503", route="cmr", times=50, after=1)  # the first page succeeds, then the server breaks
        with pytest.raises(HttpSourceError):
            ingest_to_dir(src, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    assert first.is_valid()


def test_retry_after_forms() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412480.0) == 30.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412500.0) == 0.0
    assert retry_after_seconds(None) is None and retry_after_seconds("later") is None


def test_incremental_ingest_removes_collections_cmr_deleted(tmp_path: Path, fast_retry: RetryConfig) -> None:
    with ReplayServer() as srv:
        src = _live(srv, fast_retry, page_size=500, params={"provider": "PODAAC"})
        out = tmp_path / "cmr"
        first = ingest_to_dir(src, out)
        ours = sorted(_ids(first))
        gone, back = ours[3], ours[10]
        elsewhere = next(i for i in srv.cmr.ids() if i.endswith("-ORNL_DAAC"))
        srv.cmr.delete(gone)  # deleted for good
        srv.cmr.delete(elsewhere)  # deleted, but not one of this source's collections
        record = srv.cmr.get(back)
        srv.cmr.delete(back)
        srv.cmr.put(record)  # deleted and ingested again: CMR does not list it as deleted
        merged = ingest_to_dir(src, out)
        full = ingest_to_dir(src, tmp_path / "full", full_refresh=True)
    ids = _ids(merged)
    assert gone not in ids and back in ids and elsewhere not in ids
    assert merged.counts["deleted"] == 1 and merged.counts["kept"] == first.counts["kept"] - 1
    # The merged output is what a full listing of the same server state gives.
    assert merged.files["documents"].sha256 == full.files["documents"].sha256
