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


def test_pds_search_after_is_strict_on_the_whole_sort_tuple(shared_replay: ReplayServer) -> None:
    """As the registry's OpenSearch does: items tying with the search-after values are not returned, so only a sort
    ending with a unique field pages through ties; search-after needs one value per sort field."""
    url = f"{shared_replay.pds_url}/products"
    sort = "ops:Harvest_Info.ops:harvest_date_time"
    q = ("q", '(product_class eq "Product_Context")')
    page = httpx.get(url, params=[q, ("limit", "5"), ("sort", sort)]).json()["data"]
    times = [d["properties"][sort][0] for d in page]
    tied = times[-1]
    assert times.count(tied) < 3  # the page ends inside a harvest batch of three
    after_time = httpx.get(url, params=[q, ("limit", "5"), ("sort", sort), ("search-after", tied)]).json()[
        "data"
    ]
    assert all(d["properties"][sort][0] > tied for d in after_time)  # the rest of the batch is skipped
    both = [q, ("limit", "5"), ("sort", sort), ("sort", "lidvid")]
    last = page[-1]
    nxt = httpx.get(url, params=[*both, ("search-after", tied), ("search-after", last["id"])]).json()["data"]
    assert [d["properties"][sort][0] for d in nxt[: 3 - times.count(tied)]] == [tied] * (
        3 - times.count(tied)
    )
    assert all(d["id"] > last["id"] for d in nxt if d["properties"][sort][0] == tied)
    r = httpx.get(url, params=[*both, ("search-after", tied)])
    assert r.status_code == 400 and "equal length" in r.json()["message"]


def test_cmr_deleted_collections_endpoint(replay: ReplayServer) -> None:
    url = f"{replay.cmr_url}/search/deleted-collections"
    cid = replay.cmr.ids()[-1]
    record = replay.cmr.get(cid)
    replay.cmr.delete(cid, revision_date="2031-05-01T00:00:00Z")
    r = httpx.get(url, params={"revision_date": "2031-01-01T00:00:00Z"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    assert r.headers["CMR-Hits"] == "1" and f"<id>{cid}</id>" in r.text
    assert f"<revision-id>{record['meta']['revision-id']}</revision-id>" in r.text
    later = httpx.get(url, params={"revision_date": "2031-06-01T00:00:00Z"})
    assert later.headers["CMR-Hits"] == "0" and "<reference>" not in later.text
    for bad, message in [
        ({"revision_date": "2031-01-01T00:00:00Z,"}, "only a starting date is allowed"),
        ({"provider": "PODAAC"}, "Parameter [provider] was not recognized."),
    ]:
        r = httpx.get(url, params=bad)
        assert r.status_code == 400 and message in r.text, (bad, r.text)
    two = [("revision_date", "2031-01-01T00:00:00Z"), ("revision_date", "2032-01-01T00:00:00Z")]
    r = httpx.get(url, params=two)
    assert r.status_code == 400 and "Only one revision date is allowed, but 2 were provided." in r.text
    for json_ask in [httpx.get(f"{url}.json"), httpx.get(url, headers={"Accept": "application/json"})]:
        assert json_ask.status_code == 400 and "The only format that is supported is xml." in json_ask.text
    replay.cmr.put(record)  # ingested again: no longer a deleted collection
    r = httpx.get(url, params={"revision_date": "2031-01-01T00:00:00Z"})
    assert r.headers["CMR-Hits"] == "0" and cid in replay.cmr.ids()
