"""``st-workflow evaluate``: table + JSON with ``ndcg@10``-style names, corpus cache across runs, and a lean real
check with all-MiniLM-L6-v2 on SciFact against sentence-transformers' own InformationRetrievalEvaluator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from st_workflow.cli import main


def test_evaluate_cli_prints_a_table_and_writes_json(
    mini_beir: Path, tiny_model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "res.json"
    argv = [
        "evaluate",
        "--model",
        str(tiny_model_path),
        "--benchmark",
        str(mini_beir),
        "--qrels",
        "qrels/*.tsv",
        "--ks",
        "1",
        "10",
        "--precision",
        "binary",
        "--output",
        str(out),
        "--cache-dir",
        str(tmp_path / "c"),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr()
    header = printed.out.splitlines()[0].split()
    assert header[:3] == ["model", "benchmark", "precision"] and "ndcg@10" in header
    assert "mini-beir" in printed.out or mini_beir.name in printed.out
    assert "binary" in printed.out and "0 hit(s), 2 miss(es)" in printed.err
    res = json.loads(out.read_text())
    assert set(res["metrics"]) >= {
        "ndcg@10",
        "mrr@10",
        "recall@10",
        "map@1",
        "binary/ndcg@10",
        "test/ndcg@10",
    }
    entry = res["benchmarks"][mini_beir.name]["models"][tiny_model_path.name]
    assert entry["tasks"]["neighbours"]["float32"]["n_queries"] == 20
    assert entry["bytes_per_doc"] == {"float32": 128.0, "binary": 4.0}
    # Second run: the corpus comes from the cache.
    assert main(argv) == 0
    assert "2 hit(s), 0 miss(es)" in capsys.readouterr().err
    assert json.loads(out.read_text())["metrics"] == res["metrics"]


def test_evaluate_cli_reports_a_bad_benchmark(
    tiny_model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", "--model", str(tiny_model_path), "--benchmark", "no-such-thing"]) == 2
    assert "neither a BEIR directory" in capsys.readouterr().err


@pytest.mark.slow
def test_minilm_on_scifact_matches_sentence_transformers(scifact_dir: Path, tmp_path: Path) -> None:
    """All 300 SciFact test queries over their judged documents plus 100 distractors (the full corpus takes minutes
    on two cores; ``benchmarks/eval_scifact.py`` reproduces the published full-corpus numbers). Metrics must equal
    sentence-transformers' evaluator on the same subset."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.util import cos_sim

    from st_workflow.beir import read_corpus, read_qrels, read_queries, write_benchmark
    from st_workflow.evaluation import EmbeddingCache
    from st_workflow.models import load_model

    qrels = read_qrels(scifact_dir / "qrels" / "test.tsv")
    corpus, queries = read_corpus(scifact_dir), read_queries(scifact_dir)
    judged = {d for docs in qrels.values() for d in docs}
    keep = [d for d in corpus if d in judged] + [d for d in corpus if d not in judged][:100]
    sub = tmp_path / "scifact-subset"
    write_benchmark(
        sub,
        corpus=[(d, corpus[d]["title"], corpus[d]["text"]) for d in keep],
        queries=[(q, queries[q]) for q in qrels],
        qrels={"test": [(q, d, s) for q, docs in qrels.items() for d, s in docs.items()]},
    )
    out = tmp_path / "res.json"
    model_id = "sentence-transformers/all-MiniLM-L6-v2"
    cache_dir = tmp_path / "cache"
    assert (
        main(
            [
                "evaluate",
                "--model",
                model_id,
                "--benchmark",
                str(sub),
                "--ks",
                "1",
                "10",
                "100",
                "--output",
                str(out),
                "--cache-dir",
                str(cache_dir),
                # sentence-transformers' evaluator encodes the queries in fp32; ``auto`` is bf16 on CPUs with
                # native bf16, which moves NDCG in the third decimal.
                "--dtype",
                "float32",
            ]
        )
        == 0
    )
    ours = json.loads(out.read_text())["metrics"]
    assert ours["n_queries"] == 300

    # sentence-transformers' evaluator on the same subset, fed our cached corpus embeddings (it re-encodes queries).
    entry = next(EmbeddingCache(cache_dir / "embeddings").root.rglob("meta.json")).parent
    import numpy as np
    import torch

    emb = torch.from_numpy(np.load(entry / "data.npy"))
    ids_in_index = sorted(keep, reverse=True)
    row = {d: i for i, d in enumerate(ids_in_index)}
    ks = [1, 10, 100]
    st = InformationRetrievalEvaluator(
        queries={q: queries[q] for q in qrels},
        corpus={d: d for d in keep},
        relevant_docs={q: set(docs) for q, docs in qrels.items()},
        mrr_at_k=ks,
        ndcg_at_k=ks,
        accuracy_at_k=ks,
        precision_recall_at_k=ks,
        map_at_k=ks,
        batch_size=64,
        write_csv=False,
        score_functions={"cosine": cos_sim},
    )
    model = load_model(model_id, device="cpu")
    scores = st.compute_all_metrics(model, corpus_embeddings=emb[[row[d] for d in st.corpus_ids]])["cosine"]
    for k in ks:
        for ours_name, st_name in (
            ("ndcg", "ndcg@k"),
            ("mrr", "mrr@k"),
            ("recall", "recall@k"),
            ("precision", "precision@k"),
            ("accuracy", "accuracy@k"),
        ):
            assert ours[f"{ours_name}@{k}"] == pytest.approx(scores[st_name][k], abs=1e-6), (ours_name, k)
    assert 0.64 < ours["ndcg@10"] < 0.9 and ours["recall@100"] > 0.925
