"""The real training stage reports its progress: pre-tokenization in rows, training in optimizer steps from rank 0
of the launched worker (samples/s and an ETA), both at 100 when done; an unchanged second call says reused."""

from __future__ import annotations

from pathlib import Path

from st_workflow import progress
from st_workflow.training import train_stage
from tests.core.test_progress import Recorder
from tests.training._train_helpers import sample_pairs, tiny_config, write_pairs_manifest


def test_train_stage_reports_rows_and_steps_then_reuse(
    samples_dir: Path, tmp_path: Path, test_cache_dir: Path
) -> None:
    pairs = write_pairs_manifest(tmp_path / "pairs", sample_pairs(samples_dir, n_arxiv=40, n_pds=40))
    cfg = tiny_config(tmp_path, test_cache_dir, run_name="progress", max_steps=6)
    rec = Recorder()
    with progress.sinks(rec):
        train_stage(cfg, pairs, None, log_sink=lambda line: None)
    by_key: dict[str, list] = {}
    for method, state in rec.calls:
        by_key.setdefault(state.key, []).append((method, state))
    assert set(by_key) == {"pretokenize", "training"}

    pre = [s for m, s in by_key["pretokenize"] if m == "update"]
    assert pre[-1].status == "done" and pre[-1].unit == "rows" and pre[-1].completed == pre[-1].total > 0

    steps = [s for m, s in by_key["training"] if m == "update"]
    assert by_key["training"][0][0] == "open" and by_key["training"][-1][0] == "close"
    assert (steps[-1].status, steps[-1].completed, steps[-1].total, steps[-1].unit) == ("done", 6, 6, "steps")
    assert "samples/s" in (steps[-1].detail or "")
    assert any("ETA" in (s.detail or "") for s in steps[:-1]), [s.detail for s in steps]

    again = Recorder()
    with progress.sinks(again):
        train_stage(cfg, pairs, None, log_sink=lambda line: None)
    assert [(m, s.key, s.status) for m, s in again.calls] == [
        ("open", "pretokenize", "reused"),
        ("close", "pretokenize", "reused"),
        ("open", "training", "reused"),
        ("close", "training", "reused"),
    ]
