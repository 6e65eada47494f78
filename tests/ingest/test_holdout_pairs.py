"""The in-domain benchmark and the natural pairs on the demo config's bundled sources; the leakage check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from st_workflow.beir import read_corpus, read_qrels, read_queries
from st_workflow.config import PipelineConfig, load_config
from st_workflow.ingest import (
    LeakageError,
    build_holdout,
    build_natural_pairs,
    check_no_leakage,
    ingest_source,
    read_heldout,
)
from st_workflow.manifest import Manifest
from st_workflow.schemas import PAIR_SCHEMA, normalize_for_match

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def demo(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[PipelineConfig, list[Manifest], Manifest, Manifest]:
    """The demo config's three bundled sources, ingested, held out and paired once for the module."""
    runs = tmp_path_factory.mktemp("runs")
    cfg = load_config(CONFIGS / "demo.yaml", [f"runs_dir={runs}"])
    docs = [ingest_source(cfg, s.name) for s in cfg.ingest.sources]
    holdout = build_holdout(cfg, docs)
    assert holdout is not None
    pairs = build_natural_pairs(cfg, docs, holdout)
    return cfg, docs, holdout, pairs


def test_demo_sources_ingest(demo) -> None:
    _, docs, _, _ = demo
    kept = {m.name: m.counts["kept"] for m in docs}
    assert kept == {"cmr": 1430, "pds": 1645, "arxiv": 799}
    for m in docs:
        assert m.stage == "ingest" and m.manifest_path.parent.name == m.name
        assert m.counts["seen"] == m.counts["kept"] + m.counts["quarantined"] + m.counts["duplicates"]


def test_benchmark_layout_and_qrels(demo) -> None:
    cfg, docs, holdout, _ = demo
    bdir = Path(holdout.directory)
    assert bdir == cfg.stage_dir("benchmark") / "in-domain" and holdout.name == "in-domain"
    assert set(holdout.files) == {"corpus", "queries", "qrels", "heldout"} and holdout.files["qrels"].is_dir
    corpus, queries = read_corpus(bdir), read_queries(bdir)
    test = read_qrels(bdir / "qrels" / "test.tsv")
    assert set(test) == set(queries) and {d for q in test.values() for d in q} == set(corpus)
    # Per-source qrels, named like NASA SDE IR's: <pair type>~<source>.tsv, partitioning test.tsv.
    stems = sorted(p.stem for p in (bdir / "qrels").glob("*.tsv"))
    assert stems == ["test", "title-abstract~arxiv", "title-description~cmr", "title-description~pds"]
    union = sum(len(read_qrels(bdir / "qrels" / f"{s}.tsv")) for s in stems if s != "test")
    assert union >= len(test)
    # About 10% of each source is held out, and queries are the held-out titles.
    for m in docs:
        share = holdout.counts[f"heldout:{m.name}"] / holdout.counts[f"eligible:{m.name}"]
        assert 0.05 < share < 0.15, (m.name, share)
    held = read_heldout(holdout)
    assert len(held) == holdout.counts["corpus"] == len(corpus)
    titles = {normalize_for_match(t) for t in queries.values()}
    doc_titles = {
        r["id"]: r["title"]
        for m in docs
        for r in pq.read_table(m.path("documents"), columns=["id", "title"]).to_pylist()
    }
    assert all(normalize_for_match(doc_titles[h["id"]]) in titles for h in held)
    # Retrieval is title -> description: the corpus entry has no title (it would be the query itself).
    cmr_doc = next(v for k, v in corpus.items() if k.startswith("cmr:"))
    assert cmr_doc["title"] == "" and cmr_doc["text"].startswith("Description: ")


def test_natural_pairs_schema_counts_and_no_leak(demo) -> None:
    _, _docs, holdout, pairs = demo
    table = pq.read_table(pairs.path("pairs"))
    assert table.schema.equals(PAIR_SCHEMA, check_metadata=False)
    rows = table.to_pylist()
    assert pairs.counts["pairs"] == len(rows) > 3000
    assert pairs.counts["type:title-abstract"] == sum(r["type"] == "title-abstract" for r in rows)
    assert {r["type"] for r in rows if r["source"] == "arxiv"} == {"title-abstract"}
    assert {r["type"] for r in rows if r["source"] != "arxiv"} == {"title-description"}
    assert not any(r["synthesized"] for r in rows) and all(r["negative"] is None for r in rows)
    assert pairs.counts["dropped:heldout"] == holdout.counts["corpus"]
    cmr_pos = next(r["positive"] for r in rows if r["source"] == "cmr")
    assert cmr_pos.startswith("Description: ") and "\nScience keywords: " in cmr_pos
    pds_pos = [r["positive"] for r in rows if r["source"] == "pds"]
    assert any("\nInvestigation: " in p for p in pds_pos) and any("\nType: Instrument" in p for p in pds_pos)
    # Independent re-check: no pair text equals a held-out query or corpus text, no pair from a held-out doc.
    bdir = Path(holdout.directory)
    banned = {normalize_for_match(t) for t in read_queries(bdir).values()}
    banned |= {normalize_for_match(d["text"]) for d in read_corpus(bdir).values()}
    held = {(h["source"], h["id"]) for h in read_heldout(holdout)}
    for r in rows:
        assert (r["source"], r["doc_id"]) not in held
        assert (
            normalize_for_match(r["anchor"]) not in banned
            and normalize_for_match(r["positive"]) not in banned
        )


def test_stages_are_deterministic_and_reused(demo, tmp_path: Path) -> None:
    cfg, docs, holdout, pairs = demo
    assert build_holdout(cfg, docs) == holdout and build_natural_pairs(cfg, docs, holdout) == pairs
    other = cfg.model_copy(update={"runs_dir": str(tmp_path / "other")})
    h2 = build_holdout(other, docs)
    assert h2 is not None and h2.content_hash == holdout.content_hash
    assert build_natural_pairs(other, docs, h2).content_hash == pairs.content_hash
    reseeded = cfg.model_copy(update={"runs_dir": str(tmp_path / "seed"), "seed": 7})
    h3 = build_holdout(reseeded, docs)
    assert h3 is not None and h3.files["heldout"].sha256 != holdout.files["heldout"].sha256


def test_cap_and_disabled_holdout(demo, tmp_path: Path) -> None:
    _cfg, docs, _, _ = demo
    capped = load_config(
        CONFIGS / "demo.yaml",
        [
            f"runs_dir={tmp_path}",
            "pairs.holdout.max_queries_per_source=7",
            "pairs.holdout.per_source_qrels=false",
        ],
    )
    h = build_holdout(capped, docs)
    assert h is not None and h.counts["corpus"] == 21
    assert [p.name for p in (Path(h.directory) / "qrels").iterdir()] == ["test.tsv"]
    off = load_config(CONFIGS / "demo.yaml", [f"runs_dir={tmp_path / 'off'}", "pairs.holdout.enabled=false"])
    assert build_holdout(off, docs) is None
    p = build_natural_pairs(off, docs, None)
    assert p.counts["pairs"] > 3400 and "dropped:heldout" not in p.counts


def test_leak_in_a_pairs_file_is_caught_and_named(demo, tmp_path: Path) -> None:
    _, _, holdout, pairs = demo
    query = next(iter(read_queries(Path(holdout.directory)).values()))
    table = pq.read_table(pairs.path("pairs")).slice(0, 5).to_pylist()
    table[3]["anchor"] = "  " + query.upper() + " "  # same text after normalisation
    bad = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(table, schema=PAIR_SCHEMA), bad)
    with pytest.raises(LeakageError, match=r"pair 4 \(doc_id=.*\): its anchor equals held-out text"):
        check_no_leakage(bad, holdout)
    held = read_heldout(holdout)[0]
    table = pq.read_table(pairs.path("pairs")).slice(0, 2).to_pylist()
    table[1].update(source=held["source"], doc_id=held["id"])
    pq.write_table(pa.Table.from_pylist(table, schema=PAIR_SCHEMA), bad)
    with pytest.raises(LeakageError, match="comes from a held-out document"):
        check_no_leakage(bad, holdout)


def test_shared_titles_never_leak(tmp_path: Path) -> None:
    """Documents sharing a title: the held-out ones answer one query, the others are kept out of training."""
    rows = []
    for i in range(60):
        rows.append(
            {
                "id": f"a{i}",
                "title": f"Shared title {i % 20}",
                "text": f"Distinct description number {i} here.",
            }
        )
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = load_config(
        None,
        [
            f"runs_dir={tmp_path / 'runs'}",
            f"ingest.sources=[{{name: loc, kind: local, path: '{tmp_path / 'docs.jsonl'}', columns: {{id: id}}}}]",
            "pairs.holdout.fraction=0.3",
        ],
    )
    docs = [ingest_source(cfg, "loc")]
    h = build_holdout(cfg, docs)
    assert h is not None
    p = build_natural_pairs(cfg, docs, h)
    qrels = read_qrels(Path(h.directory) / "qrels" / "test.tsv")
    assert len(qrels) < h.counts["corpus"]  # one query per distinct title, several relevant documents
    assert p.counts["dropped:heldout_text"] > 0
    assert p.counts["pairs"] + p.counts["dropped:heldout"] + p.counts["dropped:heldout_text"] == 60
    shutil.rmtree(tmp_path / "runs")
