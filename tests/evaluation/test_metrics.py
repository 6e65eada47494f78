"""IR metrics against hand-computed rankings: graded gains, MAP's denominator, ties, empty top-k, aggregation."""

from __future__ import annotations

import math
import random

import pytest

from st_workflow.evaluation.metrics import (
    aggregate,
    evaluate_rankings,
    evaluate_run,
    metric_names,
    rank_run,
    tie_order,
)


def test_mteb_reference_case_with_ties() -> None:
    # MTEB's own RetrievalEvaluator test (pytrec_eval values). Query "1" has a tie (docs "0" and "2" at 0.0).
    qrels = {"0": {"0": 1, "1": 1}, "1": {"1": 1}}
    run = {"0": {"0": 1.0, "1": 0.9, "2": 0.8}, "1": {"0": 0.0, "1": 1.0, "2": 0.0}}
    m = evaluate_run(run, qrels, ks=[1, 2, 3]).metrics
    assert [m[f"ndcg@{k}"] for k in (1, 2, 3)] == [1.0, 1.0, 1.0]
    assert [m[f"map@{k}"] for k in (1, 2, 3)] == [0.75, 1.0, 1.0]
    assert [m[f"recall@{k}"] for k in (1, 2, 3)] == [0.75, 1.0, 1.0]
    assert [m[f"precision@{k}"] for k in (1, 2, 3)] == pytest.approx([1.0, 0.75, 0.5])


def test_hand_computed_graded_query() -> None:
    # Ranking: d9 (non-relevant), d1 (grade 2), d7 (non-relevant), d3 (grade 1); a third relevant d5 is never found.
    qrels = {"q": {"d1": 2, "d3": 1, "d5": 1, "d8": 0}}
    r = evaluate_rankings({"q": ["d9", "d1", "d7", "d3"]}, qrels, ks=[1, 2, 4, 10]).metrics
    dcg4 = 2 / math.log2(3) + 1 / math.log2(5)
    idcg4 = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert r["ndcg@4"] == pytest.approx(dcg4 / idcg4)
    assert r["ndcg@1"] == 0.0
    assert r["mrr@1"] == 0.0 and r["mrr@2"] == 0.5 and r["mrr@10"] == 0.5
    assert r["recall@2"] == pytest.approx(1 / 3) and r["recall@4"] == pytest.approx(2 / 3)
    assert r["precision@4"] == 0.5
    assert r["precision@10"] == pytest.approx(2 / 10)  # P@k divides by k even when fewer docs were retrieved
    # MAP divides by every relevant document (3), not min(k, R) as sentence-transformers does.
    assert r["map@4"] == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert r["accuracy@1"] == 0.0 and r["accuracy@2"] == 1.0


def test_query_without_relevant_in_top_k_and_without_any_relevant() -> None:
    qrels = {"found": {"a": 1}, "missed": {"z": 1}, "none": {"a": 0}}
    res = evaluate_rankings(
        {"found": ["a", "b"], "missed": ["a", "b"], "none": ["a", "b"]}, qrels, ks=[1, 2], per_query=True
    )
    assert res.n_queries == 3 and res.n_queries_without_relevant == 1
    for q in ("missed", "none"):
        assert set(res.per_query[q].values()) == {0.0}
    # Averages include the zero queries, as pytrec_eval's per-query average does.
    assert res.metrics["ndcg@2"] == pytest.approx(1 / 3)
    assert res.metrics["mrr@2"] == pytest.approx(1 / 3)


def test_queries_missing_from_the_run_are_skipped() -> None:
    res = evaluate_rankings({"a": ["x"]}, {"a": {"x": 1}, "b": {"y": 1}}, ks=[1])
    assert res.n_queries == 1 and res.metrics["ndcg@1"] == 1.0


def test_ties_break_by_doc_id_descending_at_the_cutoff() -> None:
    # Three docs tie; trec_eval orders them c, b, a, so only "c" is in the top 1.
    run = {"q": {"a": 0.5, "b": 0.5, "c": 0.5, "d": 0.1}}
    assert rank_run(run["q"]) == ["c", "b", "a", "d"]
    assert evaluate_run(run, {"q": {"c": 1}}, ks=[1]).metrics["mrr@1"] == 1.0
    assert evaluate_run(run, {"q": {"a": 1}}, ks=[1, 3]).metrics["mrr@3"] == pytest.approx(1 / 3)
    assert tie_order(["a", "c", "b"]) == [1, 2, 0]


def test_agrees_with_sentence_transformers_on_binary_judgements() -> None:
    """On tie-free runs with binary qrels, ndcg/mrr/recall/precision/accuracy equal sentence-transformers'."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    rng = random.Random(7)
    docs = [f"d{i}" for i in range(40)]
    qrels = {f"q{i}": {d: 1 for d in rng.sample(docs, rng.randint(1, 4))} for i in range(25)}
    run = {q: {d: rng.random() for d in docs} for q in qrels}
    ks = [1, 3, 5, 10]
    ours = evaluate_run(run, qrels, ks=ks).metrics
    st = InformationRetrievalEvaluator(
        queries={q: q for q in qrels},
        corpus={d: d for d in docs},
        relevant_docs={q: set(v) for q, v in qrels.items()},
        mrr_at_k=ks,
        ndcg_at_k=ks,
        accuracy_at_k=ks,
        precision_recall_at_k=ks,
        map_at_k=ks,
        write_csv=False,
    )
    hits = [[{"corpus_id": d, "score": s} for d, s in run[q].items()] for q in st.queries_ids]
    theirs = st.compute_metrics(hits)
    for k in ks:
        assert ours[f"ndcg@{k}"] == pytest.approx(theirs["ndcg@k"][k], abs=1e-12)
        assert ours[f"mrr@{k}"] == pytest.approx(theirs["mrr@k"][k], abs=1e-12)
        assert ours[f"recall@{k}"] == pytest.approx(theirs["recall@k"][k], abs=1e-12)
        assert ours[f"precision@{k}"] == pytest.approx(theirs["precision@k"][k], abs=1e-12)
        assert ours[f"accuracy@{k}"] == pytest.approx(theirs["accuracy@k"][k], abs=1e-12)


def test_aggregate_mean_and_query_weighted_mean() -> None:
    a = evaluate_rankings({"q1": ["x"]}, {"q1": {"x": 1}}, ks=[1])  # 1 query, ndcg 1
    b = evaluate_rankings({f"q{i}": ["y"] for i in range(3)}, {f"q{i}": {"z": 1} for i in range(3)}, ks=[1])
    agg = aggregate({"a": a, "b": b})
    assert agg["mean"]["ndcg@1"] == 0.5
    assert agg["weighted"]["ndcg@1"] == 0.25


def test_metric_names_and_bad_ks() -> None:
    assert metric_names([10, 1])[:2] == ["ndcg@1", "ndcg@10"]
    with pytest.raises(ValueError, match="positive"):
        evaluate_rankings({}, {}, ks=[0])
