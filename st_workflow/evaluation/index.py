"""Corpus indexes at several precisions: float32, int8 (scalar), binary (packed bits) and binary + rescoring.

* ``float32``: L2-normalised embeddings, exact inner product (cosine).
* ``int8``: one byte per dimension, quantised with per-dimension ranges calibrated on the corpus (the formula of
  ``sentence_transformers.quantize_embeddings``: 256 buckets between min and max); queries stay float and are scored
  against the bucket centres (asymmetric), so no query quantisation error is added.
* ``binary``: one bit per dimension (``x > 0``, packed big-endian as ``np.packbits``/ST's ``ubinary``); score =
  ``bits - Hamming distance``. Hamming uses the compiled popcount kernel on CPU when a C compiler exists
  (:mod:`.hamming_native`), else 64-bit words with a SWAR popcount in torch (also the GPU path); never a
  ``Q x N x bits`` broadcast.
* ``binary_rescore``: ``rescore_multiplier x k`` candidates by Hamming, re-ranked by ``float query . (+-1 bits)``
  (sentence-transformers' rescoring), so the index stays 1 bit per dimension.

Example:
    >>> import torch
    >>> emb = torch.nn.functional.normalize(torch.randn(50, 64, generator=torch.Generator().manual_seed(0)), dim=1)
    >>> idx = CorpusIndex.build(emb, "binary")
    >>> idx.bytes_per_doc
    8.0
    >>> idx.search(emb[:2], k=1, mode="binary", backend="torch").indices.tolist()
    [[0], [1]]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from st_workflow.evaluation import hamming_native
from st_workflow.evaluation.search import NEG_INF, SearchResult, chunk_topk, dot_scores, rerank, topk_scores

logger = logging.getLogger(__name__)

Precision = Literal["float32", "int8", "binary", "binary_rescore"]
StoragePrecision = Literal["float32", "int8", "binary"]
PRECISIONS: tuple[str, ...] = ("float32", "int8", "binary", "binary_rescore")

_M1 = 0x5555555555555555
_M2 = 0x3333333333333333
_M4 = 0x0F0F0F0F0F0F0F0F
_H01 = 0x0101010101010101
_BIT_SHIFTS = torch.arange(7, -1, -1, dtype=torch.uint8)


def storage_precision(precision: str) -> StoragePrecision:
    """The index a search precision reads (``binary_rescore`` reads the binary index)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {list(PRECISIONS)}")
    return "binary" if precision == "binary_rescore" else precision  # type: ignore[return-value]


def pack_bits(embeddings: torch.Tensor) -> torch.Tensor:
    """``(N, d)`` float -> ``(N, ceil(d/8))`` uint8, bit = ``x > 0``, most significant bit first (np.packbits)."""
    bits = (embeddings > 0).to(torch.uint8)
    pad = (-bits.shape[1]) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros((bits.shape[0], pad))], dim=1)
    weights = (1 << _BIT_SHIFTS.to(torch.int32)).to(bits.device)
    return (bits.view(bits.shape[0], -1, 8).to(torch.int32) * weights).sum(dim=2).to(torch.uint8)


def unpack_signs(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """Packed bits ``(..., B)`` -> ``(..., dim)`` float ``+1/-1`` vectors (the rescoring view of a binary code)."""
    shifts = _BIT_SHIFTS.to(packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    bits = bits.reshape(*packed.shape[:-1], -1)[..., :dim]
    return bits.float() * 2 - 1


def to_words(packed: torch.Tensor) -> torch.Tensor:
    """``(N, B)`` uint8 -> ``(N, ceil(B/8))`` int64 words (zero-padded), for the torch popcount."""
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


def hamming_distances(q_words: torch.Tensor, c_words: torch.Tensor) -> torch.Tensor:
    """``(q, W)`` x ``(n, W)`` int64 words -> ``(q, n)`` Hamming distances (int64)."""
    out = torch.zeros((q_words.shape[0], c_words.shape[0]), dtype=torch.int64, device=q_words.device)
    for w in range(q_words.shape[1]):
        out += popcount64(q_words[:, w : w + 1] ^ c_words[:, w].unsqueeze(0))
    return out


@dataclass
class CorpusIndex:
    """One corpus at one storage precision, in trec tie order (position = tie rank)."""

    precision: StoragePrecision
    """``float32``, ``int8`` or ``binary``."""
    data: torch.Tensor
    """float32 ``(N, d)`` | int8 codes ``(N, d)`` | uint8 packed bits ``(N, ceil(d/8))``."""
    dim: int
    """Embedding dimension."""
    ranges: torch.Tensor | None = None
    """int8 only: ``(2, d)`` per-dimension ``[min, max]`` of the calibration embeddings."""
    _planes: np.ndarray | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls, embeddings: torch.Tensor, precision: str, *, ranges: torch.Tensor | None = None
    ) -> CorpusIndex:
        """Quantise L2-normalised float embeddings ``(N, d)`` into an index for ``precision``."""
        storage = storage_precision(precision)
        emb = embeddings.float()
        dim = emb.shape[1]
        if storage == "float32":
            return cls("float32", emb.contiguous(), dim)
        if storage == "int8":
            if ranges is None:
                if emb.shape[0] == 0:
                    raise ValueError("int8 quantisation needs calibration embeddings; the corpus is empty")
                ranges = torch.stack([emb.min(dim=0).values, emb.max(dim=0).values])
            starts, steps = cls._int8_params(ranges.to(emb.device))
            codes = torch.clamp(torch.floor((emb - starts) / steps), 0, 255) - 128
            return cls("int8", codes.to(torch.int8).contiguous(), dim, ranges=ranges.float().cpu())
        return cls("binary", pack_bits(emb).contiguous(), dim)

    @staticmethod
    def _int8_params(ranges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        starts = ranges[0].float()
        steps = (ranges[1].float() - starts) / 255
        steps = torch.where(steps == 0, torch.ones_like(steps), steps)
        return starts, steps

    # ------------------------------------------------------------------ persistence (embedding cache)
    def state(self) -> dict[str, torch.Tensor]:
        """Tensors to persist (see :class:`st_workflow.evaluation.embeddings.EmbeddingCache`)."""
        out = {"data": self.data.cpu()}
        if self.ranges is not None:
            out["ranges"] = self.ranges.cpu()
        return out

    @classmethod
    def from_state(cls, precision: StoragePrecision, dim: int, state: dict[str, torch.Tensor]) -> CorpusIndex:
        return cls(precision, state["data"], dim, ranges=state.get("ranges"))

    # ------------------------------------------------------------------ size
    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the index (codes plus calibration ranges)."""
        extra = self.ranges.numel() * self.ranges.element_size() if self.ranges is not None else 0
        return int(self.data.numel() * self.data.element_size() + extra)

    @property
    def bytes_per_doc(self) -> float:
        """Index bytes per document (calibration ranges amortised over the corpus)."""
        return self.nbytes / max(len(self), 1)

    def to(self, device: str | torch.device) -> CorpusIndex:
        """A copy of the index on ``device`` (the search runs where the index lives)."""
        return CorpusIndex(self.precision, self.data.to(device), self.dim, ranges=self.ranges)

    # ------------------------------------------------------------------ search
    def search(
        self,
        queries: torch.Tensor,
        k: int,
        *,
        mode: str | None = None,
        rescore_multiplier: int = 4,
        backend: Literal["auto", "native", "torch"] = "auto",
        kernel_cache_dir: str | Path | None = None,
        corpus_chunk_size: int = 50_000,
        query_chunk_size: int = 1024,
    ) -> SearchResult:
        """Exact top-``k`` for L2-normalised float ``queries`` ``(Q, d)``, ties broken by lower position.

        Args:
            mode: the search precision; defaults to the index's own (``binary_rescore`` needs a binary index).
            backend: Hamming kernel for binary modes: ``native`` (compiled popcount, CPU), ``torch``, or ``auto``
                (native on CPU when it builds, else torch).
        """
        mode = mode or self.precision
        if storage_precision(mode) != self.precision:
            raise ValueError(f"a {self.precision} index cannot serve a {mode} search")
        queries = queries.float().to(self.data.device)
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {queries.shape[1]}, the index {self.dim}")
        chunks = {"corpus_chunk_size": corpus_chunk_size, "query_chunk_size": query_chunk_size}
        if mode == "float32":
            return topk_scores(dot_scores, queries, self.data, k, **chunks)
        if mode == "int8":
            assert self.ranges is not None
            starts, steps = self._int8_params(self.ranges.to(queries.device))

            def int8_scores(qb: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
                # q . (starts + (code + 128.5) * steps): the bucket centre of every dimension.
                return (qb * steps) @ (cb.float() + 128.5).T + (qb @ starts).unsqueeze(1)

            return topk_scores(int8_scores, queries, self.data, k, **chunks)
        if mode == "binary":
            return self._hamming(queries, k, backend, kernel_cache_dir, chunks)
        m = min(max(k * rescore_multiplier, k), len(self))
        cand = self._hamming(queries, m, backend, kernel_cache_dir, chunks).indices
        results_i, results_v = [], []
        step = max(1, 2**24 // max(1, m * self.dim))
        for s in range(0, queries.shape[0], step):
            c = cand[s : s + step]
            vectors = unpack_signs(self.data[c.clamp(min=0)], self.dim)
            r = rerank(queries[s : s + step], c, vectors, k)
            results_i.append(r.indices)
            results_v.append(r.scores)
        return SearchResult(indices=torch.cat(results_i), scores=torch.cat(results_v))

    def _hamming(
        self,
        queries: torch.Tensor,
        k: int,
        backend: str,
        kernel_cache_dir: str | Path | None,
        chunks: dict[str, int],
    ) -> SearchResult:
        bits = self.data.shape[1] * 8
        q_packed = pack_bits(queries)
        lib = None
        if backend in ("auto", "native") and self.data.device.type == "cpu":
            lib = hamming_native.load(kernel_cache_dir or Path(".cache/st-workflow"))
            if lib is None and backend == "native":
                raise RuntimeError("the native Hamming kernel is unavailable (no working C compiler)")
        if lib is not None:
            if self._planes is None:
                self._planes = hamming_native.to_planes(self.data.numpy())
            threads = max(1, min(torch.get_num_threads(), hamming_native.available_cpus()))
            idx, dist = hamming_native.topk(lib, q_packed.numpy(), self._planes, k, threads=threads)
            idx_t, dist_t = torch.from_numpy(idx), torch.from_numpy(dist)
            scores = torch.where(idx_t < 0, torch.full(dist_t.shape, NEG_INF), (bits - dist_t).float())
            return SearchResult(indices=idx_t, scores=scores)
        q_words, c_words = to_words(q_packed), to_words(self.data)
        # One (queries x docs) int64 block per word at a time: keep it near 2**24 elements (128 MiB).
        q_chunk = min(chunks["query_chunk_size"], 256)
        c_chunk = max(1024, min(chunks["corpus_chunk_size"], 2**24 // q_chunk))

        def ham_scores(qb: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
            return (bits - hamming_distances(qb, cb)).float()

        return topk_scores(
            ham_scores, q_words, c_words, k, corpus_chunk_size=c_chunk, query_chunk_size=q_chunk
        )


__all__ = ["PRECISIONS", "CorpusIndex", "chunk_topk", "pack_bits", "storage_precision", "unpack_signs"]
