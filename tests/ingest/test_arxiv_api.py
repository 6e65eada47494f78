"""The arXiv export API against the replay server: rate limit, newest-first incremental paging, snapshot merge."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pyarrow.parquet as pq

from st_workflow.config.ingest import ArxivApiConfig, ArxivSource, RetryConfig
from st_workflow.ingest import ingest_to_dir
from st_workflow.testing.replay_server import ReplayServer


def _api(srv: ReplayServer, **kw) -> ArxivApiConfig:
    retry = RetryConfig(max_attempts=4, backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=3.0)
    return ArxivApiConfig(
        **{
            "enabled": True,
            "base_url": srv.arxiv_url,
            "min_interval_s": 0.2,
            "page_size": 50,
            "retry": retry,
            **kw,
        }
    )


def test_rate_limited_incremental_api_ingest(tmp_path: Path, samples_dir: Path) -> None:
    with ReplayServer() as srv:
        src = ArxivSource(name="ax", api=_api(srv, max_results=120, search_query="cat:astro-ph*"))
        srv.inject("503", route="arxiv", after=1)  # the second page fails once and is asked again
        first = ingest_to_dir(src, tmp_path / "ax")
        reqs = srv.requests_to("arxiv")
        assert first.counts["kept"] == 120 and first.counts["fetched"] == 120
        assert [r.param("start") for r in reqs] == ["0", "50", "50", "100"]
        assert all(
            r.param("sortBy") == "lastUpdatedDate" and r.param("sortOrder") == "descending" for r in reqs
        )
        # One request at a time, spaced by min_interval_s (the arXiv terms ask for 3 s). Server-side arrival times
        # jitter under load (one late arrival shortens the next gap), so check the spacing over the whole listing
        # with slack rather than each gap to the millisecond.
        gaps = [b.at - a.at for a, b in itertools.pairwise(reqs)]
        assert sum(gaps) >= 0.8 * 0.2 * len(gaps) and min(gaps) >= 0.1
        for r in pq.read_table(first.path("documents")).to_pylist():
            assert any(c.startswith("astro-ph") for c in json.loads(r["metadata"])["categories"])

        # Nothing new: one page is read, the listing stops at the watermark, the output is untouched.
        n = len(srv.requests)
        assert ingest_to_dir(src, tmp_path / "ax") == first
        assert len(srv.requests) - n == 1

        # A new paper appears: only the first page is read again and the paper is merged in.
        row = json.loads(
            (samples_dir / "arxiv" / "arxiv-metadata-oai-snapshot.head60.jsonl").open().readline()
        )
        row.update(
            id="2401.99999",
            title="A new paper",
            abstract="A fresh abstract about a new result.",
            categories="astro-ph.EP",
        )
        srv.arxiv.put(row)
        n = len(srv.requests)
        merged = ingest_to_dir(src, tmp_path / "ax")
        assert len(srv.requests) - n == 1
        assert merged.counts["kept"] == 121 and merged.counts["added"] == 1
        ids = pq.read_table(merged.path("documents"), columns=["id"])["id"].to_pylist()
        assert ids[-1] == "2401.99999" and len(ids) == len(set(ids))


def test_api_versions_supersede_snapshot_lines(tmp_path: Path) -> None:
    with ReplayServer() as srv:
        src = ArxivSource(
            name="ax",
            snapshot=["pkg://samples/arxiv/arxiv-metadata-oai-snapshot.head60.jsonl"],
            api=_api(srv, max_results=80, search_query="all:*", min_interval_s=0.0),
        )
        m = ingest_to_dir(src, tmp_path / "ax")
    ids = pq.read_table(m.path("documents"), columns=["id"])["id"].to_pylist()
    assert len(ids) == len(set(ids))  # one document per id
    superseded = m.metrics["reasons"].get("duplicate_id", 0)
    assert m.counts["kept"] == 60 + 80 - superseded and superseded > 0
