"""The pre-tokenization cache: built once, keyed by data/tokenizer/length/mapping, tokenized exactly as the model
tokenizes, and padded per batch by a collator that feeds the trainer what its own collator would."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_helpers import tiny_config
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

from st_workflow.beir import write_benchmark
from st_workflow.config.evaluation import BenchmarkSpec
from st_workflow.leakage import LeakageError, LeakageTarget, leakage_targets
from st_workflow.manifest import Manifest
from st_workflow.training.collator import PreTokenizedCollator
from st_workflow.training.pretokenize import pretokenize_stage, read_sources, text_hashes
from st_workflow.training.samplers import SourceIndex


def test_stage_builds_once_and_keys_on_length_and_mapping(
    pairs_manifest: Manifest, tmp_path: Path, test_cache_dir: Path
) -> None:
    cfg = tiny_config(tmp_path, test_cache_dir, run_name="pt")
    m = pretokenize_stage(cfg, pairs_manifest)
    (rec,) = read_sources(m)
    entry = Path(rec["directory"])
    assert (
        m.path("source:pipeline") == entry / "data.arrow"
        and entry.parent == test_cache_dir.resolve() / "tokenized"
    )
    assert rec["mode"] == "tokens" and rec["rows"] == pairs_manifest.counts["pairs"]
    assert m.upstream[0].content_hash == pairs_manifest.content_hash
    stamp = (entry / "info.json").stat().st_mtime_ns
    assert m.is_valid()
    again = pretokenize_stage(cfg, pairs_manifest)
    assert (
        again.cache_key == m.cache_key
        and again.created_at == m.created_at
        and (entry / "info.json").stat().st_mtime_ns == stamp
    )
    # Another run directory with the same inputs reuses the same cache entry (content-addressed, not by name).
    other = pretokenize_stage(tiny_config(tmp_path / "other", test_cache_dir, run_name="pt2"), pairs_manifest)
    assert read_sources(other)[0]["directory"] == str(entry)
    longer = pretokenize_stage(
        tiny_config(tmp_path, test_cache_dir, run_name="pt3", max_seq_length=64), pairs_manifest
    )
    assert read_sources(longer)[0]["directory"] != str(entry)
    filtered = tiny_config(
        tmp_path,
        test_cache_dir,
        run_name="pt4",
        sources=[{"name": "pipeline", "data": {"kind": "pipeline", "sources": ["pds"]}}],
    )
    rec_f = read_sources(pretokenize_stage(filtered, pairs_manifest))[0]
    assert rec_f["directory"] != str(entry) and rec_f["rows"] < rec["rows"]


def test_token_ids_are_the_models_own_truncated_and_unpadded(
    pairs_manifest: Manifest, pair_rows: list[dict], tmp_path: Path, test_cache_dir: Path
) -> None:
    cfg = tiny_config(tmp_path, test_cache_dir, run_name="pt")
    (rec,) = read_sources(pretokenize_stage(cfg, pairs_manifest))
    ds = Dataset.from_file(str(Path(rec["directory"]) / "data.arrow"))
    assert ds.column_names == ["anchor_input_ids", "positive_input_ids", "row"]
    from st_workflow.models import resolve_model

    model = SentenceTransformer(resolve_model(cfg.training.base_model, cfg.cache_path), device="cpu")
    model.max_seq_length = cfg.training.max_seq_length
    for i in (0, 5, len(ds) - 1):
        for col in ("anchor", "positive"):
            feats = model.preprocess([pair_rows[i][col]])
            assert ds[i][f"{col}_input_ids"] == feats["input_ids"][0].tolist()
    assert (
        max(len(x) for x in ds["positive_input_ids"]) == cfg.training.max_seq_length
    )  # truncated, not padded
    idx = SourceIndex.load(rec["directory"], "pipeline")
    assert len(idx) == len(ds)
    assert idx.hashes[3].tolist() == text_hashes([pair_rows[3]["anchor"], pair_rows[3]["positive"]]).tolist()
    assert idx.lengths[3] == len(ds[3]["anchor_input_ids"]) + len(ds[3]["positive_input_ids"])


def test_collator_emits_exactly_what_the_on_the_fly_collator_emits(
    tiny_model_path: Path, pair_rows: list[dict]
) -> None:
    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    model.max_seq_length = 40
    rows = pair_rows[10:17]
    ref = SentenceTransformerDataCollator(preprocess_fn=model.preprocess)(
        [{"anchor": r["anchor"], "positive": r["positive"], "dataset_name": "s"} for r in rows]
    )
    tokenized = []
    for k, r in enumerate(rows):
        f = {
            f"{c}_input_ids": model.preprocess([r[c]])["input_ids"][0].tolist()
            for c in ("anchor", "positive")
        }
        tokenized.append({**f, "row": k, "dataset_name": "s"})
    ours = PreTokenizedCollator(pad_token_id=model.tokenizer.pad_token_id, token_type_ids=True)(tokenized)
    assert ours.pop("row_index").tolist() == list(range(len(rows)))
    assert ours.keys() == ref.keys()
    for k, v in ref.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(ours[k], v), k
        else:
            assert ours[k] == v, k
    emb_ref = model({k[len("positive_") :]: v for k, v in ref.items() if k.startswith("positive_")})[
        "sentence_embedding"
    ]
    emb_ours = model({k[len("positive_") :]: v for k, v in ours.items() if k.startswith("positive_")})[
        "sentence_embedding"
    ]
    assert torch.equal(emb_ref, emb_ours)


def test_max_pairs_subsamples_sources_in_proportion(
    pairs_manifest: Manifest, tmp_path: Path, test_cache_dir: Path
) -> None:
    cfg = tiny_config(
        tmp_path,
        test_cache_dir,
        run_name="cap",
        max_pairs=60,
        sources=[
            {"name": "arxiv", "data": {"kind": "pipeline", "sources": ["arxiv"]}},
            {"name": "pds", "data": {"kind": "pipeline", "sources": ["pds"]}, "weight": 3},
        ],
    )
    recs = {r["name"]: r for r in read_sources(pretokenize_stage(cfg, pairs_manifest))}
    assert recs["arxiv"]["rows"] + recs["pds"]["rows"] == 60
    assert recs["arxiv"]["subsampled_from"] == 80 and recs["arxiv"]["rows"] == 30
    rows = np.asarray(Dataset.from_file(str(Path(recs["pds"]["directory"]) / "data.arrow"))["row"])
    assert rows.tolist() == list(range(30))


# ---------------------------------------------------------------------------------------------- leakage guard
def _bench(directory: Path, rows: list[dict], judged: int) -> Path:
    """A BEIR benchmark of real texts: a query and a document per row, the first ``judged`` queries answered by
    their document in ``test``; the other documents are unjudged."""
    write_benchmark(
        directory,
        [(f"d{i}", "", r["positive"]) for i, r in enumerate(rows)],
        [(f"q{i}", r["anchor"]) for i, r in enumerate(rows[:judged])],
        {"test": [(f"q{i}", f"d{i}", 1) for i in range(judged)]},
    )
    return directory


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_guard_drops_leaking_rows_of_local_and_beir_sources_per_benchmark(
    pairs_manifest: Manifest, pair_rows: list[dict], tmp_path: Path, test_cache_dir: Path
) -> None:
    a = _bench(tmp_path / "bench-a", pair_rows[100:106], judged=3)  # d3..d5 unjudged
    b = _bench(tmp_path / "bench-b", pair_rows[110:112], judged=2)
    r = pair_rows
    local_rows = [
        *({"anchor": x["anchor"], "positive": x["positive"], "negative": r[20]["positive"]} for x in r[:5]),
        {
            "anchor": r[100]["anchor"].upper() + " ",
            "positive": r[6]["positive"],
            "negative": r[21]["positive"],
        },
        {"anchor": r[7]["anchor"], "positive": r[101]["positive"], "negative": r[22]["positive"]},
        {
            "anchor": r[8]["anchor"],
            "positive": r[104]["positive"],
            "negative": r[23]["positive"],
        },  # unjudged: ok
        {"anchor": r[9]["anchor"], "positive": r[10]["positive"], "negative": r[110]["anchor"]},  # a query
    ]
    negative = {"anchor": "anchor", "positive": "positive", "negative": "negative"}
    beir_rows = [*r[30:34], r[111]]  # the last query is one of bench-b's
    write_benchmark(
        tmp_path / "train-beir",
        [(f"t{i}", "", x["positive"]) for i, x in enumerate(beir_rows)],
        [(f"tq{i}", x["anchor"]) for i, x in enumerate(beir_rows)],
        {"train": [(f"tq{i}", f"t{i}", 1) for i in range(len(beir_rows))]},
    )
    cfg = tiny_config(
        tmp_path,
        test_cache_dir,
        run_name="guard",
        pretokenize=False,
        sources=[
            {"name": "pipeline"},
            {
                "name": "local",
                "data": {
                    "kind": "local",
                    "path": _jsonl(tmp_path / "l.jsonl", local_rows),
                    "columns": negative,
                },
            },
            {"name": "bt", "data": {"kind": "beir", "path": str(tmp_path / "train-beir")}},
        ],
    )
    targets = [LeakageTarget("bench-a", str(a)).as_dict(), LeakageTarget("bench-b", str(b)).as_dict()]
    m = pretokenize_stage(cfg, pairs_manifest, guard_targets=targets)
    recs = {x["name"]: x for x in read_sources(m)}
    assert (
        recs["local"]["dropped"] == {"leaked:bench-a": 2, "leaked:bench-b": 1} and recs["local"]["rows"] == 6
    )
    assert recs["bt"]["dropped"] == {"leaked:bench-b": 1} and recs["bt"]["rows"] == 4
    assert recs["local"]["guarded"] == recs["bt"]["guarded"] == ["bench-a", "bench-b"]
    kept = Dataset.from_file(str(Path(recs["local"]["directory"]) / "data.arrow"))["anchor"]
    assert r[8]["anchor"] in kept and r[7]["anchor"] not in kept
    assert m.counts["leaked:local:bench-a"] == 2 and m.counts["leaked:bt:bench-b"] == 1
    assert m.counts["dropped:local"] == 3 and m.metrics["guarded"]["sources"] == ["local", "bt"]
    # The pipeline pairs were guarded by the pairs stage: not checked again (they hold both benchmarks here).
    assert recs["pipeline"]["dropped"] == {} and recs["pipeline"]["rows"] == len(pair_rows)
    assert recs["pipeline"]["guarded"] is None

    # The guard is part of the keys: without it (or with every benchmark at leakage: none) nothing is dropped.
    plain = {x["name"]: x for x in read_sources(pretokenize_stage(cfg, pairs_manifest))}
    assert plain["local"]["rows"] == 9 and plain["local"]["directory"] != recs["local"]["directory"]
    assert plain["pipeline"]["directory"] == recs["pipeline"]["directory"]
    off = [{**t, "mode": "none"} for t in targets]
    assert read_sources(pretokenize_stage(cfg, pairs_manifest, guard_targets=off)) == list(plain.values())
    queries_only = [{**t, "mode": "queries"} for t in targets]
    q = {
        x["name"]: x for x in read_sources(pretokenize_stage(cfg, pairs_manifest, guard_targets=queries_only))
    }
    assert q["local"]["dropped"] == {"leaked:bench-a": 1, "leaked:bench-b": 1}


def test_guard_that_drops_every_row_names_source_benchmark_and_option(
    pair_rows: list[dict], tmp_path: Path, test_cache_dir: Path
) -> None:
    a = _bench(tmp_path / "bench-a", pair_rows[100:104], judged=2)
    rows = [
        {"anchor": pair_rows[100]["anchor"], "positive": pair_rows[0]["positive"]},
        {"anchor": pair_rows[1]["anchor"], "positive": pair_rows[101]["positive"]},
    ]
    cfg = tiny_config(
        tmp_path,
        test_cache_dir,
        run_name="all",
        pretokenize=False,
        sources=[{"name": "all-leak", "data": {"kind": "local", "path": _jsonl(tmp_path / "x.jsonl", rows)}}],
    )
    with pytest.raises(LeakageError) as e:
        pretokenize_stage(cfg, None, guard_targets=[LeakageTarget("bench-a", str(a)).as_dict()])
    msg = str(e.value)
    assert "training source 'all-leak'" in msg and "benchmark 'bench-a' (leakage: answers) dropped 2" in msg
    assert "evaluation.benchmarks[bench-a].leakage" in msg


def test_benchmark_train_split_used_as_training_data_is_not_flagged(
    pair_rows: list[dict], tmp_path: Path, test_cache_dir: Path
) -> None:
    d = tmp_path / "shared"
    write_benchmark(
        d,
        [(f"d{i}", "", x["positive"]) for i, x in enumerate(pair_rows[:6])],
        [(f"q{i}", x["anchor"]) for i, x in enumerate(pair_rows[:6])],
        {
            "train": [(f"q{i}", f"d{i}", 1) for i in range(3)],
            "test": [(f"q{i}", f"d{i}", 1) for i in range(3, 6)],
        },
    )
    cfg = tiny_config(
        tmp_path,
        test_cache_dir,
        run_name="split",
        pretokenize=False,
        sources=[{"name": "shared-train", "data": {"kind": "beir", "path": str(d), "split": "train"}}],
    )
    cfg.evaluation.benchmarks = [BenchmarkSpec(name="shared", kind="local", path=str(d), split="test")]
    targets = [t.as_dict() for t in leakage_targets(cfg, None)]  # what flows.common.guarded_benchmarks passes
    assert targets[0]["qrels"] == ["test"]
    (rec,) = read_sources(pretokenize_stage(cfg, None, guard_targets=targets))
    assert rec["rows"] == 3 and rec["dropped"] == {} and rec["guarded"] == ["shared"]
    # Guarding every qrels file instead makes the train split answers: all of it leaks.
    with pytest.raises(LeakageError, match="training source 'shared-train'"):
        pretokenize_stage(cfg, None, guard_targets=[LeakageTarget("shared", str(d)).as_dict()])
