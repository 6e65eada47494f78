"""Stage progress: bounded update rate, 100 at the end, left where it stopped on failure, reuse said at once,
and several threads advancing one bar."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from st_workflow import progress
from st_workflow.progress import ProgressState, StageProgress


class Recorder:
    """A sink that keeps every call with a copy of the snapshot."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ProgressState]] = []

    def _keep(self, method: str, state: ProgressState) -> None:
        self.calls.append((method, ProgressState(**{**state.__dict__})))

    def open(self, state: ProgressState) -> None:
        self._keep("open", state)

    def update(self, state: ProgressState) -> None:
        self._keep("update", state)

    def close(self, state: ProgressState) -> None:
        self._keep("close", state)

    def methods(self) -> list[str]:
        return [m for m, _ in self.calls]

    def updates(self) -> list[ProgressState]:
        return [s for m, s in self.calls if m == "update"]


def test_per_item_advances_reach_the_sinks_every_five_percent_only() -> None:
    rec = Recorder()
    with progress.sinks(rec):
        bar = StageProgress("rows", "Rows", total=1000, unit="rows", min_interval_s=3600)
        for _ in range(1000):
            bar.advance(1, detail="x")
        bar.done()
    ups = rec.updates()
    # 0.1 %, 5.1 %, ... 95.1 % (20 snapshots), then done's final one: never one per item.
    assert len(ups) == 21
    assert [round(s.percent, 1) for s in ups[:3]] == [0.1, 5.1, 10.1]
    assert ups[-1].status == "done" and ups[-1].percent == 100.0
    assert rec.methods()[0] == "open" and rec.methods()[-1] == "close" and rec.methods().count("close") == 1


def test_unknown_total_is_limited_by_time_and_done_fixes_the_total() -> None:
    rec = Recorder()
    with progress.sinks(rec):
        bar = StageProgress("ingest-x", "Ingest x", total=None, unit="records", min_interval_s=3600)
        for _ in range(500):
            bar.advance(2)
        assert len(rec.updates()) == 1  # the first snapshot; then nothing until time passes
        bar.done("500 pages")
    last = rec.updates()[-1]
    assert (last.completed, last.total, last.percent, last.detail) == (1000, 1000, 100.0, "500 pages")


def test_set_total_later_gives_percentages() -> None:
    rec = Recorder()
    with progress.sinks(rec):
        bar = StageProgress("p", "P", total=None, min_interval_s=3600)
        bar.advance(10)
        bar.set_total(40)
        bar.advance(10)
    assert rec.updates()[-1].percent == 50.0


def test_a_failing_stage_is_left_where_it_stopped() -> None:
    rec = Recorder()
    with (
        progress.sinks(rec),
        pytest.raises(KeyboardInterrupt),
        progress.stage("training", "Training", total=100, unit="steps") as bar,
    ):
        bar.update(37, detail="8.1 samples/s")
        raise KeyboardInterrupt
    last = rec.updates()[-1]
    assert last.status == "failed" and last.percent == 37.0
    assert last.detail == "stopped: KeyboardInterrupt (8.1 samples/s)"
    assert rec.methods()[-1] == "close"


def test_stage_finishes_at_100_and_later_calls_change_nothing() -> None:
    rec = Recorder()
    with progress.sinks(rec):
        with progress.stage("s", "S", total=10) as bar:
            bar.advance(3)
        bar.advance(5)
        bar.failed("late")
    assert rec.updates()[-1].status == "done" and rec.updates()[-1].percent == 100.0
    assert rec.methods().count("close") == 1


def test_reused_says_so_at_once() -> None:
    rec = Recorder()
    with progress.sinks(rec):
        progress.reused("generation", "Generating pairs")
    assert rec.methods() == ["open", "close"]
    opened = rec.calls[0][1]
    assert (opened.status, opened.percent, opened.detail) == ("reused", 100.0, "reused")


def test_sinks_are_scoped_to_their_block() -> None:
    rec = Recorder()
    with progress.sinks(rec):
        inner = StageProgress("a", "A", total=1)
    outer = StageProgress("b", "B", total=1)
    inner.done()
    outer.done()
    assert {s.key for _, s in rec.calls} == {"a"}


def test_a_broken_sink_never_fails_the_stage() -> None:
    class Broken:
        def open(self, state: ProgressState) -> None:
            raise RuntimeError("API down")

        update = close = open

    rec = Recorder()
    with progress.sinks(Broken(), rec), progress.stage("s", "S", total=2) as bar:
        bar.advance(2)
    assert rec.updates()[-1].status == "done"


def test_worker_threads_advance_a_bar_opened_in_the_stage_thread() -> None:
    rec = Recorder()
    with progress.sinks(rec):
        bar = StageProgress("docs", "Docs", total=4000, unit="docs", min_interval_s=3600)
        start = threading.Barrier(4)

        def work(_: int) -> None:
            start.wait()
            for _ in range(1000):
                bar.advance(1)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(work, range(4)))
        assert bar.state.completed == 4000
        bar.done()
    ups = rec.updates()
    assert len(ups) == 21 and ups[-1].percent == 100.0
    assert [s.completed for s in ups] == sorted(s.completed for s in ups)
