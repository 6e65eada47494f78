"""The terminal sink: a tqdm bar on a TTY (a real pseudo-terminal here), a few plain log lines otherwise, nothing
on DDP ranks other than 0; and the command line installs it for every command."""

from __future__ import annotations

import io
import logging
import os
import select

import pytest

from st_workflow import progress
from st_workflow.progress import StageProgress
from st_workflow.progress_terminal import TerminalSink, log_line, terminal_sink


def _read_all(fd: int) -> str:
    out = b""
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out += chunk
    return out.decode("utf-8", "replace")


def test_a_tty_gets_one_tqdm_bar_per_stage() -> None:
    master, slave = os.openpty()
    try:
        with os.fdopen(os.dup(slave), "w", encoding="utf-8") as tty:
            sink = TerminalSink(tty)
            assert sink.tty
            with progress.sinks(sink):
                with progress.stage("pretokenize", "Pre-tokenizing", total=200, unit="rows") as bar:
                    for _ in range(4):
                        bar.advance(50, detail="pairs")
                progress.reused("training", "Training")
            tty.flush()
            text = _read_all(master)
    finally:
        os.close(master)
        os.close(slave)
    assert "Pre-tokenizing" in text and "200/200" in text and "100%" in text and "\r" in text
    assert "Training" in text and "reused" in text


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_logs_get_a_line_at_start_every_quarter_and_at_the_end() -> None:
    sink = TerminalSink(io.StringIO(), log_interval_s=3600)
    assert not sink.tty
    lg = logging.getLogger("st_workflow.progress")
    got = _Lines()
    lg.addHandler(got)
    level = lg.level
    lg.setLevel(logging.INFO)
    try:
        with progress.sinks(sink):
            bar = StageProgress("training", "Training", total=100, unit="steps", min_interval_s=0)
            for step in range(1, 101):
                bar.update(step, detail="9.9 samples/s, ETA 1m")
            bar.done("9.9 samples/s")
    finally:
        lg.removeHandler(got)
        lg.setLevel(level)
    assert got.lines == [
        "Training: 0/100 steps (0%)",
        "Training: 25/100 steps (25%), 9.9 samples/s, ETA 1m",
        "Training: 50/100 steps (50%), 9.9 samples/s, ETA 1m",
        "Training: 75/100 steps (75%), 9.9 samples/s, ETA 1m",
        "Training: 100/100 steps (100%), 9.9 samples/s - done",
    ]  # not one per step


def test_log_line_of_a_stopped_and_a_reused_stage() -> None:
    from st_workflow.progress import ProgressState

    stopped = ProgressState(key="t", title="Training", total=50, completed=10, unit="steps", status="failed")
    assert log_line(stopped) == "Training: 10/50 steps (20%) - stopped"
    assert log_line(ProgressState(key="g", title="Generating pairs", total=1, status="reused")) == (
        "Generating pairs: reused"
    )


def test_ranks_other_than_0_stay_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    assert terminal_sink() is None
    monkeypatch.setenv("RANK", "0")
    assert isinstance(terminal_sink(), TerminalSink)


def test_the_command_line_installs_the_terminal_sink(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from st_workflow import cli

    seen: list[tuple] = []

    def fake_command(args: argparse.Namespace) -> int:
        seen.append(progress._SINKS.get())
        return 0

    real = cli.build_parser

    def parser_with_probe() -> argparse.ArgumentParser:
        p = real()
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        sub.add_parser("probe").set_defaults(func=fake_command)
        return p

    monkeypatch.setattr(cli, "build_parser", parser_with_probe)
    monkeypatch.delenv("RANK", raising=False)
    assert cli.main(["probe"]) == 0
    assert [type(s).__name__ for s in seen[0]] == ["TerminalSink"]
    assert progress._SINKS.get() == ()
