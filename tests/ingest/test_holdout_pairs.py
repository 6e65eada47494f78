"""The in-domain benchmark (families held out whole, the whole collection as corpus, seeded validation/test splits)
and the natural pairs on the demo config's bundled sources; the leakage check."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
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
from st_workflow.leakage import BenchmarkGuard
from st_workflow.manifest import Manifest
from st_workflow.near_duplicates import NearDuplicateRule, skeleton
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


def _documents(docs: list[Manifest]) -> dict[tuple[str, str], dict]:
    return {
        (m.name, r["id"]): r
        for m in docs
        for r in pq.read_table(m.path("documents"), columns=["id", "title"]).to_pylist()
    }


def test_demo_sources_ingest(demo) -> None:
    _, docs, _, _ = demo
    kept = {m.name: m.counts["kept"] for m in docs}
    assert kept == {"cmr": 1430, "pds": 1645, "arxiv": 799}
    for m in docs:
        assert m.stage == "ingest" and m.manifest_path.parent.name == m.name
        assert m.counts["seen"] == m.counts["kept"] + m.counts["quarantined"] + m.counts["duplicates"]


def test_the_corpus_is_the_whole_collection_and_queries_come_from_held_out_documents(demo) -> None:
    cfg, docs, holdout, _ = demo
    bdir = Path(holdout.directory)
    assert bdir == cfg.stage_dir("benchmark") / "in-domain" and holdout.name == "in-domain"
    assert set(holdout.files) == {"corpus", "queries", "qrels", "heldout"} and holdout.files["qrels"].is_dir
    corpus, queries = read_corpus(bdir), read_queries(bdir)
    # Every ingested document with a text is searched; the training documents are the distractors.
    assert len(corpus) == sum(m.counts["kept"] for m in docs) == holdout.counts["corpus"]
    held = read_heldout(holdout)
    assert holdout.counts["distractors"] == len(corpus) - len(held) > 3000
    val = read_qrels(bdir / "qrels" / "validation.tsv")
    test = read_qrels(bdir / "qrels" / "test.tsv")
    assert set(val) | set(test) == set(queries) and not set(val) & set(test)
    assert min(len(val), len(test)) > 100
    held_ids = {h["corpus_id"] for h in held}
    assert {d for q in (*val.values(), *test.values()) for d in q} <= held_ids
    # Per-source qrels of the test queries, named like NASA SDE IR's: <pair type>~<source>.tsv.
    stems = sorted(p.stem for p in (bdir / "qrels").glob("*.tsv"))
    assert stems == [
        "test",
        "title-abstract~arxiv",
        "title-description~cmr",
        "title-description~pds",
        "validation",
    ]
    # About `pairs.holdout.fraction` of each source is held out (whole families, so not exactly), and the
    # queries are the held-out titles (no LLM configured).
    fraction = cfg.pairs.holdout.fraction
    for m in docs:
        share = holdout.counts[f"heldout:{m.name}"] / holdout.counts[f"eligible:{m.name}"]
        assert 0.6 * fraction < share < 1.4 * fraction, (m.name, share, fraction)
    titles = {normalize_for_match(t) for t in queries.values()}
    by_id = _documents(docs)
    assert all(normalize_for_match(by_id[(h["source"], h["id"])]["title"]) in titles for h in held)
    # Retrieval is title -> description: the corpus entry has no title (it would be the query itself).
    cmr_doc = next(v for k, v in corpus.items() if k.startswith("cmr:"))
    assert cmr_doc["title"] == "" and cmr_doc["text"].startswith("Description: ")
    assert holdout.metrics["queries_from"] == "title" and holdout.metrics["complete"] is True


def test_near_duplicate_families_are_held_out_whole(demo) -> None:
    """ "NWS Daily Climatology Data: 1978 (SNF)" and its other years are one family: all held out or none."""
    _, docs, holdout, pairs = demo
    held = read_heldout(holdout)
    held_keys = {(h["source"], h["id"]) for h in held}
    by_skeleton: dict[str, set[bool]] = defaultdict(set)
    for key, row in _documents(docs).items():
        by_skeleton[skeleton(row["title"])].add(key in held_keys)
    assert all(len(v) == 1 for v in by_skeleton.values()), (
        "a title family was split between train and benchmark"
    )
    # The rule matters here: the demo has big digit-only families (CMR years, DSN stations, Venera probes).
    assert holdout.counts["families"] < holdout.counts["corpus"] - 500
    # Every family is wholly in one split, and no training pair comes from a held-out family.
    split_of_family: dict[str, set[str]] = defaultdict(set)
    for h in held:
        split_of_family[h["family"]].add(h["split"])
    assert all(len(s) == 1 for s in split_of_family.values())
    trained = {(r["source"], r["doc_id"]) for r in pq.read_table(pairs.path("pairs")).to_pylist()}
    assert not trained & held_keys


def test_natural_pairs_schema_counts_and_no_leak(demo) -> None:
    cfg, _docs, holdout, pairs = demo
    table = pq.read_table(pairs.path("pairs"))
    assert table.schema.equals(PAIR_SCHEMA, check_metadata=False)
    rows = table.to_pylist()
    assert pairs.counts["pairs"] == len(rows) > 3000
    assert pairs.counts["type:title-abstract"] == sum(r["type"] == "title-abstract" for r in rows)
    assert {r["type"] for r in rows if r["source"] == "arxiv"} == {"title-abstract"}
    assert {r["type"] for r in rows if r["source"] != "arxiv"} == {"title-description"}
    assert not any(r["synthesized"] for r in rows) and all(r["negative"] is None for r in rows)
    assert pairs.counts["dropped:heldout"] == len(read_heldout(holdout))
    cmr_pos = next(r["positive"] for r in rows if r["source"] == "cmr")
    assert cmr_pos.startswith("Description: ") and "\nScience keywords: " in cmr_pos
    # Independent re-check with the rule itself: no pair near-duplicates a query or a held-out answer.
    bdir = Path(holdout.directory)
    rule = NearDuplicateRule.from_config(cfg.pairs.near_duplicates)
    queries = list(read_queries(bdir).values())
    answers = [
        d["text"]
        for cid, d in read_corpus(bdir).items()
        if cid in {h["corpus_id"] for h in read_heldout(holdout)}
    ]
    qsk = {skeleton(q) for q in queries}
    ask = {skeleton(a) for a in answers}
    for r in rows:
        assert skeleton(r["anchor"]) not in qsk and skeleton(r["positive"]) not in ask
    assert BenchmarkGuard([bdir], rule).check(rows[0]["anchor"], rows[0]["positive"]) is None


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


def test_cap_splits_and_disabled_holdout(demo, tmp_path: Path) -> None:
    _cfg, docs, _, _ = demo
    capped = load_config(
        CONFIGS / "demo.yaml",
        [
            f"runs_dir={tmp_path}",
            "pairs.holdout.max_queries_per_source=7",
            "pairs.holdout.per_source_qrels=false",
            "pairs.holdout.validation_fraction=0",
        ],
    )
    h = build_holdout(capped, docs)
    assert h is not None
    assert all(h.counts[f"heldout:{s}"] <= 7 for s in ("cmr", "pds", "arxiv"))
    assert sorted(p.name for p in (Path(h.directory) / "qrels").iterdir()) == ["test.tsv"]
    off = load_config(CONFIGS / "demo.yaml", [f"runs_dir={tmp_path / 'off'}", "pairs.holdout.enabled=false"])
    assert build_holdout(off, docs) is None
    p = build_natural_pairs(off, docs, None)
    assert p.counts["pairs"] > 3400 and "dropped:heldout" not in p.counts


def test_leak_in_a_pairs_file_is_caught_and_named(demo, tmp_path: Path) -> None:
    _, _, holdout, pairs = demo
    query = next(iter(read_queries(Path(holdout.directory)).values()))
    table = pq.read_table(pairs.path("pairs")).slice(0, 5).to_pylist()
    table[3]["anchor"] = "  " + query.upper() + "! "  # a near-duplicate of the query
    bad = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(table, schema=PAIR_SCHEMA), bad)
    with pytest.raises(LeakageError, match=r"pair 4 \(doc_id=.*\): its anchor near-duplicates query"):
        check_no_leakage(bad, holdout)
    held = read_heldout(holdout)[0]
    table = pq.read_table(pairs.path("pairs")).slice(0, 2).to_pylist()
    table[1].update(source=held["source"], doc_id=held["id"])
    pq.write_table(pa.Table.from_pylist(table, schema=PAIR_SCHEMA), bad)
    with pytest.raises(LeakageError, match="comes from a held-out document"):
        check_no_leakage(bad, holdout)


def test_shared_titles_are_one_family(tmp_path: Path) -> None:
    """Documents sharing a title form one family: its query is relevant to all of them, none is trained on."""

    def letters(n: int) -> str:  # digits would be masked by the near-duplicate rule; letters are not
        out = ""
        n += 1
        while n:
            n, r = divmod(n - 1, 26)
            out = chr(97 + r) + out
        return out

    def words(i: int) -> str:  # distinct words per record, so that only the titles make families
        return " ".join("word" + letters(i * 8 + j) for j in range(8))

    rows = [{"id": f"a{i}", "title": f"Shared title {chr(65 + i % 20)}", "text": words(i)} for i in range(60)]
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
    bdir = Path(h.directory)
    qrels = {**read_qrels(bdir / "qrels" / "test.tsv"), **read_qrels(bdir / "qrels" / "validation.tsv")}
    held = read_heldout(h)
    assert len(held) % 3 == 0 and all(len(docs_) == 3 for docs_ in qrels.values())
    assert p.counts["pairs"] + p.counts["dropped:heldout"] == 60 and p.counts["dropped:heldout"] == len(held)
    shutil.rmtree(tmp_path / "runs")


def test_llm_written_queries_with_a_local_endpoint(tmp_path: Path) -> None:
    """With an endpoint the held-out documents' queries are written by the LLM (real HTTP, local server),
    grounded in the document and not its title; a re-run asks nothing; the corpus then carries titles."""
    from st_workflow.testing.openai_server import OpenAICompatServer

    with OpenAICompatServer() as srv:
        cfg = load_config(
            CONFIGS / "tiny.yaml",
            [
                f"runs_dir={tmp_path / 'runs'}",
                f"cache_dir={tmp_path / 'cache'}",
                f"generation.endpoint.base_url={srv.base_url}",
                "generation.endpoint.api_key.env=ST_TEST_LLM_KEY",
                "generation.execution.prefect_concurrency_limit=null",
                "generation.execution.backoff_base_s=0.01",
                "ingest.sources.cmr.max_records=60",
                "ingest.sources.pds.max_records=60",
                "ingest.sources.arxiv.max_records=60",
                "pairs.holdout.fraction=0.2",
            ],
        )
        docs = [ingest_source(cfg, s.name) for s in cfg.ingest.sources]
        h = build_holdout(cfg, docs)
        assert h is not None and h.metrics["queries_from"] == "llm" and h.metrics["complete"] is True
        calls = srv.stats()["requests"]
        bdir = Path(h.directory)
        queries = read_queries(bdir)
        held = {h_["corpus_id"]: h_ for h_ in read_heldout(h)}
        titles = _documents(docs)
        assert h.metrics["llm_queries"] == len(queries) > 10
        for qid, text in queries.items():
            row = next(r for r in held.values() if r["query_id"] == qid)
            assert normalize_for_match(text) != normalize_for_match(
                titles[(row["source"], row["id"])]["title"]
            )
        assert next(iter(read_corpus(bdir).values()))["title"]  # LLM queries: the corpus is titled
        shutil.rmtree(cfg.stage_dir("benchmark"))
        again = build_holdout(cfg, docs)
        assert srv.stats()["requests"] == calls and again is not None and again.content_hash == h.content_hash
