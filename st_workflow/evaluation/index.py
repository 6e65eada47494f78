"""Corpus indexes at several precisions: float32, int8 (scalar), binary (packed bits) and binary + rescoring.

* ``float32``: L2-normalised embeddings, exact inner product (cosine).
* ``int8``: one byte per dimension, quantised with per-dimension ranges calibrated on the corpus (the formula of
  ``sentence_transformers.quantize_embeddings``: 256 buckets between min and max); queries stay float and are scored
  against the bucket centres (asymmetric), so no query quantisation error is added.
* ``binary``: one bit per dimension (``x > 0``, packed big-endian as ``np.packbits``/ST's ``ubinary``); score =
  ``bits - Hamming distance``. Hamming uses the compiled popcount kernel on CPU when a C compiler exists
  (:mod:`.hamming_native`), else 64-bit words with a SWAR popcount in torch (also the GPU path); never a
  ``Q x N x bits`` broadcast.
* ``binary_rescore``: ``rescore_multiplier x k`` candidates by Hamming, re-ranked with the float query against
  the ``+-1`` codes themselves (the index stays 1 bit per dimension) or, with ``rescore_index``, against an int8
  corpus — typically memory-mapped from disk, so only the candidates' rows are read (the sentence-transformers
  quantization guide: binary index in memory, int8 on disk). ``binary_rescore@<m>`` pins the multiplier.

Hamming distances come from :mod:`.hamming` (the one implementation).

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
from st_workflow.evaluation.hamming import hamming_distances, popcount64, to_words, word_distances
from st_workflow.evaluation.search import NEG_INF, SearchResult, chunk_topk, dot_scores, rerank, topk_scores

logger = logging.getLogger(__name__)

Precision = Literal["float32", "int8", "binary", "binary_rescore"]
StoragePrecision = Literal["float32", "int8", "binary"]
PRECISIONS: tuple[str, ...] = ("float32", "int8", "binary", "binary_rescore")

_BIT_SHIFTS = torch.arange(7, -1, -1, dtype=torch.uint8)


def parse_precision(precision: str) -> tuple[str, int | None]:
    """``"binary_rescore@8"`` -> ``("binary_rescore", 8)``: a rescoring precision may pin its multiplier.

    Example:
        >>> parse_precision("binary_rescore@8"), parse_precision("int8")
        (('binary_rescore', 8), ('int8', None))
    """
    name, sep, mult = precision.partition("@")
    if name not in PRECISIONS or (sep and (name != "binary_rescore" or not mult.isdigit() or int(mult) < 1)):
        raise ValueError(
            f"unknown precision {precision!r}; known: {list(PRECISIONS)} (and binary_rescore@<multiplier>)"
        )
    return name, int(mult) if sep else None


def storage_precision(precision: str) -> StoragePrecision:
    """The index a search precision reads (``binary_rescore`` reads the binary index)."""
    name, _ = parse_precision(precision)
    return "binary" if name == "binary_rescore" else name  # type: ignore[return-value]


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
        rescore_index: CorpusIndex | None = None,
    ) -> SearchResult:
        """Exact top-``k`` for L2-normalised float ``queries`` ``(Q, d)``, ties broken by lower position.

        Args:
            mode: the search precision; defaults to the index's own (``binary_rescore`` needs a binary index;
                ``binary_rescore@8`` pins the multiplier to 8).
            rescore_multiplier: binary + rescore: ``multiplier x k`` Hamming candidates are re-ranked.
            backend: Hamming kernel for binary modes: ``native`` (compiled popcount, CPU), ``torch``, or ``auto``
                (native on CPU when it builds, else torch).
            rescore_index: binary + rescore: the corpus the candidates are re-scored against (e.g. an int8 index,
                memory-mapped from disk); ``None``: the ``+-1`` codes themselves (no extra storage).
        """
        mode = mode or self.precision
        name, pinned = parse_precision(mode)
        if storage_precision(mode) != self.precision:
            raise ValueError(f"a {self.precision} index cannot serve a {mode} search")
        queries = queries.float().to(self.data.device)
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {queries.shape[1]}, the index {self.dim}")
        chunks = {"corpus_chunk_size": corpus_chunk_size, "query_chunk_size": query_chunk_size}
        if name == "float32":
            return topk_scores(dot_scores, queries, self.data, k, **chunks)
        if name == "int8":
            assert self.ranges is not None
            starts, steps = self._int8_params(self.ranges.to(queries.device))

            def int8_scores(qb: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
                # q . (starts + (code + 128.5) * steps): the bucket centre of every dimension.
                return (qb * steps) @ (cb.float() + 128.5).T + (qb @ starts).unsqueeze(1)

            return topk_scores(int8_scores, queries, self.data, k, **chunks)
        if name == "binary":
            return self._hamming(queries, k, backend, kernel_cache_dir, chunks)
        if rescore_index is not None and (len(rescore_index) != len(self) or rescore_index.dim != self.dim):
            raise ValueError(
                f"the rescoring corpus has {len(rescore_index)} x {rescore_index.dim} vectors, "
                f"the index {len(self)} x {self.dim}"
            )
        mult = pinned or rescore_multiplier
        m = min(max(k * mult, k), len(self))
        cand = self._hamming(queries, m, backend, kernel_cache_dir, chunks).indices
        source = rescore_index or self
        results_i, results_v = [], []
        step = max(1, 2**24 // max(1, m * self.dim))
        for s in range(0, queries.shape[0], step):
            c = cand[s : s + step]
            vectors = source.vectors(c.cpu() if source.data.device.type == "cpu" else c).to(queries.device)
            r = rerank(queries[s : s + step], c, vectors, k)
            results_i.append(r.indices)
            results_v.append(r.scores)
        return SearchResult(indices=torch.cat(results_i), scores=torch.cat(results_v))

    def vectors(self, positions: torch.Tensor) -> torch.Tensor:
        """Float vectors of corpus ``positions`` (any shape; ``-1`` padding reads row 0): the stored float32,
        the int8 bucket centres, or the ``+-1`` view of binary codes. Only those rows are read, so a
        memory-mapped index (:meth:`memmap`) pages in just the candidates."""
        pos = positions.clamp(min=0)
        if self.precision == "float32":
            return self.data[pos].float()
        if self.precision == "int8":
            assert self.ranges is not None
            starts, steps = self._int8_params(self.ranges)
            codes = self.data[pos.reshape(-1)].float().reshape(*pos.shape, self.dim)
            return starts.to(codes.device) + (codes + 128.5) * steps.to(codes.device)
        return unpack_signs(self.data[pos], self.dim)

    def prepare(self, backend: str = "auto", kernel_cache_dir: str | Path | None = None) -> None:
        """Build what a binary search needs once (the compiled kernel, the bit planes), so a timed search
        measures searching only."""
        if self.precision != "binary" or backend == "torch" or self.data.device.type != "cpu":
            return
        if (
            hamming_native.load(kernel_cache_dir or Path(".cache/st-workflow")) is not None
            and self._planes is None
        ):
            self._planes = hamming_native.to_planes(self.data.numpy())

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
            return (bits - word_distances(qb, cb)).float()

        return topk_scores(
            ham_scores, q_words, c_words, k, corpus_chunk_size=c_chunk, query_chunk_size=q_chunk
        )


__all__ = [
    "PRECISIONS",
    "CorpusIndex",
    "chunk_topk",
    "hamming_distances",
    "pack_bits",
    "parse_precision",
    "popcount64",
    "storage_precision",
    "to_words",
    "unpack_signs",
]
