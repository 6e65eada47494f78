"""``st-workflow train CONFIG`` on a fresh run builds what it needs upstream (the stage2-data flow on Prefect, cached
tasks), prints what it built, and on the next call reuses it: configs/tiny.yaml against the session's Prefect API."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_train_on_a_fresh_run_builds_the_pairs_first(
    prefect_harness, tmp_path: Path, test_cache_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    from st_workflow.cli import main

    args = [
        "train",
        str(REPO / "configs" / "tiny.yaml"),
        "--set",
        f"runs_dir={tmp_path / 'runs'}",
        "--set",
        f"cache_dir={test_cache_dir}",
        "--set",
        "training.max_steps=2",
        "--set",
        "mining.enabled=false",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "runs" / "tiny"
    assert f"no pairs dataset at {run_dir / 'pairs'}: building it with the stage2-data flow" in out
    for stage in (
        "ingest/cmr",
        "ingest/pds",
        "ingest/arxiv",
        "benchmark/in-domain",
        "pairs-natural",
        "pairs",
    ):
        assert f"  {stage}: ran" in out, out
    assert "llm-filter + llm-pairs + llm-gates: skipped" in out
    assert (run_dir / "pairs" / "manifest.json").is_file() and (run_dir / "benchmark" / "in-domain").is_dir()
    assert "steps 2, final loss" in out and f"model: {run_dir / 'train' / 'model'}" in out

    # Everything is up to date now: nothing is built and the model is reused.
    assert main(args) == 0
    again = capsys.readouterr().out
    assert "building it" not in again and f"pairs: reusing {run_dir / 'pairs' / 'pairs.parquet'}" in again
    assert "launching" not in again and f"model: {run_dir / 'train' / 'model'}" in again


def test_train_flow_on_a_fresh_run_builds_the_pairs_first(
    prefect_harness, tmp_path: Path, test_cache_dir: Path
) -> None:
    from st_workflow.flows import train_flow

    overrides = [
        f"runs_dir={tmp_path / 'runs'}",
        f"cache_dir={test_cache_dir}",
        "training.enabled=false",
        "evaluation.enabled=false",
    ]
    result = train_flow(str(REPO / "configs" / "tiny.yaml"), overrides)
    run_dir = tmp_path / "runs" / "tiny"
    assert (run_dir / "pairs" / "manifest.json").is_file() and result["trained"] is None
    summary = (run_dir / "report.md").read_text()
    assert (
        "pairs-natural" in summary and "ingest/cmr" in summary
    )  # the stages it built are in the run's report
