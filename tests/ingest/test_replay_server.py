"""The replay server itself speaks the real protocols: recorded responses, CMR errors, PDS paging, Atom."""

from __future__ import annotations

import json

import httpx
import pytest

from st_workflow.testing.replay_server import ReplayServer


def test_recorded_and_searched_cmr_responses(shared_replay: ReplayServer) -> None:
    base = shared_replay.cmr_url
    r = httpx.get(
        f"{base}/search/collections.umm_json",
        params={"provider": "POCLOUD", "cloud_hosted": "true", "page_size": "20"},
    )
    assert r.status_code == 200 and r.headers["CMR-Hits"] == "834"  # the recorded response, headers and all
    assert r.headers["CMR-Search-After"] == '[0.0,400.0,"CYGNSS_L2_V3.1","3.1",2183155461,16]'
    assert len(r.json()["items"]) == 5
    r = httpx.get(f"{base}/search/collections.umm_json", params={"page_size": "2001"})
    assert r.status_code == 400 and r.json() == {"errors": ["page_size must be a number between 0 and 2000"]}
    r = httpx.get(f"{base}/search/collections.umm_json", params={"page_size": "0"})
    assert r.status_code == 200 and r.json()["items"] == [] and int(r.headers["CMR-Hits"]) == 1433
    r = httpx.get(
        f"{base}/search/collections.umm_json",
        params={"revision_date[]": "2020-03-01T00:00:00Z,", "page_size": "2000"},
    )
    assert all(i["meta"]["revision-date"] >= "2020-03-01" for i in r.json()["items"])
    assert 0 < int(r.headers["CMR-Hits"]) < 1433


def test_pds_search_after_and_errors(shared_replay: ReplayServer) -> None:
    url = f"{shared_replay.pds_url}/products"
    sort = "ops:Harvest_Info.ops:harvest_date_time"
    first = httpx.get(url, params={"limit": 3, "sort": sort}).json()
    assert first["summary"]["hits"] == 1657 and len(first["data"]) == 3
    last = first["data"][-1]["properties"][sort][0]
    nxt = httpx.get(url, params={"limit": 3, "sort": sort, "search-after": last}).json()
    assert all(d["properties"][sort][0] > last for d in nxt["data"])
    assert httpx.get(url, params={"q": "(title eq"}).status_code == 400
    assert httpx.get(url, params={"search-after": "x"}).status_code == 400  # search-after needs sort
    mars = httpx.get(url, params={"q": '(pds:Target_Identification.pds:name eq "Mars")', "limit": 50}).json()
    assert mars["summary"]["hits"] == 5


def test_arxiv_atom_and_fault_validation(shared_replay: ReplayServer) -> None:
    r = httpx.get(shared_replay.arxiv_url, params={"search_query": "cat:gr-qc", "max_results": 2})
    assert r.status_code == 200 and r.text.count("<entry>") == 2 and "<opensearch:totalResults>" in r.text
    with pytest.raises(ValueError, match="unknown fault"):
        shared_replay.inject("teapot")


def test_short_pages_and_truncation(shared_replay: ReplayServer) -> None:
    shared_replay.max_page_items = 7
    try:
        r = httpx.get(f"{shared_replay.cmr_url}/search/collections.umm_json", params={"page_size": "100"})
        assert len(r.json()["items"]) == 7 and r.headers["CMR-Search-After"]
    finally:
        shared_replay.max_page_items = None
    shared_replay.inject("truncate", route="cmr")
    r = httpx.get(f"{shared_replay.cmr_url}/search/collections.umm_json", params={"page_size": "5"})
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.content)
