"""End to end: the pipeline flow on configs/tiny.yaml (tiny random BERT, a slice of the bundled records)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from st_workflow.beir import read_corpus, read_queries
from st_workflow.flows import pipeline_flow
from st_workflow.schemas import normalize_for_match

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_run(
    prefect_harness, tmp_path_factory: pytest.TempPathFactory, test_cache_dir: Path
) -> tuple[Path, list]:
    runs = tmp_path_factory.mktemp("runs")
    overrides = [f"runs_dir={runs}", f"cache_dir={test_cache_dir}"]
    first = pipeline_flow(str(REPO / "configs" / "tiny.yaml"), overrides)
    return runs / "tiny", overrides, first


def test_tiny_pipeline_writes_report_and_summary(tiny_run) -> None:
    run_dir, _, result = tiny_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["wall_seconds"] > 0
    for model in ("base", "fine_tuned"):
        metrics = summary["models"][model]["in-domain"]
        for key in ("ndcg@10", "mrr@10", "recall@10"):
            assert 0.0 <= metrics[key] <= 1.0
    report = (run_dir / "report.md").read_text()
    assert "| fine_tuned | in-domain |" in report
    assert (run_dir / "report_metrics.png").read_bytes()[:4] == b"\x89PNG"
    stages = {s["stage"]: s for s in summary["stages"]}
    assert stages["llm-filter + llm-pairs + llm-gates"]["status"] == "skipped"
    assert "no endpoint configured" in stages["llm-filter + llm-pairs + llm-gates"]["note"]
    promoted = result["promotion"]["promoted"]
    assert promoted in {"base", "fine_tuned"} | {
        k for k in summary["models"] if k.startswith(("checkpoint-", "interp-"))
    }
    # The trade-off is measured on every run: in-domain and the bundled general benchmarks, validation and test.
    assert {"in-domain", "cisi", "med"} <= set(summary["models"]["base"])
    assert "validation/ndcg@10" in summary["models"]["fine_tuned"]["cisi"]
    assert "interp-0.50" in summary["models"] and (run_dir / "mine" / "manifest.json").is_file()
    link = run_dir / "promoted"
    assert link.is_symlink() and (link / "modules.json").is_file()
    assert json.loads((run_dir / "promoted.json").read_text())["promoted"] == promoted
    assert "cisi (general)" in report and "### Validation splits" in report


def test_model_lineage_lists_every_upstream_manifest(tiny_run) -> None:
    run_dir, _, _ = tiny_run
    lineage = json.loads((run_dir / "train" / "model" / "lineage.json").read_text())
    entries = lineage if isinstance(lineage, list) else lineage.get("manifests", lineage)
    stages = {e["stage"] for e in entries}
    assert {"ingest", "benchmark", "pairs-natural", "pairs"} <= stages
    assert {e["name"] for e in entries if e["stage"] == "ingest"} == {"cmr", "pds", "arxiv"}


def test_no_benchmark_answer_in_training_pairs(tiny_run) -> None:
    run_dir, _, _ = tiny_run
    bench = run_dir / "benchmark" / "in-domain"
    answers = {json.loads(line)["corpus_id"] for line in (bench / "heldout.jsonl").read_text().splitlines()}
    held = {normalize_for_match(q) for q in read_queries(bench).values()}
    held |= {normalize_for_match(d["text"]) for cid, d in read_corpus(bench).items() if cid in answers}
    pairs = pq.read_table(run_dir / "pairs" / "pairs.parquet").to_pylist()
    assert pairs and len(read_corpus(bench)) > len(answers)  # the corpus is the whole collection
    assert not [
        p
        for p in pairs
        if normalize_for_match(p["anchor"]) in held or normalize_for_match(p["positive"]) in held
    ]


def test_unchanged_rerun_reuses_every_stage(tiny_run) -> None:
    run_dir, overrides, _ = tiny_run
    pipeline_flow(str(REPO / "configs" / "tiny.yaml"), overrides)
    summary = json.loads((run_dir / "summary.json").read_text())
    ran = [s["stage"] for s in summary["stages"] if s["status"] == "ran"]
    assert ran == [], f"stages recomputed on an unchanged re-run: {ran}"
    assert summary["reused_stages"] >= 7
