"""The train stage keeps runs apart: each configuration's checkpoints under its own key, one training at a time per
run directory (a second waits or names the holder), and torchrun ranks that see only the environment they need.
Real subprocesses and real torchrun (gloo) throughout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _train_helpers import processes_mentioning, tiny_config

from st_workflow.config import PipelineConfig
from st_workflow.manifest import Manifest
from st_workflow.training import pretokenize_stage, train_stage


def test_changing_the_config_keeps_each_configurations_checkpoints(
    pairs_manifest: Manifest, tmp_path: Path, test_cache_dir: Path
) -> None:
    def cfg_with(lr: float) -> PipelineConfig:
        return tiny_config(
            tmp_path,
            test_cache_dir,
            run_name="keys",
            max_steps=4,
            learning_rate=lr,
            **{"checkpoints.save_steps": 2},
        )

    first = train_stage(cfg_with(0.001), pairs_manifest, None)
    first_ckpts = first.path("checkpoints")
    assert sorted(p.name for p in first_ckpts.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    lines: list[str] = []
    other = train_stage(cfg_with(0.002), pairs_manifest, None, log_sink=lines.append)
    assert other.path("checkpoints") != first_ckpts
    # The first configuration's checkpoints survive, complete, and the second run says so.
    assert all((first_ckpts / n / ".complete").is_file() for n in ("checkpoint-2", "checkpoint-4"))
    info = other.metrics["checkpoints"]
    assert info["other_configurations"] == {first_ckpts.name: ["checkpoint-2", "checkpoint-4"]}
    assert (
        info["resumed_from"] is None
        and info["reused"] == []
        and info["kept"] == ["checkpoint-2", "checkpoint-4"]
    )
    assert any("1 other configuration(s) kept" in x and first_ckpts.name in x for x in lines)

    # Back to the first configuration, as if its run had been killed after the step-2 checkpoint: it resumes from
    # its own checkpoint instead of starting over, and the other configuration's stay.
    shutil.rmtree(first_ckpts / "checkpoint-4")
    lines.clear()
    back = train_stage(cfg_with(0.001), pairs_manifest, None, log_sink=lines.append)
    info = back.metrics["checkpoints"]
    assert back.path("checkpoints") == first_ckpts and back.counts["steps"] == 4
    assert info["resumed_from"] == str(first_ckpts / "checkpoint-2") and info["reused"] == ["checkpoint-2"]
    assert info["kept"] == ["checkpoint-2", "checkpoint-4"]
    assert info["other_configurations"] == {other.path("checkpoints").name: ["checkpoint-2", "checkpoint-4"]}
    assert any(x.startswith(f"resuming from {first_ckpts / 'checkpoint-2'}") for x in lines)
    assert any(x.startswith("step 3/4") for x in lines) and not any(x.startswith("step 2/4") for x in lines)


_CALLER = """
import sys, time
from pathlib import Path
from st_workflow.config import PipelineConfig
from st_workflow.manifest import Manifest
from st_workflow.training import train_stage

cfg = PipelineConfig.model_validate_json(sys.argv[1])
gate = Path(sys.argv[3]) if len(sys.argv) > 3 else None

def sink(line):
    print(line, flush=True)
    if gate is not None and line.startswith("launching"):
        while not gate.exists():  # hold the stage (and its lock) until the test says go
            time.sleep(0.05)

m = train_stage(cfg, Manifest.read(sys.argv[2]), None, log_sink=sink)
print("DONE", m.content_hash, flush=True)
"""


def _caller(cfg: PipelineConfig, pairs: Manifest, gate: Path | None = None) -> subprocess.Popen:
    args = [sys.executable, "-c", _CALLER, cfg.model_dump_json(), pairs.directory]
    return subprocess.Popen([*args, *([str(gate)] if gate else [])], stdout=subprocess.PIPE, text=True)


def _read_until(proc: subprocess.Popen, pred, seen: list[str], timeout_s: float = 300) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, f"process ended before the expected line; output:\n{''.join(seen)}"
        seen.append(line)
        if pred(line):
            return line
    raise AssertionError(f"expected line not seen; output:\n{''.join(seen)}")


def test_two_trainings_into_one_run_directory_take_turns(
    pairs_manifest: Manifest, tmp_path: Path, test_cache_dir: Path
) -> None:
    from st_workflow.locks import StageLocked

    cfg = tiny_config(tmp_path, test_cache_dir, run_name="shared", max_steps=3)
    pretokenize_stage(cfg, pairs_manifest)  # both runs then reuse it; the train stage is what they share
    gate = tmp_path / "go"
    holder = _caller(cfg, pairs_manifest, gate)
    waiter = None
    out_holder: list[str] = []
    out_waiter: list[str] = []
    try:
        _read_until(holder, lambda x: x.startswith("launching"), out_holder)

        # A run that will not wait fails at once, naming the holder.
        impatient = cfg.model_copy(deep=True)
        impatient.training.launch.lock_timeout_s = 0
        with pytest.raises(StageLocked) as err:
            train_stage(impatient, pairs_manifest, None)
        assert f"pid {holder.pid} " in str(err.value) and "train stage of run 'shared'" in str(err.value)

        # A run that waits (the default) says whom it waits for, then reuses what the holder trained.
        waiter = _caller(cfg, pairs_manifest)
        line = _read_until(waiter, lambda x: "waiting" in x, out_waiter)
        assert f"locked by pid {holder.pid} " in line
        gate.touch()
        done_holder = _read_until(holder, lambda x: x.startswith("DONE"), out_holder)
        done_waiter = _read_until(waiter, lambda x: x.startswith("DONE"), out_waiter)
        assert holder.wait(timeout=60) == 0 and waiter.wait(timeout=60) == 0
    finally:
        gate.touch()
        for p in (holder, waiter):
            if p is not None and p.poll() is None:
                p.kill()
    assert done_holder.split()[1] == done_waiter.split()[1]  # the same model, trained once
    assert not any(x.startswith("launching") for x in out_waiter)
    assert any("reusing" in x for x in out_waiter)


def _environ(pid: int) -> dict[str, str] | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    return dict(item.split("=", 1) for item in raw.decode("utf-8", "replace").split("\0") if "=" in item)


def test_torchrun_ranks_see_only_the_environment_training_needs(
    pairs_manifest: Manifest, tmp_path: Path, test_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-in-a-rank")
    monkeypatch.setenv("EARTHDATA_TOKEN", "earthdata-never-in-a-rank")
    monkeypatch.setenv("PREFECT_API_KEY", "pnu-never-in-a-rank")
    monkeypatch.setenv("HF_TOKEN", "hf-needed-for-gated-models")
    monkeypatch.setenv("AWS_REGION", "passed-by-env_passthrough")
    cfg = tiny_config(
        tmp_path,
        test_cache_dir,
        run_name="env",
        max_steps=2,
        **{"launch.nproc_per_node": 2, "launch.env_passthrough": ["AWS_*"]},
    )
    job = str(cfg.stage_dir("train") / "job.json")
    seen: dict[int, dict[str, str]] = {}

    def sample() -> (
        bool
    ):  # polled by the launcher while the process group runs: read each process's environment
        for pid in processes_mentioning(job):
            env = _environ(pid)
            if env is not None:
                seen.setdefault(pid, env)
        return False

    m = train_stage(cfg, pairs_manifest, None, should_cancel=sample)
    assert m.metrics["world_size"] == 2
    ranks = {env.get("RANK"): env for env in seen.values() if "LOCAL_RANK" in env}
    assert set(ranks) == {"0", "1"}, sorted(seen)  # both workers were seen
    for env in seen.values():  # the torchrun agent and both workers
        assert not {"OPENAI_API_KEY", "EARTHDATA_TOKEN", "PREFECT_API_KEY"} & set(env)
    for env in ranks.values():
        assert env["WORLD_SIZE"] == "2" and env["MASTER_ADDR"] and env["MASTER_PORT"]
        assert env["PATH"] and env["HOME"] and env["OMP_NUM_THREADS"] and env["PYTHONUNBUFFERED"] == "1"
        assert env["HF_TOKEN"] == "hf-needed-for-gated-models" and env["HF_HUB_OFFLINE"] == "1"
        assert env["AWS_REGION"] == "passed-by-env_passthrough" and env["TOKENIZERS_PARALLELISM"]
