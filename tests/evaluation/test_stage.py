"""The eval stage with the tiny model: manifest shape, dumps, incremental reuse keyed by weights, cache hits,
precisions side by side, skipped benchmarks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from st_workflow.config import PipelineConfig
from st_workflow.config.evaluation import BenchmarkSpec
from st_workflow.evaluation import (
    EmbeddingCache,
    EvalSettings,
    RetrievalEvaluator,
    evaluate_stage,
    load_local,
)
from st_workflow.evaluation.embeddings import weights_hash
from st_workflow.manifest import Manifest


def _cfg(cfg: PipelineConfig, **evaluation) -> PipelineConfig:
    data = cfg.model_dump()
    data["evaluation"].update(evaluation)
    return PipelineConfig.model_validate(data)


def _retrain(model_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    f = model_dir / "model.safetensors"
    tensors = load_file(f)
    name = next(k for k in tensors if k.endswith("word_embeddings.weight"))
    tensors[name] = tensors[name] + 0.05 * torch.randn_like(tensors[name])
    save_file(tensors, f, metadata={"format": "pt"})


def test_eval_stage_dumps_metrics_and_reuses_by_weights(
    eval_cfg: PipelineConfig, mini_beir: Path, tiny_model_path: Path, model_copy: Path
) -> None:
    cfg = _cfg(
        eval_cfg,
        benchmarks=[{"name": "in-domain", "kind": "pipeline", "qrels_files": ["qrels/*.tsv"]}],
        ks=[1, 5, 10],
        precisions=["float32", "binary", "binary_rescore"],
    )
    models = {"base": str(tiny_model_path), "fine_tuned": str(model_copy)}
    m = evaluate_stage(cfg, models, {"in-domain": mini_beir})
    assert set(m.metrics) == {"base", "fine_tuned"}
    vals = m.metrics["fine_tuned"]["in-domain"]
    for key in (
        "ndcg@10",
        "mrr@10",
        "recall@10",
        "weighted/ndcg@10",
        "test/ndcg@10",
        "neighbours/mrr@10",
        "binary/ndcg@10",
        "binary_rescore/ndcg@10",
        "binary/retention/ndcg@10",
        "map@5",
        "accuracy@1",
    ):
        assert 0.0 <= vals[key] <= 1.0 or key.endswith("retention/ndcg@10"), key
    assert vals["bytes_per_doc"] == 4 * 32 and vals["binary/bytes_per_doc"] == 4
    assert vals["ndcg@10"] == pytest.approx((vals["test/ndcg@10"] + vals["neighbours/ndcg@10"]) / 2)
    assert vals["weighted/ndcg@10"] == pytest.approx(
        (30 * vals["test/ndcg@10"] + 20 * vals["neighbours/ndcg@10"]) / 50
    )
    # Same weights under two names: identical metrics, computed once.
    assert m.metrics["base"] == m.metrics["fine_tuned"]
    assert m.counts["results_computed"] == 6 and m.counts["results_reused"] == 6
    dump = json.loads(m.path("in-domain").read_text())
    assert dump["models"]["fine_tuned"]["weights_hash"] == weights_hash(model_copy)
    assert set(dump["models"]["base"]["results"]) == {"test", "neighbours"}
    assert Manifest.read(cfg.stage_dir("eval")).content_hash == m.content_hash

    # Unchanged inputs: the stage itself is reused.
    assert evaluate_stage(cfg, models, {"in-domain": mini_beir}).created_at == m.created_at

    # Retrained fine_tuned: only it is recomputed, its old entry goes to history.
    _retrain(model_copy)
    m2 = evaluate_stage(cfg, models, {"in-domain": mini_beir})
    assert m2.counts["results_computed"] == 6 and m2.counts["results_reused"] == 6
    assert m2.metrics["base"] == m.metrics["base"]
    assert m2.metrics["fine_tuned"] != m.metrics["fine_tuned"]
    dump = json.loads(m2.path("in-domain").read_text())
    assert len(dump["history"]["fine_tuned"]) == 1

    # Forced re-run: every result comes from the dump.
    m3 = evaluate_stage(cfg, models, {"in-domain": mini_beir}, force=True)
    assert m3.counts == {**m2.counts, "results_computed": 0, "results_reused": 12}
    assert m3.metrics == m2.metrics


def test_corpus_cache_hit_skips_encoding(
    mini_beir: Path, tiny_model_path: Path, test_cache_dir: Path, tmp_path: Path
) -> None:
    from st_workflow.models import load_model

    model = load_model(str(tiny_model_path))
    bench = load_local(mini_beir, name="mini")
    cache = EmbeddingCache(tmp_path / "emb")
    ev = RetrievalEvaluator(
        EvalSettings(ks=[10], precisions=["binary"]), cache=cache, kernel_cache_dir=test_cache_dir
    )
    h = weights_hash(tiny_model_path)
    first = ev.evaluate(model, bench, model_hash=h)
    assert cache.misses == 2 and cache.hits == 0  # float32 and binary indexes built and stored
    assert first.timings["encode_corpus_s"] > 0
    second = ev.evaluate(model, bench, model_hash=h)
    assert "encode_corpus_s" not in second.timings and second.timings["corpus_cache_hits"] == 2
    for p in ("float32", "binary"):
        assert second.results["test"][p].metrics == first.results["test"][p].metrics
    # A different max_seq_length is a different key.
    ev.settings.max_seq_length = 16
    third = ev.evaluate(model, bench, model_hash=h)
    assert third.timings["encode_corpus_s"] > 0
    assert not list(cache.root.rglob("*.tmp-*"))


def test_weights_hash_ignores_training_state(model_copy: Path) -> None:
    before = weights_hash(model_copy)
    (model_copy / "optimizer.pt").write_bytes(b"state")
    (model_copy / "trainer_state.json").write_text("{}")
    (model_copy / "README.md").write_text("card")
    assert weights_hash(model_copy) == before
    _retrain(model_copy)
    assert weights_hash(model_copy) != before


def test_unavailable_benchmark_is_skipped_when_configured(
    eval_cfg: PipelineConfig, mini_beir: Path, tiny_model_path: Path
) -> None:
    cfg = _cfg(
        eval_cfg,
        benchmarks=[
            BenchmarkSpec(name="mini", kind="local", path=str(mini_beir)).model_dump(),
            BenchmarkSpec(
                name="hub", kind="hf", path="st-workflow-tests/absent", on_unavailable="skip"
            ).model_dump(),
            BenchmarkSpec(name="in-domain", kind="pipeline").model_dump(),
        ],
        ks=[10],
        baselines=[{"name": "ghost", "model": "st-workflow-tests/no-such-model"}],
    )
    m = evaluate_stage(cfg, {"base": str(tiny_model_path), "ghost": "st-workflow-tests/no-such-model"}, {})
    assert (
        m.counts["benchmarks"] == 1
        and m.counts["benchmarks_skipped"] == 2
        and m.counts["models_skipped"] == 1
    )
    assert set(json.loads(m.path("skipped").read_text())) == {"hub", "in-domain", "model:ghost"}
    assert set(m.metrics) == {"base"} and set(m.metrics["base"]) == {"mini"}
    assert set(json.loads(m.path("mini").read_text())["models"]) == {"base"}
    strict = _cfg(
        cfg, benchmarks=[BenchmarkSpec(name="hub", kind="hf", path="st-workflow-tests/absent").model_dump()]
    )
    from st_workflow.evaluation import BenchmarkUnavailableError

    with pytest.raises(BenchmarkUnavailableError, match="benchmark 'hub'"):
        evaluate_stage(strict, {"base": str(tiny_model_path)}, {})


def test_dtype_is_in_the_cache_key_and_recorded(
    mini_beir: Path, tiny_model_path: Path, test_cache_dir: Path, tmp_path: Path
) -> None:
    """bf16 vectors are other vectors: their own cache entry, the dtype on the result, metrics close to fp32."""
    from st_workflow.models import load_model

    model = load_model(str(tiny_model_path))
    bench = load_local(mini_beir, name="mini")
    cache = EmbeddingCache(tmp_path / "emb")
    h = weights_hash(tiny_model_path)
    runs = {}
    for dtype in ("float32", "bfloat16", "float32"):
        ev = RetrievalEvaluator(
            EvalSettings(ks=[10], dtype=dtype), cache=cache, kernel_cache_dir=test_cache_dir
        )
        runs.setdefault(dtype, []).append(ev.evaluate(model, bench, model_hash=h))
    assert cache.misses == 2 and cache.hits == 1  # fp32, bf16, then fp32 again from the cache
    fp32, bf16 = runs["float32"][0].results["test"]["float32"], runs["bfloat16"][0].results["test"]["float32"]
    assert (fp32.dtype, bf16.dtype) == ("float32", "bfloat16")
    assert fp32.fingerprint != bf16.fingerprint
    assert bf16.metrics["ndcg@10"] == pytest.approx(fp32.metrics["ndcg@10"], abs=0.05)


def test_auto_dtype_follows_the_cpu_flags() -> None:
    from st_workflow.models.dtype import fast_bf16_in_cpuinfo, resolve_dtype

    amx = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    old = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"
    assert fast_bf16_in_cpuinfo(amx) and fast_bf16_in_cpuinfo(arm) and not fast_bf16_in_cpuinfo(old)
    assert resolve_dtype("float32", "cpu") == "float32" and resolve_dtype("bfloat16", "cpu") == "bfloat16"
    from st_workflow.models.dtype import cpu_has_fast_bf16

    assert resolve_dtype("auto", "cpu") == ("bfloat16" if cpu_has_fast_bf16() else "float32")
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("fp8", "cpu")
