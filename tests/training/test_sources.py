"""Training pair sources: pipeline filters, local files, Hugging Face datasets (local, same load_dataset path),
BEIR qrels, and row cleaning that counts what it drops."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset

from st_workflow.beir import doc_text, read_corpus, read_qrels, read_queries, write_benchmark
from st_workflow.config.training import TrainSource
from st_workflow.hashing import sha256_file
from st_workflow.leakage import BenchmarkGuard, LeakageTarget
from st_workflow.manifest import Manifest
from st_workflow.training.sources import MinedFile, SourceContext, materialize, open_source


def _read(src: dict, tmp_path: Path, ctx: SourceContext | None = None) -> tuple[Dataset, object]:
    source = TrainSource.model_validate(src)
    reader = open_source(source, ctx or SourceContext(hf_cache_dir=tmp_path / "hf"))
    counts = materialize(reader, tmp_path / f"{source.name}.arrow", max_rows=source.max_rows)
    if counts.kept == 0:
        return Dataset.from_dict({c: [] for c in reader.columns}), counts
    return Dataset.from_file(str(tmp_path / f"{source.name}.arrow")), counts


def test_pipeline_pairs_filtered_by_type_source_and_flag(
    pairs_manifest: Manifest, pair_rows: list[dict], tmp_path: Path
) -> None:
    ctx = SourceContext(
        pipeline_pairs=pairs_manifest.path("pairs"),
        pipeline_pairs_sha256=pairs_manifest.files["pairs"].sha256,
    )
    ds, counts = _read(
        {"name": "arxiv-only", "data": {"kind": "pipeline", "types": ["title-abstract"]}}, tmp_path, ctx
    )
    expected = [r for r in pair_rows if r["type"] == "title-abstract"]
    assert ds.column_names == ["anchor", "positive"] and len(ds) == len(expected) == counts.kept
    assert ds[0]["anchor"] == expected[0]["anchor"]
    ds2, _ = _read(
        {"name": "pds", "data": {"kind": "pipeline", "sources": ["pds"], "synthesized": False}}, tmp_path, ctx
    )
    assert len(ds2) == sum(r["source"] == "pds" for r in pair_rows)
    ds3, _ = _read({"name": "synthetic", "data": {"kind": "pipeline", "synthesized": True}}, tmp_path, ctx)
    assert len(ds3) == 0


def test_pipeline_source_without_pairs_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="run the pipeline"):
        _read({"name": "p", "data": {"kind": "pipeline"}}, tmp_path)


def test_local_files_in_every_format_with_mapping_and_cleaning(tmp_path: Path) -> None:
    rows = [
        {
            "q": "what is sea ice",
            "d": {"text": "Sea ice is frozen ocean water."},
            "neg": "Mars has two moons.",
        },
        {"q": "  ", "d": {"text": "blank anchor"}, "neg": "x"},
        {
            "q": "what is sea ice",
            "d": {"text": "Sea ice is frozen ocean water."},
            "neg": "Mars has two moons.",
        },
        {"q": "lidar", "d": {"text": None}, "neg": "y"},
        {"q": "ozone", "d": {"text": "Ozone absorbs UV."}, "neg": "Soil moisture."},
    ]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds, counts = _read(
        {
            "name": "j",
            "data": {
                "kind": "local",
                "path": str(jsonl),
                "columns": {"anchor": "q", "positive": "d.text", "negative": "neg"},
            },
        },
        tmp_path,
    )
    assert ds.column_names == ["anchor", "positive", "negative"]
    assert ds["anchor"] == ["what is sea ice", "ozone"]
    assert counts.read == 5 and counts.kept == 2
    assert counts.dropped == {"missing anchor": 1, "duplicate": 1, "missing positive": 1}
    flat = [{"a": r["q"], "p": r["d"]["text"]} for r in rows]
    pq.write_table(pa.Table.from_pylist(flat), tmp_path / "pairs.parquet")
    ds, _ = _read(
        {
            "name": "pq",
            "data": {
                "kind": "local",
                "path": str(tmp_path / "pairs.parquet"),
                "columns": {"anchor": "a", "positive": "p"},
            },
        },
        tmp_path,
    )
    assert ds["positive"] == ["Sea ice is frozen ocean water.", "Ozone absorbs UV."]
    (tmp_path / "pairs.csv").write_text('anchor,positive\nsea ice,"frozen, salty water"\nozone,UV shield\n')
    ds, _ = _read(
        {"name": "csv", "data": {"kind": "local", "path": str(tmp_path / "pairs.csv")}, "max_rows": 1},
        tmp_path,
    )
    assert ds[:] == {"anchor": ["sea ice"], "positive": ["frozen, salty water"]}


def test_missing_column_names_source_and_columns(tmp_path: Path) -> None:
    p = tmp_path / "x.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "a", "answer": "b"}]), p)
    with pytest.raises(ValueError, match=r"'bad'.*\['anchor', 'positive'\].*available"):
        _read({"name": "bad", "data": {"kind": "local", "path": str(p)}}, tmp_path)


def test_hf_dataset_through_load_dataset_with_nested_paths(tmp_path: Path) -> None:
    """Like nasa-impact/nasa_ads_corpus: ``positives.docs.0``; here a local dataset directory (no hub)."""
    root = tmp_path / "ads_like"
    (root / "data").mkdir(parents=True)
    rows = [
        {"query": f"query {i}", "positives": {"docs": [f"doc {i} first", f"doc {i} second"]}}
        for i in range(30)
    ]
    pq.write_table(pa.Table.from_pylist(rows[:20]), root / "data" / "train-00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[20:]), root / "data" / "train-00001.parquet")
    spec = {
        "name": "ads",
        "data": {
            "kind": "hf",
            "dataset": str(root),
            "split": "train",
            "columns": {"anchor": "query", "positive": "positives.docs.0"},
        },
    }
    ds, counts = _read(spec, tmp_path)
    assert len(ds) == 30 and counts.kept == 30
    assert sorted(ds["positive"])[:2] == ["doc 0 first", "doc 1 first"]
    # The packaged "json" builder with data_files goes through the same call.
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:5]))
    spec2 = {
        "name": "js",
        "data": {
            "kind": "hf",
            "dataset": "json",
            "data_files": [str(tmp_path / "d.jsonl")],
            "split": "train[:3]",
            "columns": {"anchor": "query", "positive": "positives.docs.1"},
        },
    }
    ds2, _ = _read(spec2, tmp_path)
    assert ds2["positive"] == ["doc 0 second", "doc 1 second", "doc 2 second"]
    # The fingerprint follows the content.
    r1 = open_source(TrainSource.model_validate(spec), SourceContext(hf_cache_dir=tmp_path / "hf"))
    pq.write_table(pa.Table.from_pylist(rows[20:29]), root / "data" / "train-00001.parquet")
    r2 = open_source(TrainSource.model_validate(spec), SourceContext(hf_cache_dir=tmp_path / "hf"))
    assert r1.fingerprint != r2.fingerprint


def test_beir_train_qrels_become_query_document_pairs(scifact_dir: Path, tmp_path: Path) -> None:
    ds, counts = _read(
        {"name": "scifact", "data": {"kind": "beir", "path": str(scifact_dir), "split": "train"}}, tmp_path
    )
    qrels = read_qrels(scifact_dir / "qrels" / "train.tsv")
    queries, corpus = read_queries(scifact_dir), read_corpus(scifact_dir)
    n_pairs = sum(1 for q in qrels.values() for s in q.values() if s >= 1)
    assert counts.read == n_pairs and len(ds) == counts.kept > 800
    qid = sorted(qrels)[0]
    did = sorted(qrels[qid])[0]
    assert ds[0] == {"anchor": queries[qid], "positive": doc_text(corpus[did])}


def test_a_mined_file_stands_in_for_its_source_only_while_it_matches(tmp_path: Path) -> None:
    src_file = tmp_path / "pairs.jsonl"
    src_file.write_text('{"anchor": "sea ice", "positive": "Frozen ocean water."}\n')
    source = TrainSource.model_validate({"name": "l", "data": {"kind": "local", "path": str(src_file)}})
    original = open_source(source, SourceContext())
    mined_path = tmp_path / "mined.parquet"
    mined_rows = {
        "anchor": ["sea ice"],
        "positive": ["Frozen ocean water."],
        "negative": ["Ozone absorbs UV."],
    }
    pq.write_table(pa.table(mined_rows), mined_path)
    mined = MinedFile(mined_path, sha256_file(mined_path), original.fingerprint)
    reader = open_source(source, SourceContext(mined={"l": mined}))
    assert reader.mined and reader.columns == ["anchor", "positive", "negative"]
    assert reader.fingerprint not in (original.fingerprint, mined.sha256)
    counts = materialize(reader, tmp_path / "m.arrow")
    assert counts.kept == 1 and Dataset.from_file(str(tmp_path / "m.arrow"))[0] == {
        k: v[0] for k, v in mined_rows.items()
    }
    other = MinedFile(mined_path, "0" * 64, original.fingerprint)  # another mined file: another fingerprint
    assert open_source(source, SourceContext(mined={"l": other})).fingerprint != reader.fingerprint
    src_file.write_text('{"anchor": "ozone", "positive": "UV shield."}\n')  # the source changed since mining
    with pytest.raises(ValueError, match="training source 'l': its mined negatives .* re-run the mine stage"):
        open_source(source, SourceContext(mined={"l": mined}))


def test_materialize_with_a_guard_counts_leaks_per_benchmark(tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    write_benchmark(
        bench,
        [
            ("d1", "", "Dust storms on Mars grow in summer."),
            ("d2", "", "Comet tails point away from the Sun."),
        ],
        [("q1", "When do Mars dust storms grow?")],
        {"test": [("q1", "d1", 1)]},
    )
    rows = [
        {"anchor": "when do MARS dust storms grow?", "positive": "Seasonal storms."},  # the query
        {"anchor": "Martian weather", "positive": "Dust storms on Mars grow in summer."},  # its answer
        {"anchor": "Cometary physics", "positive": "Comet tails point away from the Sun."},  # unjudged: fine
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = TrainSource.model_validate({"name": "l", "data": {"kind": "local", "path": str(path)}})
    guard = BenchmarkGuard([LeakageTarget("mars", str(bench))])
    counts = materialize(open_source(source, SourceContext()), tmp_path / "g.arrow", guard=guard)
    assert counts.kept == 1 and counts.dropped == {"leaked:mars": 2}
    assert Dataset.from_file(str(tmp_path / "g.arrow"))["anchor"] == ["Cometary physics"]
