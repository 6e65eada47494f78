"""Retrieval metrics with the exact semantics MTEB reports (``pytrec_eval``/``trec_eval`` plus MTEB's own MRR).

Why re-implement instead of depending on ``pytrec_eval``: it is a C extension the project does not otherwise need,
and MTEB-exact numbers only need a handful of rules, which are spelled out (and tested) here:

* **Ranking**: documents are ordered by score descending; ties break by document id in *descending* string order,
  which is ``trec_eval``'s ``comp_sim_docno`` (``strcmp(b, a)``). Callers that rank by position pass lists that are
  already in that order (see :func:`rank_run`).
* **Relevant** means a qrels grade ``>= 1`` (trec_eval's default ``relevance_level``). Unjudged documents are
  non-relevant.
* ``ndcg@k``: linear gain = the qrels grade, discount ``log2(rank + 1)``; the ideal ranking is every judged document
  sorted by grade (``ndcg_cut``).
* ``map@k``: sum of precision at each relevant rank ``<= k`` divided by the number of relevant documents of the
  query, not by ``min(k, R)`` (``map_cut``; sentence-transformers divides by ``min(k, R)``, MTEB does not).
* ``recall@k`` = relevant retrieved in the top k / all relevant; ``precision@k`` = relevant in the top k / k (``P``).
* ``mrr@k`` = 1 / rank of the first relevant document within the top k, else 0 (MTEB's ``mrr``).
* ``accuracy@k`` = 1 when any relevant document is in the top k (MTEB's ``top_k_accuracy``).
* Every query that has judgements is averaged, including one whose judgements are all ``0`` (it scores 0 on every
  metric, as it does in trec_eval); such queries are counted in ``n_queries_without_relevant``.

Example:
    >>> qrels = {"q1": {"d1": 1, "d3": 1}}
    >>> res = evaluate_rankings({"q1": ["d2", "d1", "d3"]}, qrels, ks=[1, 3])
    >>> round(res.metrics["mrr@3"], 4), res.metrics["recall@1"], round(res.metrics["map@3"], 4)
    (0.5, 0.0, 0.5833)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

#: Metric families, in the order reports show them.
METRICS: tuple[str, ...] = ("ndcg", "mrr", "recall", "precision", "map", "accuracy")

Qrels = Mapping[str, Mapping[str, int]]


def metric_name(metric: str, k: int) -> str:
    """``metric_name("ndcg", 10) == "ndcg@10"``: the one naming scheme used in dumps, manifests and reports."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {list(METRICS)}")
    return f"{metric}@{k}"


def metric_names(ks: Iterable[int]) -> list[str]:
    """All metric names for the cut-offs ``ks`` (family-major order)."""
    ks = sorted(set(ks))
    return [metric_name(m, k) for m in METRICS for k in ks]


def tie_order(doc_ids: Sequence[str]) -> list[int]:
    """Positions of ``doc_ids`` in trec_eval's tie order (descending string order).

    Laying a corpus out in this order lets a search break score ties by *lower position first* and still match
    trec_eval exactly.

    Example:
        >>> tie_order(["a", "c", "b"])
        [1, 2, 0]
    """
    return sorted(range(len(doc_ids)), key=doc_ids.__getitem__, reverse=True)


def rank_run(scores: Mapping[str, float], k: int | None = None) -> list[str]:
    """Doc ids of one query's ``{doc_id: score}`` run in trec_eval order (score desc, then doc id desc).

    Example:
        >>> rank_run({"a": 1.0, "b": 1.0, "c": 2.0})
        ['c', 'b', 'a']
    """
    # Two stable sorts: by doc id descending, then by score descending.
    ordered = sorted(scores.items(), key=lambda kv: kv[0], reverse=True)
    ordered.sort(key=lambda kv: kv[1], reverse=True)
    ids = [d for d, _ in ordered]
    return ids if k is None else ids[:k]


@dataclass
class IRResult:
    """Averages over the evaluated queries, plus what was (not) evaluated."""

    metrics: dict[str, float]
    """``{"ndcg@10": ..., ...}`` averaged over ``n_queries``."""
    n_queries: int
    """Queries averaged (every query with judgements that was ranked)."""
    n_queries_without_relevant: int = 0
    """Evaluated queries whose judgements are all below 1 (they score 0)."""
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per-query values (only when requested)."""


def _query_metrics(ranked: Sequence[str], judged: Mapping[str, int], ks: Sequence[int]) -> dict[str, float]:
    kmax = max(ks)
    top = list(ranked[:kmax])
    grades = np.array([judged.get(d, 0) for d in top], dtype=np.float64)
    rel = grades >= 1
    gains = np.where(grades > 0, grades, 0.0)
    num_rel = sum(1 for g in judged.values() if g >= 1)
    discounts = 1.0 / np.log2(np.arange(2, kmax + 2, dtype=np.float64))
    ideal = np.array(sorted((g for g in judged.values() if g > 0), reverse=True)[:kmax], dtype=np.float64)
    cum_rel = np.cumsum(rel) if len(top) else np.zeros(0)
    first = int(np.argmax(rel)) + 1 if rel.any() else None
    prec_at_rank = cum_rel / np.arange(1, len(top) + 1) if len(top) else np.zeros(0)
    out: dict[str, float] = {}
    for k in ks:
        n = min(k, len(top))
        hits = float(cum_rel[n - 1]) if n else 0.0
        dcg = float(np.dot(gains[:n], discounts[:n]))
        idcg = float(np.dot(ideal[:k], discounts[: min(k, len(ideal))]))
        out[f"ndcg@{k}"] = dcg / idcg if idcg > 0 else 0.0
        out[f"mrr@{k}"] = 1.0 / first if first is not None and first <= k else 0.0
        out[f"recall@{k}"] = hits / num_rel if num_rel else 0.0
        out[f"precision@{k}"] = hits / k
        out[f"map@{k}"] = float(prec_at_rank[:n][rel[:n]].sum()) / num_rel if num_rel else 0.0
        out[f"accuracy@{k}"] = 1.0 if hits > 0 else 0.0
    return out


def evaluate_rankings(
    rankings: Mapping[str, Sequence[str]],
    qrels: Qrels,
    ks: Sequence[int] = (1, 5, 10, 100),
    *,
    per_query: bool = False,
) -> IRResult:
    """Score ranked lists (best first, ties already in trec_eval order) against ``qrels``.

    Queries in ``qrels`` that are missing from ``rankings`` are skipped, as ``pytrec_eval`` skips queries absent
    from the run; callers that rank every query never hit that case.

    Raises:
        ValueError: on an empty or non-positive ``ks``.
    """
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    names = metric_names(ks)
    sums = dict.fromkeys(names, 0.0)
    n = 0
    empty = 0
    details: dict[str, dict[str, float]] = {}
    for qid, judged in qrels.items():
        if qid not in rankings:
            continue
        values = _query_metrics(rankings[qid], judged, ks)
        for name in names:
            sums[name] += values[name]
        n += 1
        if not any(g >= 1 for g in judged.values()):
            empty += 1
        if per_query:
            details[qid] = values
    metrics = {name: (sums[name] / n if n else 0.0) for name in names}
    return IRResult(metrics=metrics, n_queries=n, n_queries_without_relevant=empty, per_query=details)


def evaluate_run(
    run: Mapping[str, Mapping[str, float]], qrels: Qrels, ks: Sequence[int] = (1, 5, 10, 100)
) -> IRResult:
    """``pytrec_eval``-style entry point: ``run`` is ``{query_id: {doc_id: score}}``.

    Example:
        >>> r = evaluate_run({"q": {"a": 0.5, "b": 0.5}}, {"q": {"a": 1}}, ks=[1])
        >>> r.metrics["precision@1"]  # the tie puts "b" first (doc id descending)
        0.0
    """
    kmax = max(ks)
    return evaluate_rankings({q: rank_run(s, kmax) for q, s in run.items()}, qrels, ks)


def aggregate(results: Mapping[str, IRResult]) -> dict[str, dict[str, float]]:
    """``{"mean": ..., "weighted": ...}`` over several tasks (qrels files or sub-benchmarks).

    ``mean`` weighs every task equally (how MTEB and NanoBEIR average); ``weighted`` weighs each task by its query
    count (the original's ``weightedmean``). Tasks with no evaluated query are left out of both.
    """
    usable = {t: r for t, r in results.items() if r.n_queries > 0}
    if not usable:
        return {"mean": {}, "weighted": {}}
    names = list(next(iter(usable.values())).metrics)
    total = sum(r.n_queries for r in usable.values())
    mean = {m: math.fsum(r.metrics[m] for r in usable.values()) / len(usable) for m in names}
    weighted = {m: math.fsum(r.metrics[m] * r.n_queries for r in usable.values()) / total for m in names}
    return {"mean": mean, "weighted": weighted}
