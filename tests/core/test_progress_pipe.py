"""Progress across a process boundary: a child's marked lines become a stage of the launcher's process (kept out
of the log), finished at 100 on success and left below 100 when the child fails or is cancelled."""

from __future__ import annotations

import sys

import pytest

from st_workflow import progress
from st_workflow.progress import StageProgress
from st_workflow.progress_pipe import MARKER, LineSink, Relay, parse_line
from st_workflow.training.launcher import TrainingCancelled, run_process_group
from tests.core.test_progress import Recorder

CHILD = """
import sys, time
from st_workflow import progress
from st_workflow.progress_pipe import LineSink
print("training: 10 optimizer steps", flush=True)
with progress.sinks(LineSink(keys={"training"})):
    bar = progress.StageProgress("training", "Training", total=10, unit="steps", min_interval_s=0)
    ignored = progress.StageProgress("evaluation", "Evaluating", total=1)
    for step in range(1, STOP + 1):
        bar.update(step, detail=f"12.5 samples/s, ETA {10 - step}s")
        print(f"step {step}/10", flush=True)
    if STOP < 10:
        time.sleep(600)
    bar.done()
print("saved the final model", flush=True)
sys.exit(CODE)
"""


def _child(stop: int = 10, code: int = 0) -> list[str]:
    return [sys.executable, "-c", CHILD.replace("STOP", str(stop)).replace("CODE", str(code))]


def test_lines_round_trip_into_a_parent_stage() -> None:
    lines: list[str] = []
    with progress.sinks(LineSink(lines.append)):
        bar = StageProgress("training", "Training", total=4, unit="steps", min_interval_s=0)
        bar.update(2, detail="3.0 samples/s, ETA 2s")
        bar.done()
    assert all(line.startswith(MARKER) for line in lines)
    rec = Recorder()
    relay = Relay()
    with progress.sinks(rec):
        assert all(relay.feed(line) for line in lines)
        assert not relay.feed("step 2/4 loss 0.3")
    ups = rec.updates()
    assert any(s.completed == 2 and s.detail == "3.0 samples/s, ETA 2s" for s in ups)
    assert ups[-1].status == "done" and ups[-1].percent == 100.0 and rec.methods()[-1] == "close"
    assert parse_line(MARKER + "{not json") is None
    assert relay.feed(MARKER + '{"event": "update", "state": {"key": "x", "completed": "lots"}}')  # ignored


def test_the_launcher_relays_rank_0_progress_and_keeps_it_out_of_the_log() -> None:
    rec, log = Recorder(), []
    with progress.sinks(rec):
        rc, tail = run_process_group(_child(), log_sink=log.append)
    assert rc == 0
    assert log == [
        "training: 10 optimizer steps",
        *[f"step {i}/10" for i in range(1, 11)],
        "saved the final model",
    ]
    assert tail == log
    assert {s.key for _, s in rec.calls} == {"training"}  # only the stages the child's sink forwards
    ups = rec.updates()
    assert ups[-1].status == "done" and ups[-1].percent == 100.0
    assert "samples/s" in (ups[-2].detail or "")


def test_a_failed_child_leaves_the_stage_below_100() -> None:
    rec = Recorder()
    with progress.sinks(rec):
        rc, _ = run_process_group(_child(code=3).copy())
    assert rc == 3  # the child closed its bar first: done stays done
    assert rec.updates()[-1].status == "done"

    rec = Recorder()
    crash = [sys.executable, "-c", CHILD.replace("STOP", "4").replace("time.sleep(600)", "sys.exit(5)")]
    with progress.sinks(rec):
        rc, _ = run_process_group(crash)
    assert rc == 5
    last = rec.updates()[-1]
    assert last.status == "failed" and last.percent == 40.0 and last.detail.startswith("exit status 5")


def test_a_cancelled_child_leaves_the_stage_where_it_stopped() -> None:
    rec = Recorder()
    seen = lambda: any(s.completed >= 3 for s in rec.updates())  # noqa: E731
    with progress.sinks(rec), pytest.raises(TrainingCancelled):
        run_process_group(_child(stop=3), should_cancel=seen, kill_grace_s=2)
    last = rec.updates()[-1]
    assert last.status == "failed" and last.percent == 30.0
    assert last.detail == "cancelled (12.5 samples/s, ETA 7s)"
    assert rec.methods()[-1] == "close"
