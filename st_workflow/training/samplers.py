"""Seeded, resumable multi-source batch sampling.

Every batch comes from one source (in-batch negatives never cross sources, and each source keeps its own loss),
holds no text twice (a repeated text would be its own false negative), and is a pure function of
``(seed, epoch, source, pass)``. A resumed run therefore replays exactly the same batch order and Hugging Face's
``skip_first_batches`` lands on the very batch an uninterrupted run would train on next; the original workflow
re-shuffled without a seed instead.

Strategies (how many batches each source gets per epoch, ``L_i`` = full batches in one pass over source ``i``):

* ``weighted`` (the original's ``WeightedBatchSampler``): ``round(L_i * weight_i)``; weights are multipliers, a
  weight above 1 repeats the source (each repetition is a fresh seeded pass), below 1 uses part of it;
* ``proportional``: ``L_i`` (every row once per epoch, as sentence-transformers' ``PROPORTIONAL``);
* ``round_robin``: ``min(L)`` each, interleaved in source order (as sentence-transformers' ``ROUND_ROBIN``);
* ``temperature``: the same total as proportional, split with ``p_i ~ n_i ** (1 / T)`` (T = 1 is proportional,
  large T tends to uniform), repeating small sources as needed.

``replay_share`` (anti-forgetting replay): the sources marked ``replay`` are left out of the strategy and together
get ``round(N * share / (1 - share))`` batches, where ``N`` is what the strategy gave the others, split between
them by size (each at least one, a small one repeated in fresh seeded passes). So a replay share of 0.2 makes one
batch in five a replay batch whatever the sizes.

Under DDP with ``world_size`` ranks the sampler builds *global* batches of ``batch_size * world_size`` distinct
texts from one source and emits them as ``world_size`` consecutive per-rank batches. Accelerate's
``BatchSamplerShard`` hands batch ``j`` to rank ``j % world_size``, so at every step all ranks train on the same
source with the same loss, ``gather_across_devices`` only gathers negatives of that source, and all ranks hold equal
batch sizes (which ``all_gather`` needs).

Length grouping sorts each window of ``length_window`` global batches of the seeded permutation by length before
cutting batches, then shuffles the batches, so padding drops while the batch order stays random.

Example:
    >>> import numpy as np
    >>> idx = SourceIndex("a", hashes=np.arange(10).reshape(10, 1), lengths=np.ones(10, dtype=np.int32))
    >>> plan = build_plan([idx], batch_size=4, seed=0, epoch=0)
    >>> [(s, len(b)) for s, b in plan]
    [(0, 4), (0, 4)]
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

import numpy as np
from sentence_transformers.base.sampler import MultiDatasetDefaultBatchSampler
from torch.utils.data import ConcatDataset

STRATEGIES = ("weighted", "proportional", "round_robin", "temperature")
_MAX_TOP_UP_PASSES = 4


@dataclass
class SourceIndex:
    """What sampling needs to know about one source, without touching its texts.

    Attributes:
        name: source name.
        hashes: ``(rows, columns)`` int64 hashes of every text of every row (equal text, equal hash).
        lengths: ``(rows,)`` token (or character) length of each row, summed over its columns.
        weight: batches-per-epoch multiplier (``weighted`` strategy).
        replay: an anti-forgetting replay source (see ``replay_share``).
    """

    name: str
    hashes: np.ndarray
    lengths: np.ndarray
    weight: float = 1.0
    replay: bool = False

    def __len__(self) -> int:
        return int(self.hashes.shape[0])

    @classmethod
    def load(cls, directory: str | Path, name: str, weight: float = 1.0, replay: bool = False) -> SourceIndex:
        """Memory-map ``hashes.npy`` and ``lengths.npy`` written by the pre-tokenization stage."""
        d = Path(directory)
        return cls(
            name=name,
            hashes=np.load(d / "hashes.npy", mmap_mode="r"),
            lengths=np.load(d / "lengths.npy", mmap_mode="r"),
            weight=weight,
            replay=replay,
        )


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key])))


def _ordered_rows(
    index: SourceIndex, rng: np.random.Generator, batch_size: int, group_by_length: bool, length_window: int
) -> np.ndarray:
    order = rng.permutation(len(index))
    if not group_by_length:
        return order
    window = max(batch_size * length_window, batch_size)
    lengths = np.asarray(index.lengths)
    chunks = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunks.append(chunk[np.argsort(-lengths[chunk], kind="stable")])
    return np.concatenate(chunks) if chunks else order


def _greedy_batches(
    index: SourceIndex, order: np.ndarray, batch_size: int, no_duplicates: bool
) -> tuple[list[list[int]], list[int]]:
    """Cut ``order`` into full batches without repeated texts; returns (full batches, rows left over).

    A row whose text is already in the current batch is deferred (kept in order) to a later batch, as
    sentence-transformers' ``NoDuplicatesBatchSampler`` does.
    """
    if not no_duplicates:
        n_full = len(order) // batch_size
        full = [order[i * batch_size : (i + 1) * batch_size].tolist() for i in range(n_full)]
        return full, order[n_full * batch_size :].tolist()
    hashes = np.asarray(index.hashes)
    remaining: deque[int] = deque(int(i) for i in order)
    full: list[list[int]] = []
    while remaining:
        batch: list[int] = []
        seen: set[int] = set()
        skipped: list[int] = []
        while remaining and len(batch) < batch_size:
            i = remaining.popleft()
            row = hashes[i].tolist()
            if not seen.isdisjoint(row):
                skipped.append(i)
                continue
            batch.append(i)
            seen.update(row)
        remaining.extendleft(reversed(skipped))
        if len(batch) < batch_size:
            return full, batch + list(remaining)
        full.append(batch)
    return full, []


def full_batches_per_pass(n_rows: int, batch_size: int) -> int:
    """Batches one pass over a source yields: ``n // batch_size``, or 1 (partial) for a source smaller than a batch."""
    return max(1, n_rows // batch_size)


def source_pass(
    index: SourceIndex,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    source_id: int,
    pass_no: int,
    no_duplicates: bool = True,
    group_by_length: bool = False,
    length_window: int = 32,
    allow_partial: bool = True,
) -> list[list[int]]:
    """The batches of one seeded pass over a source (row indices local to the source).

    The count is always :func:`full_batches_per_pass`, so an epoch's length never depends on the shuffle: when
    duplicate texts leave a pass short, rows are redrawn from further seeded permutations (each batch still holds
    no duplicate), as sentence-transformers does.

    Raises:
        ValueError: the source has too few distinct texts to fill a batch (naming the source).
    """
    n = len(index)
    if n == 0:
        raise ValueError(f"training source {index.name!r} has no rows")
    target = full_batches_per_pass(n, batch_size)
    rng = _rng(seed, epoch, source_id, pass_no)
    if n < batch_size:
        if not allow_partial:
            raise ValueError(
                f"training source {index.name!r} has {n} rows, fewer than one global batch ({batch_size}); "
                "lower training.batch_size or the number of processes, or drop the source"
            )
        full, rest = _greedy_batches(index, rng.permutation(n), n, no_duplicates)
        return full or [rest[: max(1, len(rest))]]
    order = _ordered_rows(index, rng, batch_size, group_by_length, length_window)
    batches, _ = _greedy_batches(index, order, batch_size, no_duplicates)
    extra = 0
    while len(batches) < target and extra < _MAX_TOP_UP_PASSES:
        extra += 1
        more, _ = _greedy_batches(
            index, _rng(seed, epoch, source_id, pass_no, 1_000_003 + extra).permutation(n), batch_size, True
        )
        batches.extend(more[: target - len(batches)])
    if len(batches) < target:
        raise ValueError(
            f"training source {index.name!r}: only {len(batches)} of {target} batches of {batch_size} distinct "
            "texts could be formed; the source repeats too few texts for this batch size"
        )
    batches = batches[:target]
    if group_by_length:
        perm = rng.permutation(len(batches))
        batches = [batches[i] for i in perm]
    return batches


def batches_per_epoch(
    sizes: Sequence[int],
    weights: Sequence[float],
    strategy: str,
    batch_size: int,
    temperature: float = 2.0,
    replay: Sequence[bool] | None = None,
    replay_share: float | None = None,
) -> list[int]:
    """Global batches each source contributes to one epoch under ``strategy`` (see the module docstring).

    Example:
        >>> batches_per_epoch([384, 64], [1, 1], "proportional", 32, replay=[False, True], replay_share=0.2)
        [12, 3]
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown sampling strategy {strategy!r}; choose one of {STRATEGIES}")
    flags = list(replay) if replay is not None else [False] * len(sizes)
    if replay_share and any(flags) and not all(flags):
        main = [i for i, f in enumerate(flags) if not f]
        rep = [i for i, f in enumerate(flags) if f]
        main_counts = batches_per_epoch(
            [sizes[i] for i in main], [weights[i] for i in main], strategy, batch_size, temperature
        )
        total = max(len(rep), round(sum(main_counts) * replay_share / (1.0 - replay_share)))
        rep_counts = _split_by_size([sizes[i] for i in rep], total)
        out = [0] * len(sizes)
        for i, c in zip(main, main_counts, strict=True):
            out[i] = c
        for i, c in zip(rep, rep_counts, strict=True):
            out[i] = c
        return out
    per_pass = [full_batches_per_pass(n, batch_size) for n in sizes]
    if strategy == "proportional":
        return per_pass
    if strategy == "round_robin":
        return [min(per_pass)] * len(per_pass)
    if strategy == "weighted":
        return [max(1, round(b * w)) for b, w in zip(per_pass, weights, strict=True)]
    p = np.array([n ** (1.0 / temperature) for n in sizes], dtype=np.float64)
    return _split_by_weight(p, sum(per_pass))


def _split_by_weight(p: np.ndarray, total: int) -> list[int]:
    """``total`` split in proportion to ``p`` (largest remainder), each part at least 1."""
    quotas = p / p.sum() * total
    counts = np.floor(quotas).astype(int)
    for i in np.argsort(-(quotas - counts), kind="stable")[: total - int(counts.sum())]:
        counts[i] += 1
    return [max(1, int(c)) for c in counts]


def _split_by_size(sizes: Sequence[int], total: int) -> list[int]:
    return _split_by_weight(np.array([max(1, n) for n in sizes], dtype=np.float64), total)


def build_plan(
    indexes: Sequence[SourceIndex],
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    strategy: str = "weighted",
    temperature: float = 2.0,
    no_duplicates: bool = True,
    group_by_length: bool = False,
    length_window: int = 32,
    allow_partial: bool = True,
    replay_share: float | None = None,
) -> list[tuple[int, list[int]]]:
    """One epoch's ordered ``(source id, global batch of local row ids)`` list."""
    counts = batches_per_epoch(
        [len(i) for i in indexes],
        [i.weight for i in indexes],
        strategy,
        batch_size,
        temperature,
        replay=[i.replay for i in indexes],
        replay_share=replay_share,
    )
    if strategy == "round_robin" and not (replay_share and any(i.replay for i in indexes)):
        order = [s for _ in range(counts[0]) for s in range(len(indexes))]
    else:
        order = _rng(seed, epoch, 0x5EED).permutation(np.repeat(np.arange(len(indexes)), counts)).tolist()
    streams: list[deque[list[int]]] = [deque() for _ in indexes]
    passes = [0] * len(indexes)
    plan: list[tuple[int, list[int]]] = []
    for s in order:
        if not streams[s]:
            streams[s].extend(
                source_pass(
                    indexes[s],
                    batch_size=batch_size,
                    seed=seed,
                    epoch=epoch,
                    source_id=s,
                    pass_no=passes[s],
                    no_duplicates=no_duplicates,
                    group_by_length=group_by_length,
                    length_window=length_window,
                    allow_partial=allow_partial,
                )
            )
            passes[s] += 1
        plan.append((int(s), streams[s].popleft()))
    return plan


class MultiSourceBatchSampler(MultiDatasetDefaultBatchSampler):
    """sentence-transformers multi-dataset batch sampler over a ``ConcatDataset`` of sources (see module docstring).

    It yields per-rank batches of global row indices; ``len()`` is the number of per-rank batches of the whole
    process group and does not depend on the epoch.
    """

    def __init__(
        self,
        dataset: ConcatDataset,
        indexes: Sequence[SourceIndex],
        *,
        batch_size: int,
        world_size: int = 1,
        strategy: str = "weighted",
        temperature: float = 2.0,
        no_duplicates: bool = True,
        group_by_length: bool = False,
        length_window: int = 32,
        seed: int = 0,
        replay_share: float | None = None,
    ) -> None:
        if len(dataset.datasets) != len(indexes):
            raise ValueError("one SourceIndex per dataset of the ConcatDataset is needed")
        for d, ix in zip(dataset.datasets, indexes, strict=True):
            if len(d) != len(ix):
                raise ValueError(f"source {ix.name!r}: dataset has {len(d)} rows but its index {len(ix)}")
        # The parent only reads batch_size / drop_last from the per-source samplers.
        holder = type("_Holder", (), {"batch_size": batch_size, "drop_last": True})()
        super().__init__(dataset, batch_samplers=[holder] * len(indexes), generator=None, seed=seed)
        self.indexes = list(indexes)
        self.batch_size = batch_size
        self.world_size = world_size
        self.strategy = strategy
        self.temperature = temperature
        self.no_duplicates = no_duplicates
        self.group_by_length = group_by_length
        self.length_window = length_window
        self.replay_share = replay_share
        self.offsets = [0, *accumulate(len(d) for d in dataset.datasets)]
        self._plan_cache: tuple[int, list[tuple[int, list[int]]]] | None = None

    def plan(self, epoch: int | None = None) -> list[tuple[int, list[int]]]:
        """The epoch's global batches (cached for the current epoch)."""
        epoch = self.epoch if epoch is None else epoch
        if self._plan_cache is None or self._plan_cache[0] != epoch:
            self._plan_cache = (
                epoch,
                build_plan(
                    self.indexes,
                    batch_size=self.batch_size * self.world_size,
                    seed=self.seed,
                    epoch=epoch,
                    strategy=self.strategy,
                    temperature=self.temperature,
                    no_duplicates=self.no_duplicates,
                    group_by_length=self.group_by_length,
                    length_window=self.length_window,
                    allow_partial=self.world_size == 1,
                    replay_share=self.replay_share,
                ),
            )
        return self._plan_cache[1]

    def source_of(self, global_index: int) -> int:
        """Source id of a global row index."""
        for s in range(len(self.indexes)):
            if global_index < self.offsets[s + 1]:
                return s
        raise IndexError(global_index)

    def __iter__(self) -> Iterator[list[int]]:
        for s, batch in self.plan():
            off = self.offsets[s]
            size = math.ceil(len(batch) / self.world_size)
            for r in range(self.world_size):
                yield [off + i for i in batch[r * size : (r + 1) * size]]

    def __len__(self) -> int:
        counts = batches_per_epoch(
            [len(i) for i in self.indexes],
            [i.weight for i in self.indexes],
            self.strategy,
            self.batch_size * self.world_size,
            self.temperature,
            replay=[i.replay for i in self.indexes],
            replay_share=self.replay_share,
        )
        return sum(counts) * self.world_size
