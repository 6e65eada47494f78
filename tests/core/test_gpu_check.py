"""``benchmarks/gpu_check.py --dry-run``: the GPU check runs end to end on the CPU before a GPU machine is lent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_dry_run_trains_encodes_and_runs_torchrun(tmp_path: Path, test_cache_dir: Path) -> None:
    out = tmp_path / "gpu_check.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)]
    subprocess.run([*cmd, "--cache", str(test_cache_dir)], check=True, cwd=REPO, timeout=600)
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["device"] == "cpu"
    tiny = report["results"]["tiny"]
    assert tiny["train"]["steps"] == 2 and tiny["train"]["steady_samples_per_second"] > 0
    assert tiny["train"]["saved"] and tiny["train"]["mean_tokens_per_text"] > 0
    assert tiny["train"]["mfu"] is None  # no GPU peak to divide by
    assert tiny["encode"]["sentences"] == 64 and tiny["encode"]["dim"] == 64
    ddp = report["results"]["torchrun"]
    assert ddp["processes"] == 2 and ddp["backend"] == "gloo" and ddp["saved"]


def test_gpu_check_refuses_without_cuda_unless_dry_run() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py")], capture_output=True, text=True, cwd=REPO
    )
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert proc.returncode == 2 and "--dry-run" in proc.stderr


def test_gpu_check_docstring_examples() -> None:
    """The peak table and the FLOPs formula (their examples run here: ``benchmarks/`` is not a package)."""
    import doctest
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = doctest.testmod(module)
    assert result.attempted >= 4 and result.failed == 0
