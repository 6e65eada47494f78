"""The ``mine`` stage: real pairs from the bundled samples, a real (tiny, random) BERT, sentence-transformers' miner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from _train_helpers import TINY, tiny_config, write_pairs_manifest
from datasets import Dataset

from st_workflow.beir import doc_text, read_corpus, write_benchmark
from st_workflow.config import PipelineConfig
from st_workflow.config.mining import MiningConfig
from st_workflow.manifest import Manifest
from st_workflow.schemas import PAIR_SCHEMA, normalize_for_match
from st_workflow.training import mine_stage
from st_workflow.training.mining import distinct_texts, random_negatives
from st_workflow.training.pretokenize import pretokenize_stage, read_sources
from st_workflow.training.stage import _source_specs


def _variant(text: str) -> str:
    """The same text for ``normalize_for_match``, spelled differently."""
    return "  " + text.upper().replace(" ", "   ") + "\n"


@pytest.fixture(scope="module")
def tricky_rows(pair_rows: list[dict]) -> list[dict]:
    """The sample pairs plus rows that defeat exact-text matching: co-positives, re-spelled anchors and positives,
    and an exact duplicate row."""
    rows = [dict(r) for r in pair_rows]
    extra = [
        {**rows[1], "anchor": rows[0]["anchor"]},  # rows[1]'s positive is also a positive of rows[0]'s anchor
        {**rows[2], "anchor": _variant(rows[0]["anchor"])},  # and, via a re-spelled anchor, rows[2]'s
        {
            **rows[5],
            "anchor": rows[4]["anchor"],
            "positive": _variant(rows[5]["positive"]),
        },  # re-spelled positive
        dict(rows[3]),  # exact duplicate
        # A text the model scores 1.0 against the anchor (the anchor itself, re-spelled) that is a co-positive:
        # matching by exact text would pick it as the hardest negative.
        {**rows[6], "positive": rows[6]["anchor"]},
        {**rows[7], "positive": _variant(rows[6]["anchor"])},
        {**rows[8], "positive": rows[8]["anchor"]},
        {**rows[8], "anchor": _variant(rows[8]["anchor"])},
    ]
    return rows + extra


@pytest.fixture(scope="module")
def tricky_manifest(tmp_path_factory: pytest.TempPathFactory, tricky_rows: list[dict]) -> Manifest:
    return write_pairs_manifest(tmp_path_factory.mktemp("tricky-pairs"), tricky_rows)


def _cfg(
    tmp_path: Path, cache: Path, run_name: str = "t", training_sources: list | None = None, **mining: object
) -> PipelineConfig:
    extra = {"sources": training_sources} if training_sources is not None else {}
    cfg = tiny_config(tmp_path, cache, run_name=run_name, **extra)
    cfg.mining = MiningConfig(enabled=True, dtype="float32", device="cpu", **mining)
    return cfg


def _beir_training_dir(directory: Path, pair_rows: list[dict], judged: int = 6, docs: int = 30) -> Path:
    """A BEIR directory of real texts: ``docs`` documents, of which the first ``judged`` answer one train query
    each; the rest are unjudged (only ``mining.corpus: collection`` sees them)."""
    write_benchmark(
        directory,
        [(f"d{i}", "", r["positive"]) for i, r in enumerate(pair_rows[:docs])],
        [(f"q{i}", r["anchor"]) for i, r in enumerate(pair_rows[:judged])],
        {"train": [(f"q{i}", f"d{i}", 1) for i in range(judged)]},
    )
    return directory


def _copositives(rows: list[dict]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(normalize_for_match(r["anchor"]), set()).add(normalize_for_match(r["positive"]))
    return out


def _check(m: Manifest, rows: list[dict], num_negatives: int = 1) -> list[dict]:
    """Every invariant of a mined output against its input rows; returns the output rows."""
    table = pq.read_table(m.path("pairs"))
    assert table.schema.equals(PAIR_SCHEMA)
    out = table.to_pylist()
    c = m.counts
    assert c["input"] == len(rows) == c["kept"] + c["dropped"]
    assert c["pairs"] == len(out) == c["negatives_mined"] + c["negatives_fallback"] == m.files["pairs"].rows
    cop = _copositives(rows)
    corpus = {normalize_for_match(r["positive"]) for r in rows}
    for r in out:
        neg = normalize_for_match(r["negative"])
        assert neg not in cop[normalize_for_match(r["anchor"])], r  # neither its positive nor a co-positive
        assert neg in corpus
    # Output rows are input rows (all other columns untouched), in input order, at most num_negatives each.
    strip = [{k: v for k, v in r.items() if k != "negative"} for r in rows]
    pos = 0
    seen_per_row: dict[int, set[str]] = {}
    for r in out:
        body = {k: v for k, v in r.items() if k != "negative"}
        while strip[pos] != body or len(seen_per_row.get(pos, ())) == num_negatives:
            pos += 1
        assert r["negative"] not in seen_per_row.setdefault(pos, set())
        seen_per_row[pos].add(r["negative"])
    assert len(seen_per_row) == c["kept"]
    assert m.stage == "mine" and m.path("pairs").name == "pairs.parquet"
    return out


def test_negatives_are_never_a_positive_of_their_anchor(
    tmp_path: Path, test_cache_dir: Path, tricky_manifest: Manifest, tricky_rows: list[dict]
) -> None:
    cfg = _cfg(tmp_path, test_cache_dir, relative_margin=None)
    m = mine_stage(cfg, tricky_manifest)
    out = _check(m, tricky_rows)
    assert m.counts["negatives_mined"] == len(tricky_rows) == len(out)  # nothing filtered: all mined
    assert m.counts["dropped"] == m.counts["negatives_fallback"] == 0
    assert m.counts["anchors"] == len(_copositives(tricky_rows))
    assert m.upstream[0].content_hash == tricky_manifest.content_hash
    assert m.metrics["model"] == TINY and m.metrics["dtype"] == "float32"
    assert m.metrics["params"]["relative_margin"] is None and m.metrics["max_seq_length"] == 48
    assert -1.0 <= m.metrics["scores"]["negative_mean"] <= 1.0
    assert Manifest.read(cfg.stage_dir("mine")).content_hash == m.content_hash


def test_default_filters_fall_back_to_random_negatives(
    tmp_path: Path, test_cache_dir: Path, tricky_manifest: Manifest, tricky_rows: list[dict]
) -> None:
    # A random-weight BERT scores everything alike: the 5% margin leaves (almost) no candidate, so the fallback
    # carries the rows, and must still avoid every co-positive.
    m = mine_stage(_cfg(tmp_path, test_cache_dir), tricky_manifest)
    _check(m, tricky_rows)
    assert m.counts["negatives_fallback"] > len(tricky_rows) // 2
    assert m.counts["dropped"] == 0


def test_fallback_drop_versus_random(
    tmp_path: Path, test_cache_dir: Path, tricky_manifest: Manifest, tricky_rows: list[dict]
) -> None:
    # absolute_margin 0: a negative must score below the positive; with random weights that holds for some rows.
    rand = mine_stage(
        _cfg(tmp_path, test_cache_dir, "r", relative_margin=None, absolute_margin=0.0), tricky_manifest
    )
    drop = mine_stage(
        _cfg(tmp_path, test_cache_dir, "d", relative_margin=None, absolute_margin=0.0, fallback="drop"),
        tricky_manifest,
    )
    out_r, out_d = _check(rand, tricky_rows), _check(drop, tricky_rows)
    assert rand.counts["negatives_mined"] > 0 and rand.counts["negatives_fallback"] > 0
    assert rand.counts["dropped"] == 0 and rand.counts["pairs"] == len(tricky_rows)
    assert drop.counts["negatives_fallback"] == 0
    assert drop.counts["dropped"] == rand.counts["negatives_fallback"]
    assert drop.counts["negatives_mined"] == rand.counts["negatives_mined"] == drop.counts["pairs"]
    # The kept rows are exactly the mined rows of the random run, with the same negatives.
    assert out_d == [r for r in out_r if r in out_d]
    assert len(out_d) == rand.counts["negatives_mined"]

    # Nothing passes min_score 2: every row is dropped, or every row gets a fallback.
    none_d = mine_stage(_cfg(tmp_path, test_cache_dir, "nd", min_score=2.0, fallback="drop"), tricky_manifest)
    assert none_d.counts["pairs"] == 0 and none_d.counts["dropped"] == len(tricky_rows)
    assert pq.read_table(none_d.path("pairs")).num_rows == 0
    none_r = mine_stage(_cfg(tmp_path, test_cache_dir, "nr", min_score=2.0), tricky_manifest)
    _check(none_r, tricky_rows)
    assert none_r.counts["negatives_fallback"] == len(tricky_rows) and none_r.counts["negatives_mined"] == 0


def test_fallback_avoids_every_copositive(
    tmp_path: Path, test_cache_dir: Path, pair_rows: list[dict]
) -> None:
    # One anchor owns all corpus texts but one: its only admissible fallback is that one.
    texts = [r["positive"] for r in pair_rows[:5]]
    rows = [{**pair_rows[0], "positive": t} for t in texts[:4]] + [{**pair_rows[1], "positive": texts[4]}]
    rows[2]["anchor"] = _variant(rows[2]["anchor"])
    m = mine_stage(_cfg(tmp_path, test_cache_dir, min_score=2.0), write_pairs_manifest(tmp_path / "p", rows))
    out = _check(m, rows)
    assert [r["negative"] for r in out[:4]] == [texts[4]] * 4
    assert out[4]["negative"] in texts[:4]


def test_several_negatives_give_one_row_per_triplet(
    tmp_path: Path, test_cache_dir: Path, tricky_manifest: Manifest, tricky_rows: list[dict]
) -> None:
    cfg = _cfg(
        tmp_path,
        test_cache_dir,
        num_negatives=3,
        sampling_strategy="random",
        absolute_margin=0.0,
        relative_margin=None,
    )
    m = mine_stage(cfg, tricky_manifest)
    out = _check(m, tricky_rows, num_negatives=3)
    assert len(out) == 3 * len(tricky_rows)  # the fallback tops every row up to three
    assert m.counts["rows_short"] == 0 and m.counts["negatives_fallback"] > 0


def test_cache_reuse_and_what_invalidates_it(
    tmp_path: Path, test_cache_dir: Path, tricky_manifest: Manifest, tricky_rows: list[dict]
) -> None:
    from st_workflow.models.tiny import build_tiny_bert

    # A mining model given by path, so that its weights can change while its name does not.
    model_dir = tmp_path / "miner"
    shutil.copytree(
        build_tiny_bert(test_cache_dir / "models", hidden=32, layers=2, heads=2, vocab=2000, max_len=128),
        model_dir,
        copy_function=shutil.copy,
    )
    cfg = _cfg(tmp_path, test_cache_dir, model=str(model_dir), relative_margin=None)
    out = cfg.stage_dir("mine")

    def inode() -> int:
        return (out / "pairs.parquet").stat().st_ino

    first = mine_stage(cfg, tricky_manifest)
    ino = inode()
    again = mine_stage(cfg, tricky_manifest)
    assert (again.created_at, again.cache_key, again.content_hash) == (
        first.created_at,
        first.cache_key,
        first.content_hash,
    )
    assert inode() == ino  # not rewritten

    keys = {first.cache_key}

    def recomputed(m: Manifest) -> None:
        nonlocal ino
        assert m.cache_key not in keys and inode() != ino
        keys.add(m.cache_key)
        ino = inode()

    cfg.mining = cfg.mining.model_copy(update={"range_max": 20})  # a mining option
    recomputed(mine_stage(cfg, tricky_manifest))
    cfg.mining = cfg.mining.model_copy(update={"dtype": "bfloat16"})  # the dtype
    m = mine_stage(cfg, tricky_manifest)
    recomputed(m)
    assert m.metrics["dtype"] == "bfloat16"
    _check(m, tricky_rows)
    cfg.training.max_seq_length = 32  # the length (mining.max_seq_length unset)
    recomputed(mine_stage(cfg, tricky_manifest))
    fewer = write_pairs_manifest(tmp_path / "fewer", tricky_rows[:-5])  # the pairs
    m = mine_stage(cfg, fewer)
    recomputed(m)
    assert m.counts["input"] == len(tricky_rows) - 5
    weights_before = m.metrics["weights"]
    shutil.copytree(  # the weights, under the same name
        build_tiny_bert(
            test_cache_dir / "models", hidden=32, layers=2, heads=2, vocab=2000, max_len=128, seed=1
        ),
        model_dir,
        dirs_exist_ok=True,
        copy_function=shutil.copy,
    )
    m = mine_stage(cfg, fewer)
    recomputed(m)
    assert m.metrics["weights"] != weights_before and m.metrics["model"] == str(model_dir)
    assert mine_stage(cfg, fewer).created_at == m.created_at  # and that is reused in turn


def test_same_inputs_give_the_same_bytes(
    tmp_path: Path, test_cache_dir: Path, tricky_manifest: Manifest
) -> None:
    # Random sampling, several negatives and fallbacks: every seeded path at once.
    settings = {
        "num_negatives": 2,
        "sampling_strategy": "random",
        "absolute_margin": 0.0,
        "relative_margin": None,
    }
    runs = [mine_stage(_cfg(tmp_path / d, test_cache_dir, **settings), tricky_manifest) for d in ("a", "b")]
    assert runs[0].directory != runs[1].directory
    assert runs[0].path("pairs").read_bytes() == runs[1].path("pairs").read_bytes()
    assert runs[0].content_hash == runs[1].content_hash and runs[0].cache_key == runs[1].cache_key
    other_seed = _cfg(tmp_path / "c", test_cache_dir, **settings)
    other_seed.seed = 7
    assert mine_stage(other_seed, tricky_manifest).cache_key != runs[0].cache_key


def test_empty_pairs_write_an_empty_table(tmp_path: Path, test_cache_dir: Path) -> None:
    m = mine_stage(_cfg(tmp_path, test_cache_dir), write_pairs_manifest(tmp_path / "empty", []))
    assert m.counts["input"] == m.counts["pairs"] == m.counts["dropped"] == 0
    assert pq.read_table(m.path("pairs")).schema.equals(PAIR_SCHEMA)


def test_random_negatives_avoid_the_excluded_texts() -> None:
    corpus = distinct_texts(["Alpha", "beta", "Gamma", "delta", "Epsilon"])
    excluded = {"alpha", "beta", "gamma", "delta"}
    assert random_negatives(corpus, excluded, 3, seed=0, key=("q", "p")) == ["Epsilon"]
    assert random_negatives(corpus, excluded | {"epsilon"}, 1, seed=0, key=("q", "p")) == []
    picks = random_negatives(corpus, {"alpha"}, 4, seed=3, key=("q", "p"))
    assert sorted(picks) == ["Epsilon", "Gamma", "beta", "delta"]
    assert picks == random_negatives(corpus, {"alpha"}, 4, seed=3, key=("q", "p"))


def test_config_rejects_a_window_too_small() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        MiningConfig(num_negatives=5, range_min=48, range_max=50)
    with pytest.raises(ValueError, match="must be smaller"):
        MiningConfig(range_min=50)


# ---------------------------------------------------------------------------------------------- other sources
def test_beir_source_is_mined_from_its_collection_and_trained_on(
    tmp_path: Path, test_cache_dir: Path, pair_rows: list[dict]
) -> None:
    d = _beir_training_dir(tmp_path / "beir", pair_rows)
    sources = [{"name": "bt", "data": {"kind": "beir", "path": str(d)}}]
    settings = {"sources": ["bt"], "relative_margin": None, "training_sources": sources}
    cfg = _cfg(tmp_path, test_cache_dir, "coll", corpus="collection", **settings)
    m = mine_stage(cfg, None)  # no pipeline source: no pairs dataset needed
    assert set(m.files) == {"source:bt", "teacher"} and m.upstream == []
    rows = pq.read_table(m.path("source:bt")).to_pylist()
    collection = {doc_text(x) for x in read_corpus(d).values()}
    judged = {r["positive"] for r in rows}
    assert len(rows) == 6 == m.counts["negatives_mined:bt"] == m.counts["input:bt"] == m.counts["kept:bt"]
    assert m.counts["corpus:bt"] == 30 and m.metrics["sources"]["bt"]["corpus"] == "collection"
    for r in rows:
        assert r["negative"] in collection and normalize_for_match(r["negative"]) != normalize_for_match(
            r["positive"]
        )
    assert any(r["negative"] not in judged for r in rows)  # candidates beyond the judged documents
    assert mine_stage(cfg, None).created_at == m.created_at  # reused

    # corpus: positives mines among the judged documents only.
    pos = mine_stage(_cfg(tmp_path, test_cache_dir, "pos", **settings), None)
    assert pos.counts["corpus:bt"] == 6
    assert {r["negative"] for r in pq.read_table(pos.path("source:bt")).to_pylist()} <= judged

    # Pre-tokenization trains on the mined file: a negative column, and a key that follows the mined file.
    pretok = pretokenize_stage(cfg, None, mined=m)
    (rec,) = read_sources(pretok)
    assert rec["columns"] == ["anchor", "positive", "negative"] and rec["mined"] and rec["rows"] == 6
    ds = Dataset.from_file(str(Path(rec["directory"]) / "data.arrow"))
    assert ds.column_names == ["anchor_input_ids", "positive_input_ids", "negative_input_ids", "row"]
    (spec,) = _source_specs(cfg, pretok)  # the train stage hands the negative column on (MNRL hard negatives)
    assert spec.columns == ["anchor", "positive", "negative"] and spec.kind == "beir"
    (plain,) = read_sources(pretokenize_stage(cfg, None))
    assert plain["columns"] == ["anchor", "positive"] and not plain["mined"]
    (other,) = read_sources(pretokenize_stage(cfg, None, mined=pos))
    assert len({rec["cache_key"], plain["cache_key"], other["cache_key"]}) == 3
    assert pretok.upstream[0].content_hash == m.content_hash

    # A changed source is a new mining key (its reader fingerprint), and the old file no longer fits it.
    _beir_training_dir(d, pair_rows, judged=7)
    again = mine_stage(cfg, None)
    assert again.cache_key != m.cache_key and again.counts["input:bt"] == 7
    with pytest.raises(ValueError, match="re-run the mine stage"):
        pretokenize_stage(cfg, None, mined=pos)


def test_pipeline_only_config_mines_as_before(
    tmp_path: Path, test_cache_dir: Path, pair_rows: list[dict]
) -> None:
    rows = pair_rows[::4]  # both ingest sources, a quarter of the rows: quick
    pairs_manifest = write_pairs_manifest(tmp_path / "pairs", rows)
    old = mine_stage(_cfg(tmp_path, test_cache_dir, "old", relative_margin=None), pairs_manifest)
    _check(old, rows)
    assert set(old.files) == {"pairs", "teacher"} and old.metrics["sources"] == {}
    assert old.upstream[0].content_hash == pairs_manifest.content_hash
    # Naming the pipeline source, or adding a beir source that mining.sources does not name: the same output.
    d = _beir_training_dir(tmp_path / "beir", pair_rows)
    both = [{"name": "pipeline"}, {"name": "bt", "data": {"kind": "beir", "path": str(d)}}]
    for run, settings in (
        ("named", {"sources": ["pipeline"]}),
        ("beside", {"training_sources": both}),
        ("collection", {"training_sources": both, "sources": ["pipeline"], "corpus": "collection"}),
    ):
        m = mine_stage(_cfg(tmp_path, test_cache_dir, run, relative_margin=None, **settings), pairs_manifest)
        assert set(m.files) == {"pairs", "teacher"} and m.counts == old.counts, run
        assert m.path("pairs").read_bytes() == old.path("pairs").read_bytes(), run
    # Pre-tokenization: the mined manifest as the pairs (the old call) or as ``mined`` reads the same file.
    cfg = _cfg(tmp_path, test_cache_dir, "old")
    (a,) = read_sources(pretokenize_stage(cfg, old))
    (b,) = read_sources(pretokenize_stage(cfg, pairs_manifest, mined=old))
    assert a["directory"] == b["directory"] and a["columns"] == ["anchor", "positive", "negative"]
    assert a["mined"] and b["mined"] and not read_sources(pretokenize_stage(cfg, pairs_manifest))[0]["mined"]


def test_mining_selection_errors(tmp_path: Path, test_cache_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"mining.sources: \['nope'\] not in training.sources"):
        mine_stage(_cfg(tmp_path, test_cache_dir, sources=["nope"]), None)
    with pytest.raises(ValueError, match="no pairs dataset was given"):
        mine_stage(_cfg(tmp_path, test_cache_dir), None)
    with pytest.raises(ValueError, match="lists a source twice"):
        MiningConfig(sources=["a", "a"])


def test_local_source_is_mined_after_cleaning_and_capping(
    tmp_path: Path, test_cache_dir: Path, pair_rows: list[dict]
) -> None:
    rows = [{"q": r["anchor"], "p": r["positive"], "n": "an old negative"} for r in pair_rows[:10]]
    rows[3]["p"] = "  "  # unusable
    rows[5] = dict(rows[4])  # duplicate
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, *rows[:2]]))  # rows past max_rows
    columns = {"anchor": "q", "positive": "p", "negative": "n"}
    sources = [
        {"name": "l", "data": {"kind": "local", "path": str(path), "columns": columns}, "max_rows": 10}
    ]
    cfg = _cfg(
        tmp_path,
        test_cache_dir,
        training_sources=sources,
        sources=["l"],
        corpus="collection",  # a local source has no collection: its positives
        num_negatives=2,
        absolute_margin=0.0,
        relative_margin=None,
    )
    m = mine_stage(cfg, None)
    c = m.counts
    assert (
        c["input:l"] == 10
        and c["unusable:l"] == 2
        and c["input:l"] == c["unusable:l"] + c["dropped:l"] + c["kept:l"]
    )
    assert c["pairs:l"] == 2 * c["kept:l"] == c["negatives_mined:l"] + c["negatives_fallback:l"] == 16
    info = m.metrics["sources"]["l"]
    assert info["corpus"] == "positives" and info["replaced_negative_column"] and info["max_rows"] == 10
    out = pq.read_table(m.path("source:l")).to_pylist()
    positives = {r["p"] for r in rows if r["p"].strip()}
    assert all(r["negative"] in positives and r["negative"] != r["positive"] for r in out)
    # max_rows was applied before mining: pre-tokenization keeps every mined triplet.
    (rec,) = read_sources(pretokenize_stage(cfg, None, mined=m))
    assert rec["rows"] == 16 and rec["columns"] == ["anchor", "positive", "negative"]


def test_the_mining_embeddings_are_kept_as_the_distillation_teachers_targets(
    tmp_path: Path, test_cache_dir: Path, tricky_manifest: Manifest, tricky_rows: list[dict]
) -> None:
    """Every anchor, positive and negative of the output has the mining model's embedding in the teacher store,
    keyed like pre-tokenization hashes texts, equal to what the model computes for that text."""
    import numpy as np

    from st_workflow.models import load_model
    from st_workflow.training.mining import load_teacher_store
    from st_workflow.training.pretokenize import text_hashes

    cfg = _cfg(tmp_path, test_cache_dir, relative_margin=None)
    m = mine_stage(cfg, tricky_manifest)
    assert m.files["teacher"].is_dir and m.metrics["teacher"]["weights"] == m.metrics["weights"]
    hashes, emb = load_teacher_store(m.path("teacher"))
    assert np.all(np.diff(hashes) > 0)
    out = pq.read_table(m.path("pairs")).to_pylist()
    texts = sorted({t for r in out for t in (r["anchor"], r["positive"], r["negative"])})
    pos = np.searchsorted(hashes, text_hashes(texts))
    assert np.array_equal(hashes[pos], text_hashes(texts))  # no text of the output is missing
    model = load_model(TINY, cache_dir=test_cache_dir, max_seq_length=48)
    sample = texts[:5]
    direct = model.encode(sample, normalize_embeddings=True)
    stored = emb[np.searchsorted(hashes, text_hashes(sample))].astype(np.float32)
    cos = (direct * stored).sum(1) / np.linalg.norm(stored, axis=1) / np.linalg.norm(direct, axis=1)
    assert cos.min() > 0.99
