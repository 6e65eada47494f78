"""The launcher: torchrun commands from config, and a process group that is stopped as a whole on cancel, timeout
and signals to the caller, with nothing left behind (torchrun-like trees included: workers in their own session)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from _train_helpers import processes_mentioning
from torch.distributed.run import get_args_parser

from st_workflow.config.training import LaunchConfig
from st_workflow.training.launcher import TrainingCancelled, TrainingTimeout, build_command, run_process_group


def _torchrun_args(cmd: list[str]):
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    return get_args_parser().parse_args(cmd[3:])


def test_single_process_needs_no_torchrun() -> None:
    assert build_command(LaunchConfig(), "/j.json", python="py") == [
        "py",
        "-m",
        "st_workflow.training.worker",
        "--job-file",
        "/j.json",
    ]


def test_torchrun_command_parses_as_torchrun_sees_it() -> None:
    a = _torchrun_args(build_command(LaunchConfig(nproc_per_node=2), "/j.json"))
    assert a.nproc_per_node == "2" and a.standalone and a.module
    assert a.training_script == "st_workflow.training.worker" and a.training_script_args == [
        "--job-file",
        "/j.json",
    ]
    a = _torchrun_args(build_command(LaunchConfig(nproc_per_node=4, master_port=29555), "/j.json"))
    assert (a.master_addr, a.master_port, a.standalone) == ("127.0.0.1", 29555, False)


def test_multi_node_options_pass_through() -> None:
    launch = LaunchConfig(
        nproc_per_node=8,
        nnodes="2:4",
        node_rank=1,
        rdzv_endpoint="head:29400",
        rdzv_id="job-7",
        max_restarts=3,
        extra_args=["--rdzv-conf=timeout=900"],
    )
    a = _torchrun_args(build_command(launch, "/j.json", run_name="r"))
    assert (a.nnodes, a.node_rank, a.rdzv_backend, a.rdzv_endpoint, a.rdzv_id) == (
        "2:4",
        1,
        "c10d",
        "head:29400",
        "job-7",
    )
    assert a.max_restarts == 3 and a.rdzv_conf == "timeout=900"
    assert a.training_script_args == ["--job-file", "/j.json"]


def _tree(marker: str) -> list[str]:
    """A parent whose child runs in its own session and dies with its parent, like torchrun and its workers."""
    grandchild = (
        "import os,time; from st_workflow.training._pdeathsig import set_pdeathsig; set_pdeathsig(); "
        f"print('grandchild', os.getpid(), flush=True); time.sleep(600)  # {marker}"
    )
    parent = (
        "import os,subprocess,sys,time\n"
        f"subprocess.Popen([sys.executable, '-c', {grandchild!r}], start_new_session=True)\n"
        f"print('child', os.getpid(), flush=True); time.sleep(600)  # {marker}\n"
    )
    return [sys.executable, "-c", parent]


def _wait_gone(marker: str, timeout: float = 15.0) -> list[int]:
    end = time.monotonic() + timeout
    while time.monotonic() < end and processes_mentioning(marker):
        time.sleep(0.2)
    return processes_mentioning(marker)


def test_cancel_stops_the_whole_tree() -> None:
    marker = f"stw-{uuid.uuid4().hex}"
    lines: list[str] = []
    with pytest.raises(TrainingCancelled):
        run_process_group(
            _tree(marker),
            log_sink=lines.append,
            should_cancel=lambda: sum("grandchild" in x for x in lines) > 0,
            kill_grace_s=2,
        )
    assert lines[0].startswith(("child", "grandchild"))
    assert _wait_gone(marker) == []


def test_timeout_stops_the_whole_tree() -> None:
    marker = f"stw-{uuid.uuid4().hex}"
    with pytest.raises(TrainingTimeout):
        run_process_group(_tree(marker), timeout_s=3, kill_grace_s=1)
    assert _wait_gone(marker) == []


def test_exit_status_and_output_are_returned() -> None:
    rc, tail = run_process_group([sys.executable, "-c", "print('a'); print('b\\rc'); raise SystemExit(3)"])
    assert rc == 3 and tail == ["a", "b", "c"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_signals_to_the_caller_leave_no_process_behind(sig: int) -> None:
    marker = f"stw-{uuid.uuid4().hex}"
    caller_src = (
        "import sys\nfrom st_workflow.training.launcher import run_process_group\n"
        f"run_process_group({_tree(marker)!r}, log_sink=lambda l: print(l, flush=True), kill_grace_s=2)\n"
    )
    caller = subprocess.Popen(
        [sys.executable, "-c", caller_src],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
        # A suite started as a background job (``cmd &``, nohup) inherits SIGINT ignored, and ignored signals
        # survive exec: the caller must get the disposition a user's terminal gives it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        seen = set()
        while len(seen) < 2:
            line = caller.stdout.readline()
            assert line, "caller ended early"
            seen.add(line.split()[0])
        assert len(processes_mentioning(marker)) >= 2
        caller.send_signal(sig)
        rc = caller.wait(timeout=30)
    finally:
        if caller.poll() is None:
            caller.kill()
    assert rc != 0
    assert _wait_gone(marker) == []
