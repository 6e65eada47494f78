"""Exact search: chunk invariance with ties, binary packing and Hamming ranks vs a float/numpy reference,
int8 and rescoring quality, index sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from st_workflow.evaluation import hamming_native
from st_workflow.evaluation.index import CorpusIndex, hamming_distances, pack_bits, popcount64, to_words
from st_workflow.evaluation.metrics import evaluate_rankings, rank_run, tie_order
from st_workflow.evaluation.search import dot_scores, topk_scores


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def test_topk_is_exact_and_chunk_invariant_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    # Integer-valued scores: plenty of ties, also across chunk boundaries.
    q = torch.randint(-2, 3, (7, 4), generator=g).float()
    c = torch.randint(-2, 3, (53, 4), generator=g).float()
    full = q @ c.T
    ref_i = [sorted(range(53), key=lambda j, r=row: (-float(r[j]), j))[:10] for row in full]
    for cc, qc in [(1, 1), (5, 3), (7, 100), (1000, 2)]:
        r = topk_scores(dot_scores, q, c, 10, corpus_chunk_size=cc, query_chunk_size=qc)
        assert r.indices.tolist() == ref_i, (cc, qc)


def test_position_ties_reproduce_trec_eval_order() -> None:
    ids = ["a", "c", "b", "e", "d"]
    scores = [0.5, 0.5, 0.5, 0.9, 0.1]
    order = tie_order(ids)  # corpus laid out in tie order
    c = torch.tensor([[scores[i]] for i in order])
    r = topk_scores(dot_scores, torch.tensor([[1.0]]), c, 5)
    assert [ids[order[i]] for i in r.indices[0].tolist()] == rank_run(dict(zip(ids, scores, strict=True)))


def test_pack_bits_matches_numpy_and_popcount_is_exact() -> None:
    emb = torch.randn(9, 21, generator=torch.Generator().manual_seed(1))
    assert np.array_equal(pack_bits(emb).numpy(), np.packbits((emb > 0).numpy(), axis=1))
    x = torch.tensor([0, -1, 1, 2**62, -(2**63), 0x0F0F], dtype=torch.int64)
    assert popcount64(x).tolist() == [0, 64, 1, 1, 1, 8]


def _numpy_hamming_topk(q: torch.Tensor, c: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    qb, cb = np.packbits((q > 0).numpy(), axis=1), np.packbits((c > 0).numpy(), axis=1)
    dist = np.unpackbits(qb[:, None, :] ^ cb[None, :, :], axis=2).sum(axis=2)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(dist, order, axis=1)


@pytest.mark.parametrize("dim", [64, 384, 100])
def test_torch_hamming_ranks_equal_a_brute_force_reference(dim: int) -> None:
    c, q = _unit(700, dim, 2), _unit(9, dim, 3)
    index = CorpusIndex.build(c, "binary")
    r = index.search(q, 50, backend="torch", corpus_chunk_size=128, query_chunk_size=4)
    ref_i, ref_d = _numpy_hamming_topk(q, c, 50)
    assert np.array_equal(r.indices.numpy(), ref_i)
    bits = index.data.shape[1] * 8
    assert np.array_equal(bits - r.scores.numpy(), ref_d)
    words = hamming_distances(to_words(pack_bits(q)), to_words(index.data))
    assert words.shape == (9, 700)


def test_native_hamming_kernel_equals_the_torch_kernel(test_cache_dir) -> None:
    lib = hamming_native.load(test_cache_dir)
    if lib is None:
        pytest.skip("no C compiler: the native Hamming kernel cannot be built here")
    for dim, n, k in [(384, 5000, 100), (128, 300, 10), (72, 40, 64)]:
        c, q = _unit(n, dim, n), _unit(33, dim, n + 1)
        index = CorpusIndex.build(c, "binary")
        native = index.search(q, k, backend="native", kernel_cache_dir=test_cache_dir)
        ref_i, _ = _numpy_hamming_topk(q, c, min(k, n))
        got = native.indices.numpy()
        assert np.array_equal(got[:, : min(k, n)], ref_i), (dim, n, k)
        assert (got[:, min(k, n) :] == -1).all()
        torch_r = index.search(q, k, backend="torch")
        assert torch.equal(native.indices, torch_r.indices)


def _recall_vs_float(precision: str, **kw) -> float:
    # Clustered data: 60 topics, 20 noisy members each; the float32 top-10 is the relevance ground truth.
    g = torch.Generator().manual_seed(4)
    centers = torch.randn(60, 96, generator=g)
    corpus = torch.nn.functional.normalize(
        centers.repeat_interleave(20, 0) + 0.9 * torch.randn(1200, 96, generator=g), dim=1
    )
    queries = torch.nn.functional.normalize(centers[:40] + 0.9 * torch.randn(40, 96, generator=g), dim=1)
    truth = CorpusIndex.build(corpus, "float32").search(queries, 10).indices
    qrels = {str(i): {str(j): 1 for j in row.tolist()} for i, row in enumerate(truth)}
    got = CorpusIndex.build(corpus, precision).search(queries, 10, mode=precision, **kw).indices
    rankings = {str(i): [str(j) for j in row.tolist()] for i, row in enumerate(got)}
    return evaluate_rankings(rankings, qrels, ks=[10]).metrics["recall@10"]


def test_rescoring_improves_over_plain_binary_and_int8_is_near_float() -> None:
    binary = _recall_vs_float("binary", backend="torch")
    rescored = _recall_vs_float("binary_rescore", backend="torch", rescore_multiplier=4)
    int8 = _recall_vs_float("int8")
    assert rescored > binary + 0.05, (binary, rescored)
    assert int8 > 0.9 > binary


def test_index_bytes_per_document() -> None:
    emb = _unit(1000, 384, 5)
    f32, i8, b = (CorpusIndex.build(emb, p) for p in ("float32", "int8", "binary"))
    assert f32.bytes_per_doc == 1536 and b.bytes_per_doc == 48
    assert f32.bytes_per_doc / b.bytes_per_doc == 32
    assert i8.bytes_per_doc == pytest.approx(384 + 2 * 384 * 4 / 1000)  # codes + amortised [min, max] ranges
    with pytest.raises(ValueError, match="cannot serve"):
        f32.search(emb[:1], 1, mode="binary")
