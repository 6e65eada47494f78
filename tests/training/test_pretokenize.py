"""The pre-tokenization cache: built once, keyed by data/tokenizer/length/mapping, tokenized exactly as the model
tokenizes, and padded per batch by a collator that feeds the trainer what its own collator would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from _train_helpers import tiny_config
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

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
