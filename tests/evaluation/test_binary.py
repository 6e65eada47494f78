"""Binary embeddings end to end (issue 14): one Hamming implementation, binary + rescore against an int8 corpus
memory-mapped from disk, the multiplier sweep, search latency and bytes in the manifest, the precision tables of
the report, promotion ranked by a binary precision, and the deployable ``promoted-binary`` model with its card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from st_workflow.config import PipelineConfig
from st_workflow.config.loader import load_config
from st_workflow.evaluation import (
    EmbeddingCache,
    EvalSettings,
    RetrievalEvaluator,
    evaluate_stage,
    load_local,
)
from st_workflow.evaluation.binary_model import BINARY_DIR, precision_summary
from st_workflow.evaluation.hamming import hamming_distances, to_words
from st_workflow.evaluation.index import CorpusIndex, pack_bits, parse_precision
from st_workflow.evaluation.promotion import promote, publish_promoted
from st_workflow.evaluation.report import comparison_tables, multiplier_table
from st_workflow.training import binarization


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(
        torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1
    )


def test_one_hamming_implementation_for_every_caller() -> None:
    assert binarization.hamming_distances is hamming_distances
    q, c = _unit(7, 100, 1), _unit(300, 100, 2)
    qb, cb = np.packbits((q > 0).numpy(), axis=1), np.packbits((c > 0).numpy(), axis=1)
    ref = np.unpackbits(qb[:, None, :] ^ cb[None, :, :], axis=2).sum(axis=2)
    from_numpy = hamming_distances(qb, cb)
    assert isinstance(from_numpy, np.ndarray) and np.array_equal(from_numpy, ref)
    from_torch = hamming_distances(pack_bits(q), pack_bits(c))
    assert np.array_equal(from_torch.numpy(), ref)
    assert np.array_equal(hamming_distances(to_words(pack_bits(q)), to_words(pack_bits(c))).numpy(), ref)
    with pytest.raises(ValueError, match="words"):
        hamming_distances(qb, cb[:, :5])


def test_precision_names_with_a_pinned_multiplier() -> None:
    assert parse_precision("binary_rescore@16") == ("binary_rescore", 16)
    for bad in ("binary@4", "binary_rescore@0", "binary_rescore@x", "fp16"):
        with pytest.raises(ValueError, match="unknown precision"):
            parse_precision(bad)
    s = EvalSettings(precisions=["binary_rescore"], rescore_multiplier=4, rescore_multipliers=[8, 1, 4])
    assert s.precisions == ["float32", "binary_rescore", "binary_rescore@1", "binary_rescore@8"]
    assert EvalSettings(precisions=["binary"], rescore_multipliers=[8]).precisions == ["float32", "binary"]


def test_rescoring_against_a_memory_mapped_int8_corpus(tmp_path: Path) -> None:
    corpus, queries = _unit(400, 64, 3), _unit(12, 64, 4)
    binary = CorpusIndex.build(corpus, "binary")
    int8 = CorpusIndex.build(corpus, "int8")
    np.save(tmp_path / "data.npy", int8.data.numpy())
    mapped = CorpusIndex.from_state(
        "int8",
        64,
        {"data": torch.from_numpy(np.load(tmp_path / "data.npy", mmap_mode="r+")), "ranges": int8.ranges},
    )
    k = 10
    # Every document a candidate: binary + int8 rescore ranks exactly as the int8 search does.
    full = binary.search(queries, k, mode="binary_rescore@40", backend="torch", rescore_index=mapped)
    assert torch.equal(full.indices, int8.search(queries, k).indices)
    # Few candidates: the int8 scores re-rank the Hamming top (m x k), and more candidates never lose recall.
    cand = binary.search(queries, 2 * k, mode="binary", backend="torch").indices
    two = binary.search(queries, k, mode="binary_rescore@2", backend="torch", rescore_index=mapped)
    for row, c in zip(two.indices.tolist(), cand.tolist(), strict=True):
        assert set(row) <= set(c)
    exact = CorpusIndex.build(corpus, "float32").search(queries, k).indices
    recall = [
        sum(
            len(
                set(
                    binary.search(
                        queries, k, mode=f"binary_rescore@{m}", backend="torch", rescore_index=mapped
                    )
                    .indices[i]
                    .tolist()
                )
                & set(exact[i].tolist())
            )
            for i in range(len(queries))
        )
        for m in (1, 4, 40)
    ]
    assert recall == sorted(recall) and recall[-1] > recall[0]
    with pytest.raises(ValueError, match="rescoring corpus"):
        binary.search(queries, k, mode="binary_rescore", rescore_index=CorpusIndex.build(corpus[:5], "int8"))


def test_evaluator_sweeps_multipliers_and_records_latency_and_disk_bytes(
    mini_beir: Path, tiny_model_path: Path, tmp_path: Path
) -> None:
    model = SentenceTransformer(str(tiny_model_path), device="cpu")
    bench = load_local(mini_beir, name="mini")
    cache = EmbeddingCache(tmp_path / "emb")
    settings = EvalSettings(
        ks=[1, 10],
        precisions=["int8", "binary", "binary_rescore"],
        rescore="int8",
        rescore_multipliers=[1, 100],
    )
    run = RetrievalEvaluator(settings, cache=cache, kernel_cache_dir=tmp_path).evaluate(model, bench)
    res = run.results["test"]
    assert set(res) == {
        "float32",
        "int8",
        "binary",
        "binary_rescore",
        "binary_rescore@1",
        "binary_rescore@100",
    }
    for r in res.values():
        assert r.query_ms is not None and r.query_ms >= 0
    dim = model.get_embedding_dimension()
    assert res["binary_rescore"].bytes_per_doc == res["binary"].bytes_per_doc == dim / 8
    assert res["binary_rescore"].rescore_bytes_per_doc == pytest.approx(res["int8"].bytes_per_doc)
    assert res["binary"].rescore_bytes_per_doc is None
    # x100 makes every document a candidate: int8 rescoring then ranks exactly like int8 search.
    assert res["binary_rescore@100"].metrics == res["int8"].metrics
    float_rescore = EvalSettings(ks=[1, 10], precisions=["binary_rescore"])
    fps = {
        s.result_fingerprint(model_hash="m", task=bench.tasks()[0], precision=p, query_prompt=None)
        for s in (settings, float_rescore)
        for p in ("binary_rescore", "binary_rescore@1")
    }
    assert len(fps) == 4  # the rescoring corpus and the multiplier are part of a result's identity


def _binary_cfg(eval_cfg: PipelineConfig, **extra) -> PipelineConfig:
    data = eval_cfg.model_dump()
    data["evaluation"].update(
        {
            "benchmarks": [{"name": "in-domain", "kind": "pipeline"}],
            "ks": [1, 10],
            "precisions": ["float32", "int8", "binary", "binary_rescore"],
            "rescore_multipliers": [1, 2, 8],
            "rescore": "int8",
            **extra,
        }
    )
    return PipelineConfig.model_validate(data)


def test_stage_report_promotion_and_the_binary_model(
    eval_cfg: PipelineConfig, mini_beir: Path, tiny_model_path: Path, model_copy: Path
) -> None:
    cfg = _binary_cfg(eval_cfg, promotion={"precision": "binary", "policy": "best_in_domain"})
    m = evaluate_stage(
        cfg, {"base": str(tiny_model_path), "fine_tuned": str(model_copy)}, {"in-domain": mini_beir}
    )
    vals = m.metrics["fine_tuned"]["in-domain"]
    for key in ("query_ms", "binary/query_ms", "binary_rescore@8/retention/ndcg@10", "binary/bytes_per_doc"):
        assert key in vals
    assert vals["binary_rescore/rescore_bytes_per_doc"] == pytest.approx(vals["int8/bytes_per_doc"])

    decision = promote(cfg, m, {"base": str(tiny_model_path), "fine_tuned": str(model_copy)})
    assert decision["metric"] == "binary/ndcg@10"
    winner = decision["promoted"]
    by_binary = {c: m.metrics[c]["in-domain"]["binary/ndcg@10"] for c in ("base", "fine_tuned")}
    assert by_binary[winner] == max(by_binary.values())
    assert (
        decision["precisions"]["in-domain"]["binary"]["metric"]
        == m.metrics[winner]["in-domain"]["binary/ndcg@10"]
    )

    md = comparison_tables(cfg, m.metrics, ["base", "fine_tuned"], promoted=winner)
    assert f"## Choosing a precision — {winner} (ndcg@10)" in md
    assert "retention against the multiplier" in md
    assert "| benchmark | binary | x1 | x2 | x4 | x8 |" in md
    assert "search ms/query" in md and "on disk" in md

    link = publish_promoted(cfg, decision)
    out = cfg.run_dir / BINARY_DIR
    assert json.loads((cfg.run_dir / "promoted.json").read_text())["binary"] == str(out)
    card = (out / "README.md").read_text()
    ret = decision["precisions"]["in-domain"]["binary_rescore"]["retention"]
    assert "| in-domain | binary_rescore | " in card and f"{ret * 100:.1f}%" in card
    assert 'precision="ubinary"' in card
    # The deployable model: a plain SentenceTransformer(path), offline; ubinary codes are the index's bits.
    deployed = SentenceTransformer(str(out), device="cpu")
    texts = ["Mars rover wheel wear", "ocean colour from MODIS"]
    codes = deployed.encode(texts, precision="ubinary")
    floats = SentenceTransformer(str(link), device="cpu").encode(texts, convert_to_tensor=True)
    assert np.array_equal(codes, pack_bits(floats.cpu()).numpy())

    # Without binary precisions the stale binary model goes away.
    plain = _binary_cfg(eval_cfg, precisions=["float32"], rescore_multipliers=[])
    publish_promoted(plain, {**decision, "precisions": {}})
    assert not out.exists()


def test_config_refuses_a_promotion_precision_or_a_sweep_it_does_not_score() -> None:
    with pytest.raises(Exception, match="does not score it"):
        load_config(None, ["evaluation.promotion.precision=binary_rescore"])
    with pytest.raises(Exception, match="add binary_rescore"):
        load_config(None, ["evaluation.precisions=[float32,binary]", "evaluation.rescore_multipliers=[2]"])


def test_multiplier_table_needs_a_sweep() -> None:
    per = {
        "cisi": {
            "ndcg@10": 0.5,
            "binary/retention/ndcg@10": 0.9,
            "binary_rescore/ndcg@10": 0.475,
            "binary_rescore/retention/ndcg@10": 0.95,
        }
    }
    assert multiplier_table(per, ["cisi"], "ndcg@10", 4, "m") == []
    per["cisi"] |= {"binary_rescore@16/ndcg@10": 0.49, "binary_rescore@16/retention/ndcg@10": 0.98}
    lines = multiplier_table(per, ["cisi"], "ndcg@10", 4, "m")
    assert "| cisi | 90.0% | 95.0% | 98.0% |" in lines


def test_precision_summary_reads_every_scored_precision() -> None:
    vals = {"ndcg@10": 0.5, "bytes_per_doc": 1536.0, "binary/ndcg@10": 0.45, "binary/retention/ndcg@10": 0.9}
    vals |= {"binary_rescore@8/ndcg@10": 0.49, "validation/binary/ndcg@10": 0.1, "binary/test/ndcg@10": 0.45}
    rows = precision_summary({"cisi": vals, "empty": {}}, "ndcg@10")
    assert set(rows) == {"cisi"} and set(rows["cisi"]) == {"float32", "binary", "binary_rescore@8"}
    assert rows["cisi"]["float32"]["bytes_per_doc"] == 1536.0


def test_evaluate_cli_rescores_against_int8_and_sweeps_multipliers(
    mini_beir: Path, tiny_model_path: Path, tmp_path: Path
) -> None:
    from st_workflow.cli import main

    out = tmp_path / "res.json"
    argv = ["evaluate", "-m", str(tiny_model_path), "-b", str(mini_beir), "--ks", "1", "10"]
    argv += ["--precision", "binary_rescore", "--rescore", "int8", "--rescore-multiplier", "4", "1", "2"]
    argv += ["-o", str(out), "--cache-dir", str(tmp_path / "c")]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert res["settings"]["rescore"] == "int8" and res["settings"]["rescore_multiplier"] == 4
    flat = res["metrics"]
    for key in ("binary_rescore/ndcg@10", "binary_rescore@1/ndcg@10", "binary_rescore@2/retention/ndcg@10"):
        assert key in flat
    costs = res["benchmarks"][mini_beir.name]["models"][tiny_model_path.name]["search_costs"]
    assert costs["binary_rescore/rescore_bytes_per_doc"] > 0 and "binary_rescore@2/query_ms" in costs
