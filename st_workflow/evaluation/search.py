"""Exact top-k search in torch, chunked over queries and corpus, with trec_eval's tie order.

The corpus is assumed to be laid out in tie order (see :func:`st_workflow.evaluation.metrics.tie_order`), so "ties
break by lower corpus index" reproduces trec_eval. ``torch.topk`` breaks ties arbitrarily, so rows with ties at the
k-th score are re-selected with an integer key; results therefore do not depend on the chunk sizes.

Example:
    >>> import torch
    >>> q = torch.tensor([[1.0, 0.0]]); c = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    >>> r = topk_scores(lambda qs, cs: qs @ cs.T, q, c, k=2, corpus_chunk_size=2)
    >>> r.indices.tolist(), r.scores.tolist()
    ([[1, 2]], [[1.0, 1.0]])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

NEG_INF = float("-inf")


@dataclass
class SearchResult:
    """Top-k per query: corpus positions (``-1`` pads a corpus smaller than k) and their scores, best first."""

    indices: torch.Tensor
    """``(Q, k)`` int64."""
    scores: torch.Tensor
    """``(Q, k)`` float32 (``-inf`` on padding)."""


def chunk_topk(scores: torch.Tensor, k: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of a ``(Q, n)`` score block by (score desc, position asc); positions are shifted by ``offset``."""
    n = scores.shape[1]
    kk = min(k, n)
    if kk == 0:
        empty = torch.empty((scores.shape[0], 0), dtype=torch.long, device=scores.device)
        return scores.new_empty((scores.shape[0], 0)), empty
    vals, idx = scores.topk(kk, dim=1, largest=True, sorted=False)
    thr = vals.min(dim=1, keepdim=True).values
    boundary = (scores >= thr).sum(dim=1) > kk
    if bool(boundary.any()):
        rows = boundary.nonzero().squeeze(1)
        sub, t = scores[rows], thr[rows]
        pos = torch.arange(n, device=scores.device).expand_as(sub)
        key = torch.where(sub > t, pos, torch.full_like(pos, 2 * n))
        key = torch.where(sub == t, pos + n, key)
        sel = key.topk(kk, dim=1, largest=False, sorted=False).indices
        vals[rows], idx[rows] = sub.gather(1, sel), sel
    vals, idx = order_by_score(vals, idx)
    return vals, idx + offset


def order_by_score(vals: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by (score desc, index asc); index ``-1`` (padding) goes last among equal scores."""
    key_idx = torch.where(idx < 0, torch.iinfo(torch.long).max, idx)
    order = key_idx.argsort(dim=1, stable=True)
    vals, idx = vals.gather(1, order), idx.gather(1, order)
    vals, order = vals.sort(dim=1, descending=True, stable=True)
    return vals, idx.gather(1, order)


def merge_topk(
    vals_a: torch.Tensor, idx_a: torch.Tensor, vals_b: torch.Tensor, idx_b: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two candidate sets into the top-``k`` by (score desc, index asc)."""
    vals, idx = order_by_score(torch.cat([vals_a, vals_b], dim=1), torch.cat([idx_a, idx_b], dim=1))
    return vals[:, :k], idx[:, :k]


def _pad(vals: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    missing = k - vals.shape[1]
    if missing <= 0:
        return vals, idx
    q = vals.shape[0]
    vals = torch.cat([vals, vals.new_full((q, missing), NEG_INF)], dim=1)
    idx = torch.cat([idx, idx.new_full((q, missing), -1)], dim=1)
    return vals, idx


def topk_scores(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    queries: torch.Tensor,
    corpus: torch.Tensor,
    k: int,
    *,
    corpus_chunk_size: int = 50_000,
    query_chunk_size: int = 1024,
) -> SearchResult:
    """Exact top-``k`` of ``score_fn(query_block, corpus_block) -> (q, n)`` over the whole corpus.

    Memory stays at ``query_chunk_size x corpus_chunk_size`` scores whatever the corpus size.
    """
    n_q, n = queries.shape[0], corpus.shape[0]
    device = queries.device
    out_v = torch.full((n_q, k), NEG_INF, dtype=torch.float32, device=device)
    out_i = torch.full((n_q, k), -1, dtype=torch.long, device=device)
    for qs in range(0, n_q, query_chunk_size):
        qb = queries[qs : qs + query_chunk_size]
        best_v = torch.empty((qb.shape[0], 0), dtype=torch.float32, device=device)
        best_i = torch.empty((qb.shape[0], 0), dtype=torch.long, device=device)
        for cs in range(0, n, corpus_chunk_size):
            block = score_fn(qb, corpus[cs : cs + corpus_chunk_size]).float()
            v, i = chunk_topk(block, k, offset=cs)
            best_v, best_i = (v, i) if best_v.shape[1] == 0 else merge_topk(best_v, best_i, v, i, k)
        best_v, best_i = _pad(best_v, best_i, k)
        out_v[qs : qs + qb.shape[0]], out_i[qs : qs + qb.shape[0]] = best_v, best_i
    return SearchResult(indices=out_i, scores=out_v)


def dot_scores(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Inner products (cosine when both sides are L2-normalised)."""
    return q @ c.to(q.dtype).T


def rerank(
    queries: torch.Tensor, candidates: torch.Tensor, candidate_vectors: torch.Tensor, k: int
) -> SearchResult:
    """Re-score candidates with ``queries . vectors`` and keep the top ``k`` (ties: lower corpus index).

    Args:
        queries: ``(Q, d)`` float queries.
        candidates: ``(Q, m)`` corpus positions (``-1`` = padding).
        candidate_vectors: ``(Q, m, d)`` float vectors of the candidates.
    """
    scores = torch.einsum("qd,qmd->qm", queries.float(), candidate_vectors.float())
    scores = torch.where(candidates < 0, torch.full_like(scores, NEG_INF), scores)
    scores, cand = order_by_score(scores, candidates)
    scores, cand = _pad(scores[:, :k], cand[:, :k], k)
    return SearchResult(indices=cand, scores=scores)
