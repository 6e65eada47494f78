"""PDS: extracted context products, XML labels and Search API items normalise to the same documents; live paging."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from st_workflow.config.ingest import PdsSource, RetryConfig
from st_workflow.ingest import ingest_to_dir
from st_workflow.ingest.pds import HARVEST_TIME, api_candidate, parse_label, query_params
from st_workflow.ingest.stage import ListingShortfallError
from st_workflow.testing.replay_server import PdsQueryError, ReplayServer, parse_pds_query

PDS = "pkg://samples/pds/"
EXTRACTED = PDS + "context-pds4.product_context.1651.extracted.jsonl"
CORE = ("title", "text", "content_hash")
CORE_META = (
    "lidvid",
    "context_type",
    "type",
    "name",
    "investigation",
    "instrument_host",
    "telescope",
    "facility",
    "alternate_titles",
    "refs",
)


def _docs(m) -> dict[str, dict]:
    return {r["id"]: r for r in pq.read_table(m.path("documents")).to_pylist()}


def test_extracted_file_resolves_parent_names(tmp_path: Path) -> None:
    m = ingest_to_dir(PdsSource(name="pds", from_file=EXTRACTED), tmp_path / "pds")
    assert m.counts == {"seen": 1651, "kept": 1645, "quarantined": 3, "duplicates": 3, "filtered": 0}
    doc = _docs(m)["urn:nasa:pds:context:instrument:pse.a11e::1.1"]
    meta = json.loads(doc["metadata"])
    assert meta["investigation"] == ["Apollo 11 Mission"] or meta["investigation"][0].startswith("Apollo 11")
    assert meta["refs"]["investigation"] == ["urn:nasa:pds:context:investigation:mission.apollo_11"]
    assert meta["context_type"] == "Instrument" and meta["instrument_host"]
    assert doc["url"].endswith("/products/urn:nasa:pds:context:instrument:pse.a11e::1.1")


def test_api_items_and_extracted_records_normalise_identically(
    tmp_path: Path, fast_retry: RetryConfig
) -> None:
    extracted = _docs(ingest_to_dir(PdsSource(name="pds", from_file=EXTRACTED), tmp_path / "file"))
    with ReplayServer(max_page_items=300) as srv:
        src = PdsSource(name="pds", base_url=srv.pds_url, limit=400, retry=fast_retry)
        live = ingest_to_dir(src, tmp_path / "api")
        reqs = srv.requests_to("pds")
    api = _docs(live)
    assert (
        live.counts["fetched"] == 1657
    )  # 1,651 context products + 5 recorded collections + 1 recorded bundle
    # Search-after paging on the harvest time, every request sorted, later ones continuing after the last item.
    assert all(r.param("sort") == "ops:Harvest_Info.ops:harvest_date_time" for r in reqs)
    assert reqs[0].param("search-after") is None and all(r.param("search-after") for r in reqs[1:])
    assert live.metrics["listing"] == {"expected": 1657, "received": 1657, "shortfall": 0, "complete": True}
    assert len(api) == len(set(api))
    for lidvid, d in extracted.items():
        a = api[lidvid]  # the API text was re-wrapped like a label; normalisation gives back the same text
        assert {k: a[k] for k in CORE} == {k: d[k] for k in CORE}, lidvid
        ma, md = json.loads(a["metadata"]), json.loads(d["metadata"])
        assert {k: ma.get(k) for k in CORE_META} == {k: md.get(k) for k in CORE_META}, lidvid


def test_recorded_collections_use_their_own_description(samples_dir: Path) -> None:
    data = json.loads(
        (samples_dir / "pds" / "collections.limit20.first5.api_client_to_dict.json").read_text()
    )["data"]
    c = api_candidate(data[0], "collections#1")
    assert c.id == "urn:nasa:pds:mars2020_pixl:data_imaging::4.0"
    assert c.text.startswith("The data_imaging collection in the mars2020_pixl bundle")
    meta = c.metadata
    assert meta["target"] == ["Mars"] and meta["investigation"] == ["Mars 2020 Perseverance Rover Mission"]
    assert meta["instrument_host"] == ["Mars 2020 Perseverance Rover"]
    assert meta["instrument"] == ["Mars 2020 Pixl Micro-context Camera"]
    assert "PIXL" in meta["keywords"] and meta["node"] == "PDS_GEO" and meta["type"] == "Data"
    # The change log merged into "description" is not taken for the text.
    c4 = api_candidate(data[3], "collections#4")
    assert c4.text.startswith("InSight Marsquake Service (2022)")


def test_recorded_bundle_without_description_is_quarantined(tmp_path: Path) -> None:
    m = ingest_to_dir(
        PdsSource(name="b", from_file=PDS + "bundles.q_lidvid_insight_documents.api_client_to_dict.json"),
        tmp_path / "b",
    )
    assert m.counts["kept"] == 0 and m.counts["quarantined"] == 1
    entry = json.loads(Path(m.path("quarantine")).read_text())
    assert entry["reason"] == "missing_field" and entry["field"] == "text"
    assert entry["id"] == "urn:nasa:pds:insight_documents::2.0"


@pytest.mark.parametrize(
    "label",
    [
        "instrument.clipper.uvs_2.0",
        "instrument_host.spacecraft.clipper_2.0",
        "investigation.mission.clipper_2.0",
        "target.planetary_system.mars_system_1.0",
        "telescope.goldstone.dss12_26m_1.1",
    ],
)
def test_raw_xml_labels_match_the_extracted_records(samples_dir: Path, label: str) -> None:
    rec = parse_label((samples_dir / "pds" / f"context-pds4.raw.{label}.xml").read_bytes(), label)
    extracted = {
        r["lidvid"]: r
        for r in map(
            json.loads, (samples_dir / "pds" / "context-pds4.product_context.1651.extracted.jsonl").open()
        )
    }
    want = extracted[rec["lidvid"]]
    from st_workflow.ingest.documents import normalize_text

    assert rec["title"] == want["title"] and rec["context_type"] == want["context_type"]
    assert normalize_text(rec["description"]) == want["description"]
    assert rec.get("type") == want.get("type") and rec.get("parents") == want.get("parents")
    assert rec.get("alternate_titles") == want.get("alternate_titles")


def test_incremental_pds_asks_for_newer_harvests(tmp_path: Path, fast_retry: RetryConfig) -> None:
    with ReplayServer() as srv:
        src = PdsSource(name="pds", base_url=srv.pds_url, endpoint="collections", limit=2, retry=fast_retry)
        first = ingest_to_dir(src, tmp_path / "pds")
        assert first.counts["kept"] == 5 and first.counts["fetched"] == 5
        n = len(srv.requests)
        again = ingest_to_dir(src, tmp_path / "pds")
        q = srv.requests[n].param("q")
        assert q is not None and q.startswith("(ops:Harvest_Info.ops:harvest_date_time ge ")
        assert again == first
        item = srv.pds.get("urn:nasa:pds:mars2020_rover_places:document::4.0")
        item["properties"]["pds:Citation_Information.pds:description"] = [
            "A re-harvested, longer description."
        ]
        srv.pds.put(item, harvest="2030-01-01T00:00:00.000000Z")
        merged = ingest_to_dir(src, tmp_path / "pds")
    assert merged.counts["updated"] == 1 and merged.counts["kept"] == 5
    assert _docs(merged)[item["id"]]["text"] == "A re-harvested, longer description."


def test_query_language_and_param_folding() -> None:
    pred = parse_pds_query('(pds:Target_Identification.pds:name eq "Mars" and not (title like "*schema*"))')
    item = {
        "id": "x",
        "title": "A Mars thing",
        "properties": {"pds:Target_Identification.pds:name": ["Mars"]},
    }
    assert pred(item)
    assert not pred({**item, "title": "XML schema"})
    with pytest.raises(PdsQueryError):
        parse_pds_query("(title eq")
    assert query_params({"q": "(a eq 1)", "keywords": "mars"}, None) == [
        ("q", "(a eq 1)"),
        ("keywords", "mars"),
    ]
    assert query_params({}, "2024-01-01T00:00:00Z") == [
        ("q", '(ops:Harvest_Info.ops:harvest_date_time ge "2024-01-01T00:00:00Z")')
    ]


def _quarantined_ids(m) -> set[str]:
    return {json.loads(line)["id"] for line in Path(m.path("quarantine")).read_text().splitlines() if line}


@pytest.mark.parametrize(
    ("limit", "sort"),
    [(50, None), (100, None), (301, None), (100, [HARVEST_TIME])],
    ids=["limit50", "limit100", "limit301", "configured-without-lidvid"],
)
def test_paging_keeps_products_that_share_a_harvest_time(
    tmp_path: Path, fast_retry: RetryConfig, limit: int, sort: list[str] | None
) -> None:
    """Products are harvested in batches sharing one harvest time; no page boundary may drop the rest of a batch
    (also when a config names only the harvest time: the pager adds the unique lidvid itself)."""
    with ReplayServer(pds_harvest_batch=3) as srv:
        served = set(srv.pds.ids("products"))
        times = [srv.pds.get(i)["properties"].get(HARVEST_TIME, [""])[0] for i in served]
        assert len(set(times)) < len(times)  # the store really has ties
        extra = {"sort": sort} if sort else {}
        m = ingest_to_dir(
            PdsSource(name="pds", base_url=srv.pds_url, limit=limit, retry=fast_retry, **extra),
            tmp_path / "pds",
        )
        reqs = srv.requests_to("pds")
    assert m.counts["fetched"] == len(served) == 1657
    assert set(_docs(m)) | _quarantined_ids(m) == served
    assert m.metrics["listing"] == {"expected": 1657, "received": 1657, "shortfall": 0, "complete": True}
    # The sort ends with the unique lidvid, and search-after sends one value per sort field.
    assert all([v for k, v in r.params if k == "sort"] == [HARVEST_TIME, "lidvid"] for r in reqs)
    assert all(len([k for k, _ in r.params if k == "search-after"]) == 2 for r in reqs[1:])


def test_a_short_listing_is_recorded_and_not_trusted(tmp_path: Path, fast_retry: RetryConfig) -> None:
    """A page that silently lacks items (a failed registry shard) shows as a shortfall in the manifest; the run is
    marked incomplete so the next one lists everything again, or it fails when ``on_shortfall: fail``."""
    with ReplayServer() as srv:
        src = PdsSource(name="pds", base_url=srv.pds_url, limit=200, retry=fast_retry)
        out = tmp_path / "pds"
        srv.inject("partial", route="pds", after=1)  # the second page lacks every other item
        short = ingest_to_dir(src, out)
        listing = short.metrics["listing"]
        assert listing["expected"] == 1657 and listing["received"] == 1657 - 99
        assert listing["shortfall"] == 99 and listing["complete"] is False
        state = json.loads((out / "state.json").read_text())
        assert state["complete"] is False
        n = len(srv.requests)
        whole = ingest_to_dir(src, out)  # not incremental: everything is asked for again, and arrives
        assert srv.requests[n].param("q") is None
        assert whole.counts["fetched"] == 1657 and whole.metrics["listing"]["shortfall"] == 0
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        strict = src.model_copy(update={"on_shortfall": "fail", "incremental": False})
        srv.inject("partial", route="pds", after=2)
        with pytest.raises(
            ListingShortfallError, match=r"announced 1657 items but the listing delivered 1558"
        ):
            ingest_to_dir(strict, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the failed run left the output alone


def test_incremental_merge_respects_max_records_without_losing_records(
    tmp_path: Path, fast_retry: RetryConfig
) -> None:
    """A full cap keeps what it has; new records not taken are deferred (not counted as added) and asked for again."""
    with ReplayServer() as srv:
        src = PdsSource(
            name="pds", base_url=srv.pds_url, endpoint="collections", limit=2, max_records=6, retry=fast_retry
        )
        out = tmp_path / "pds"
        first = ingest_to_dir(src, out)
        assert first.counts["kept"] == 5 and first.counts["fetched"] == 5
        first_ids = set(_docs(first))
        template = srv.pds.get(sorted(srv.pds.ids("collections"))[0])
        harvests = [
            "2030-01-01T00:00:01.000000Z",
            "2030-01-01T00:00:02.000000Z",
            "2030-01-01T00:00:03.000000Z",
        ]
        new_ids = []
        for i, (prefix, when) in enumerate(zip(["zz", "aa", "mm"], harvests, strict=True)):
            item = json.loads(json.dumps(template))
            item["id"] = f"urn:nasa:pds:{prefix}_new_{i}:data::1.0"
            item["properties"]["lidvid"] = [item["id"]]
            item["properties"]["pds:Citation_Information.pds:description"] = [
                f"New collection number {i}, harvested after the first ingest."
            ]
            srv.pds.put(item, harvest=when)
            new_ids.append(item["id"])
        merged = ingest_to_dir(src, out)
        # Room for one: the oldest new record (harvested first, although its id sorts last) is taken.
        assert merged.counts["kept"] == 6
        assert (
            merged.counts["added"] == 1 and merged.counts["deferred"] == 2 and merged.counts["updated"] == 0
        )
        kept = set(_docs(merged))
        assert first_ids < kept and new_ids[0] in kept and not set(new_ids[1:]) & kept
        # The watermark stays at the oldest deferred record, so the next run asks for the deferred ones again.
        assert json.loads((out / "state.json").read_text())["watermark"] == harvests[1]
        n = len(srv.requests)
        again = ingest_to_dir(src, out)
        assert f'ge "{harvests[1]}"' in (srv.requests[n].param("q") or "")
        assert again == merged  # still full: nothing new is taken, the output is untouched
        # An update of a kept document is applied even with the cap reached.
        item = srv.pds.get(new_ids[0])
        item["properties"]["pds:Citation_Information.pds:description"] = [
            "A revised description, harvested later."
        ]
        srv.pds.put(item, harvest="2030-01-02T00:00:00.000000Z")
        updated = ingest_to_dir(src, out)
    assert updated.counts["updated"] == 1 and updated.counts["added"] == 0 and updated.counts["kept"] == 6
    assert _docs(updated)[new_ids[0]]["text"] == "A revised description, harvested later."
