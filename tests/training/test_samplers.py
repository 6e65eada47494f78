"""Multi-source batch sampling: the original's weighted semantics, the other strategies, no duplicates, length
grouping, DDP grouping and the determinism that exact resume relies on."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from accelerate.data_loader import BatchSamplerShard, SkipBatchSampler
from torch.utils.data import ConcatDataset

from st_workflow.training.samplers import (
    MultiSourceBatchSampler,
    SourceIndex,
    batches_per_epoch,
    build_plan,
    source_pass,
)


def make_index(name: str, n: int, *, dup_every: int = 0, seed: int = 0, weight: float = 1.0) -> SourceIndex:
    """n rows with (anchor, positive) hashes; every ``dup_every``-th row repeats an earlier anchor text."""
    rng = np.random.default_rng(seed)
    base = 1_000_000 * (seed + 1)
    anchors = np.arange(n, dtype=np.int64) + base
    if dup_every:
        anchors[::dup_every] = base  # many rows share one anchor text
    positives = np.arange(n, dtype=np.int64) + base + 500_000
    lengths = rng.integers(5, 120, size=n).astype(np.int32)
    return SourceIndex(name, hashes=np.stack([anchors, positives], axis=1), lengths=lengths, weight=weight)


class _Rows:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def test_weighted_strategy_multiplies_batches_per_epoch_and_repeats_small_sources() -> None:
    big, small = make_index("big", 400, seed=1), make_index("small", 40, seed=2, weight=2.5)
    counts = batches_per_epoch([400, 40], [1.0, 2.5], "weighted", batch_size=8)
    assert counts == [
        50,
        round(5 * 2.5),
    ]  # weights multiply each source's batches, they are not probabilities
    plan = build_plan([big, small], batch_size=8, seed=3, epoch=0, strategy="weighted")
    per_source = Counter(s for s, _ in plan)
    assert per_source == {0: 50, 1: 12}
    small_rows = Counter(i for s, b in plan if s == 1 for i in b)
    assert max(small_rows.values()) >= 2  # weight > 1 repeats the small source (fresh seeded passes)


def test_every_batch_comes_from_one_source_without_duplicate_texts() -> None:
    a, b = make_index("a", 300, dup_every=3, seed=1), make_index("b", 200, seed=2)
    plan = build_plan([a, b], batch_size=16, seed=0, epoch=1, strategy="proportional")
    idx = [a, b]
    for s, batch in plan:
        texts = idx[s].hashes[batch].ravel().tolist()
        assert len(texts) == len(set(texts)), "a text repeated inside one batch"
        assert len(batch) == 16
    assert Counter(s for s, _ in plan) == {0: 300 // 16, 1: 200 // 16}


def test_proportional_uses_each_row_at_most_once_and_round_robin_interleaves() -> None:
    a, b, c = make_index("a", 160, seed=1), make_index("b", 80, seed=2), make_index("c", 48, seed=3)
    plan = build_plan([a, b, c], batch_size=8, seed=0, epoch=0, strategy="proportional", no_duplicates=False)
    for s in range(3):
        rows = [i for t, bb in plan if t == s for i in bb]
        assert len(rows) == len(set(rows))
    rr = build_plan([a, b, c], batch_size=8, seed=0, epoch=0, strategy="round_robin")
    assert [s for s, _ in rr] == [0, 1, 2] * 6  # min(L) = 48 // 8 batches from each, in source order


def test_temperature_sampling_flattens_the_source_mix() -> None:
    sizes = [8000, 800, 80]
    prop = batches_per_epoch(sizes, [1, 1, 1], "proportional", 8)
    t1 = batches_per_epoch(sizes, [1, 1, 1], "temperature", 8, temperature=1.0)
    t4 = batches_per_epoch(sizes, [1, 1, 1], "temperature", 8, temperature=4.0)
    assert t1 == prop
    assert sum(t4) == sum(prop)
    assert t4[2] > prop[2] * 5 and t4[0] < prop[0]  # the small source gets far more batches (repeated)
    plan = build_plan(
        [make_index(str(i), n, seed=i) for i, n in enumerate(sizes)],
        batch_size=8,
        seed=0,
        epoch=0,
        strategy="temperature",
        temperature=4.0,
    )
    assert Counter(s for s, _ in plan) == dict(enumerate(t4))


def test_plans_are_seeded_per_epoch() -> None:
    idx = [make_index("a", 200, seed=1), make_index("b", 120, seed=2)]
    p0 = build_plan(idx, batch_size=8, seed=7, epoch=0, group_by_length=True)
    assert p0 == build_plan(idx, batch_size=8, seed=7, epoch=0, group_by_length=True)
    assert p0 != build_plan(idx, batch_size=8, seed=7, epoch=1, group_by_length=True)
    assert p0 != build_plan(idx, batch_size=8, seed=8, epoch=0, group_by_length=True)


def test_length_grouping_cuts_padding() -> None:
    idx = make_index("a", 2000, seed=5)

    def padding(plan: list[tuple[int, list[int]]]) -> float:
        return float(np.mean([idx.lengths[b].max() - idx.lengths[b].mean() for _, b in plan]))

    grouped = build_plan([idx], batch_size=16, seed=0, epoch=0, group_by_length=True, length_window=16)
    plain = build_plan([idx], batch_size=16, seed=0, epoch=0, group_by_length=False)
    assert padding(grouped) < 0.25 * padding(plain)
    # Batch order stays shuffled: not sorted by length across the epoch.
    maxima = [idx.lengths[b].max() for _, b in grouped]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_too_few_distinct_texts_is_a_clear_error() -> None:
    idx = SourceIndex(
        "tiny-vocab", hashes=np.array([[1], [2], [3], [1], [2], [3], [1], [2]]), lengths=np.ones(8)
    )
    with pytest.raises(ValueError, match="tiny-vocab"):
        source_pass(idx, batch_size=4, seed=0, epoch=0, source_id=0, pass_no=0)


def test_ddp_ranks_get_same_source_disjoint_rows_each_step() -> None:
    idx = [make_index("a", 96, seed=1), make_index("b", 64, seed=2)]
    data = ConcatDataset([_Rows(96), _Rows(64)])
    sampler = MultiSourceBatchSampler(data, idx, batch_size=8, world_size=2, strategy="proportional", seed=3)
    assert len(sampler) == 2 * (96 // 16 + 64 // 16)
    ranks = [
        list(BatchSamplerShard(sampler, num_processes=2, process_index=r, even_batches=False)) for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1]) == len(sampler) // 2
    seen: list[int] = []
    for b0, b1 in zip(*ranks, strict=True):
        assert sampler.source_of(b0[0]) == sampler.source_of(b1[0])  # same source (and loss) on every rank
        assert {sampler.source_of(i) for i in b0 + b1} == {sampler.source_of(b0[0])}
        assert not set(b0) & set(b1) and len(b0) == len(b1) == 8
        seen += b0 + b1
    assert len(seen) == len(set(seen))  # every row at most once per epoch across ranks


def test_skipping_batches_replays_the_uninterrupted_order() -> None:
    """Resume = same plan + Hugging Face's SkipBatchSampler: the remaining batches are exactly the same."""
    idx = [make_index("a", 200, seed=1), make_index("b", 120, seed=2, weight=2.0)]
    data = ConcatDataset([_Rows(200), _Rows(120)])

    def fresh() -> MultiSourceBatchSampler:
        s = MultiSourceBatchSampler(data, idx, batch_size=8, group_by_length=True, seed=11)
        s.set_epoch(2)
        return s

    full = list(fresh())
    assert list(SkipBatchSampler(fresh(), skip_batches=13)) == full[13:]
    assert len(full) == len(fresh())


def test_replay_sources_take_the_configured_share_of_every_epoch() -> None:
    main, replay = make_index("domain", 640, seed=1), make_index("replay", 96, seed=2)
    replay.replay = True
    # 20 domain batches of 32; a share of 0.2 adds 5 replay batches (one in five), repeating the small source.
    assert batches_per_epoch(
        [640, 96], [1, 1], "proportional", 32, replay=[False, True], replay_share=0.2
    ) == [20, 5]
    assert batches_per_epoch([640, 96], [1, 1], "proportional", 32, replay=[False, True]) == [
        20,
        3,
    ]  # a label only
    plan = build_plan(
        [main, replay], batch_size=32, seed=0, epoch=0, strategy="proportional", replay_share=0.2
    )
    by_source = Counter(s for s, _ in plan)
    assert by_source == {0: 20, 1: 5} and by_source[1] / len(plan) == pytest.approx(0.2)
    for _, batch in plan:
        assert len(batch) == 32 and len(set(batch)) == 32  # replay passes are fresh, duplicate-free batches
    ds = ConcatDataset([_Rows(640), _Rows(96)])
    sampler = MultiSourceBatchSampler(
        ds, [main, replay], batch_size=32, strategy="proportional", replay_share=0.5, seed=0
    )
    assert len(sampler) == 40 and sum(1 for b in sampler if b[0] >= 640) == 20
