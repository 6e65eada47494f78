"""Hamming distance on packed binary codes: the one implementation every caller uses.

Codes are ``np.packbits``/sentence-transformers ``ubinary`` bytes (``(N, ceil(d/8))`` uint8, most significant bit
first). Distances are computed on 64-bit words with a SWAR popcount, one word at a time, so memory stays at
``Q x N`` int64 — never the ``Q x N x bytes`` broadcast a lookup-table version builds. Exact top-k over a large
corpus goes through :meth:`st_workflow.evaluation.index.CorpusIndex.search`, which uses the compiled popcount
kernel (:mod:`.hamming_native`) on CPU and these functions elsewhere.

Example:
    >>> import numpy as np
    >>> a = np.packbits(np.array([[1, 0, 1, 1], [0, 0, 0, 0]], dtype=np.uint8), axis=1)
    >>> hamming_distances(a, a).tolist()
    [[0, 3], [3, 0]]
"""

from __future__ import annotations

from typing import overload

import numpy as np
import torch

_M1 = 0x5555555555555555
_M2 = 0x3333333333333333
_M4 = 0x0F0F0F0F0F0F0F0F
_H01 = 0x0101010101010101


def to_words(packed: torch.Tensor) -> torch.Tensor:
    """``(N, B)`` uint8 -> ``(N, ceil(B/8))`` int64 words (zero-padded, so padding never adds distance)."""
    pad = (-packed.shape[1]) % 8
    if pad:
        packed = torch.cat([packed, packed.new_zeros((packed.shape[0], pad))], dim=1)
    return packed.contiguous().view(torch.int64)


def popcount64(x: torch.Tensor) -> torch.Tensor:
    """Bit count of every int64 element (SWAR; correct for negative values under arithmetic shifts)."""
    x = x - ((x >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4
    return (x * _H01) >> 56


def word_distances(q_words: torch.Tensor, c_words: torch.Tensor) -> torch.Tensor:
    """``(q, W)`` x ``(n, W)`` int64 words -> ``(q, n)`` Hamming distances (int64)."""
    out = torch.zeros((q_words.shape[0], c_words.shape[0]), dtype=torch.int64, device=q_words.device)
    for w in range(q_words.shape[1]):
        out += popcount64(q_words[:, w : w + 1] ^ c_words[:, w].unsqueeze(0))
    return out


def _as_words(codes: torch.Tensor) -> torch.Tensor:
    if codes.dtype == torch.int64:
        return codes
    if codes.dtype != torch.uint8:
        raise TypeError(f"packed codes must be uint8 bytes or int64 words, got {codes.dtype}")
    return to_words(codes)


@overload
def hamming_distances(query_codes: np.ndarray, corpus_codes: np.ndarray) -> np.ndarray: ...
@overload
def hamming_distances(query_codes: torch.Tensor, corpus_codes: torch.Tensor) -> torch.Tensor: ...


def hamming_distances(query_codes, corpus_codes):  # type: ignore[no-untyped-def]
    """``(Q, N)`` Hamming distances between packed codes.

    Accepts packed ``uint8`` bytes (``quantize_embeddings(..., "ubinary")``) or int64 words (:func:`to_words`), as
    numpy arrays (returns int64 numpy) or torch tensors (returns int64 torch, on the codes' device).
    """
    as_numpy = isinstance(query_codes, np.ndarray)
    q = torch.from_numpy(np.ascontiguousarray(query_codes)) if as_numpy else query_codes
    c = (
        torch.from_numpy(np.ascontiguousarray(corpus_codes))
        if isinstance(corpus_codes, np.ndarray)
        else corpus_codes
    )
    qw, cw = _as_words(q), _as_words(c.to(q.device))
    if qw.shape[1] != cw.shape[1]:
        raise ValueError(f"query codes have {qw.shape[1]} words, corpus codes {cw.shape[1]}")
    out = word_distances(qw, cw)
    return out.numpy() if as_numpy else out


__all__ = ["hamming_distances", "popcount64", "to_words", "word_distances"]
