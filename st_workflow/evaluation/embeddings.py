"""Encoding with an on-disk corpus-embedding cache, multi-process/multi-GPU pools and DDP sharing.

A corpus is embedded once per (model weights hash, corpus hash, max sequence length, precision): the cache key
never uses a model *name*, so a retrained ``fine_tuned`` directory gets new embeddings while an unchanged checkpoint
evaluated under another name reuses them.

Example:
    >>> cache = EmbeddingCache("/tmp/st-emb-doctest")
    >>> key = cache.key(weights="w", corpus="c", max_seq_length=128, precision="float32")
    >>> cache.load(key) is None
    True
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from st_workflow import atomic

# Re-exported (they lived here): what identifies a model and a loaded corpus is defined in one place each.
from st_workflow.benchmark_hashes import corpus_hash as corpus_hash
from st_workflow.fingerprints import model_hash as model_hash
from st_workflow.fingerprints import module_hash as module_hash
from st_workflow.fingerprints import weights_hash as weights_hash
from st_workflow.hashing import stable_hash

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)


Kind = Literal["query", "document"]


# ---------------------------------------------------------------------------------------------- cache
def _npy_tensor(path: Path, mmap: bool) -> torch.Tensor:
    if not mmap:
        return torch.from_numpy(np.load(path))
    import warnings

    with warnings.catch_warnings():  # a read-only memmap: torch warns that writes would fail; none are made
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.load(path, mmap_mode="r"))


class EmbeddingCache:
    """Content-addressed corpus indexes under ``<root>/<key[:2]>/<key>/`` (``.npy`` tensors + ``meta.json``).

    Writes are atomic (temp dir + rename), so concurrent evaluations or a crash never leave a half-written entry.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(*, weights: str, corpus: str, max_seq_length: int, precision: str, **extra: Any) -> str:
        """Cache key; ``extra`` holds whatever else changes the vectors (document prompt, truncation dim...)."""
        return stable_hash(
            {
                "weights": weights,
                "corpus": corpus,
                "max_seq_length": max_seq_length,
                "precision": precision,
                "format": 1,
                **extra,
            }
        )

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def load(self, key: str, *, mmap: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """``(tensors, meta)`` or ``None`` on a miss (or an unreadable entry, which is then ignored).

        ``mmap``: the tensors are read-only views of the memory-mapped ``.npy`` files (rows are paged in when
        read: an int8 rescoring corpus stays on disk)."""
        d = self.path(key)
        meta_path = d / "meta.json"
        if not meta_path.is_file():
            self.misses += 1
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            tensors = {name: _npy_tensor(d / f"{name}.npy", mmap) for name in meta["tensors"]}
        except (OSError, ValueError, KeyError) as e:
            logger.warning("ignoring unreadable embedding cache entry %s: %s", d, e)
            self.misses += 1
            return None
        self.hits += 1
        return tensors, meta

    def save(self, key: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
        d = self.path(key)
        with atomic.atomic_dir(d) as tmp:
            for name, t in tensors.items():
                np.save(tmp / f"{name}.npy", t.detach().cpu().numpy())
            meta = {**meta, "tensors": sorted(tensors), "created": time.time()}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return d


# ---------------------------------------------------------------------------------------------- encoding
def cuda_devices() -> list[str]:
    """Every visible CUDA device (empty on CPU-only machines)."""
    if not torch.cuda.is_available():
        return []
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def distributed_world() -> tuple[int, int]:
    """``(rank, world_size)`` of an initialised default process group, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Encoder:
    """Encodes queries and documents with one model, the way MTEB does (the model's max_seq_length, its own
    query/document prompts unless a prompt is given), returning float32 tensors on CPU.

    * ``devices`` with several entries (e.g. every GPU) encodes through a sentence-transformers multi-process pool,
      started once and reused for every call;
    * inside an initialised ``torch.distributed`` group each rank encodes a shard and the shards are all-gathered
      (see :func:`st_workflow.evaluation.distributed.encode_sharded`), so no rank idles.
    """

    def __init__(
        self,
        model: SentenceTransformer,
        *,
        batch_size: int = 64,
        devices: Sequence[str] | None = None,
        distributed: bool = True,
        show_progress_bar: bool = False,
        dtype: str = "float32",
    ) -> None:
        self.model = model
        self.dtype = dtype
        """``float32`` or ``bfloat16`` (autocast of the forward pass; the weights stay as they are)."""
        self.batch_size = batch_size
        self.devices = list(devices or [])
        self.distributed = distributed
        self.show_progress_bar = show_progress_bar
        self._pool: dict[str, Any] | None = None

    def __enter__(self) -> Encoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the multi-process pool, if one was started."""
        if self._pool is not None:
            self.model.stop_multi_process_pool(self._pool)
            self._pool = None

    def _pool_or_none(self) -> dict[str, Any] | None:
        if len(self.devices) < 2:
            return None
        if self._pool is None:
            logger.info("starting an encoding pool on %s", ", ".join(self.devices))
            self._pool = self.model.start_multi_process_pool(self.devices)
        return self._pool

    def encode(self, texts: Sequence[str], kind: Kind, prompt: str | None = None) -> torch.Tensor:
        """``(len(texts), d)`` float32 embeddings (not normalised) in input order."""
        texts = list(texts)
        if not texts:
            dim = (
                self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension") else 0
            )
            return torch.empty((0, dim or 0), dtype=torch.float32)
        _, world = distributed_world()
        # Inside sentence-transformers' own DDP evaluation (rank 0 evaluates while the other ranks serve its encode
        # calls) the model already distributes encode(); an all-gather of ours would wait for ranks that never come.
        served = getattr(self.model, "_distributed_inference", None)
        if self.distributed and world > 1 and not served:
            from st_workflow.evaluation.distributed import encode_sharded

            return encode_sharded(self.model, texts, kind=kind, batch_size=self.batch_size, prompt=prompt)
        fn = self.model.encode_query if kind == "query" else self.model.encode_document
        kwargs: dict[str, Any] = {
            "batch_size": self.batch_size,
            "show_progress_bar": self.show_progress_bar,
            "convert_to_tensor": True,
        }
        if prompt is not None:
            kwargs["prompt"] = prompt
        # When served, pass no device or pool: encode() then routes through the trainer's distributed inference.
        pool = None if served else self._pool_or_none()
        if pool is not None:
            kwargs["pool"] = pool
            kwargs["convert_to_tensor"] = False
        elif len(self.devices) == 1 and not served:
            kwargs["device"] = self.devices[0]
        from st_workflow.models.dtype import autocast

        with autocast(self.dtype, str(kwargs.get("device") or self.model.device)):
            out = fn(texts, **kwargs)
        out = out if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))
        return out.detach().float().cpu()


def normalize(emb: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows (cosine = inner product afterwards)."""
    return torch.nn.functional.normalize(emb.float(), p=2, dim=1)


def default_threads() -> int:
    """CPU threads this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1
