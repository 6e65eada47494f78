"""The pairs dataset stage (dedup + leakage) and the run report."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from st_workflow.beir import write_benchmark
from st_workflow.config import load_config
from st_workflow.manifest import Manifest
from st_workflow.pairset import assemble_pairs
from st_workflow.reporting import StageRecord, write_run_report
from st_workflow.schemas import PAIR_SCHEMA


def _pairs(directory: Path, rows: list[tuple[str, str, str]], stage: str) -> Manifest:
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(
        [
            {
                "anchor": a,
                "positive": p,
                "negative": None,
                "type": "title-description",
                "source": s,
                "synthesized": False,
                "doc_id": f"{s}-{i}",
                "model": None,
                "prompt_version": None,
            }
            for i, (a, p, s) in enumerate(rows)
        ],
        schema=PAIR_SCHEMA,
    )
    pq.write_table(table, directory / "pairs.parquet")
    m = Manifest.build(stage=stage, directory=directory, files={"pairs": ("pairs.parquet", len(rows))})
    m.write()
    return m


def test_assemble_dedups_and_drops_leaks(tmp_path: Path) -> None:
    cfg = load_config(None, [f"runs_dir={tmp_path}", "run_name=r"])
    bench = tmp_path / "bench"
    write_benchmark(
        bench,
        corpus=[("d1", "Held-out dataset", "Sea surface temperature from MODIS.")],
        queries=[("q1", "Held-out dataset")],
        qrels={"test": [("q1", "d1", 1)]},
    )
    a = _pairs(
        tmp_path / "a",
        [
            ("Title A", "Description of A is long enough.", "cmr"),
            ("held-out   DATASET", "Some other text that is long.", "cmr"),
        ],
        "pairs-natural",
    )
    b = _pairs(
        tmp_path / "b",
        [
            ("title a", "Description  of A is long enough.", "pds"),
            ("Title B", "Sea surface temperature from MODIS.", "pds"),
            ("Title C", "Fine text about Mars dust storms.", "pds"),
        ],
        "llm-gates",
    )
    m = assemble_pairs(cfg, [a, b], [bench])
    assert m.counts["input"] == 5
    assert m.counts["dropped_duplicates"] == 1
    assert m.counts["dropped_leaked"] == 2
    assert m.counts["pairs"] == 2
    out = pq.read_table(m.path("pairs")).to_pylist()
    assert [r["anchor"] for r in out] == ["Title A", "Title C"]
    # Unchanged inputs: the same manifest comes back without rewriting.
    again = assemble_pairs(cfg, [a, b], [bench])
    assert again.created_at == m.created_at and again.content_hash == m.content_hash


def test_assemble_rejects_wrong_schema(tmp_path: Path) -> None:
    cfg = load_config(None, [f"runs_dir={tmp_path}", "run_name=r"])
    d = tmp_path / "bad"
    d.mkdir()
    pq.write_table(pa.table({"anchor": ["a"], "positive": ["b"]}), d / "pairs.parquet")
    bad = Manifest.build(stage="x", directory=d, files={"pairs": "pairs.parquet"})
    with pytest.raises(ValueError, match="lack columns"):
        assemble_pairs(cfg, [bad], [])


def test_run_report_files_and_summary_shape(tmp_path: Path) -> None:
    cfg = load_config(None, [f"runs_dir={tmp_path}", "run_name=demo"])
    metrics = {
        "base": {"in-domain": {"ndcg@10": 0.5, "mrr@10": 0.4, "recall@10": 0.7}},
        "fine_tuned": {"in-domain": {"ndcg@10": 0.6, "mrr@10": 0.5, "recall@10": 0.8}},
    }
    stages = [
        StageRecord(stage="ingest/cmr", status="ran", seconds=1.2, counts={"kept": 10}),
        StageRecord(stage="llm-pairs", status="skipped", note="no endpoint"),
    ]
    paths = write_run_report(
        cfg,
        metrics=metrics,
        stages=stages,
        wall_seconds=12.5,
        promotion={"promoted": "fine_tuned", "path": "/x", "reasons": ["best"]},
    )
    summary = json.loads(paths["summary"].read_text())
    assert summary["wall_seconds"] == 12.5
    assert summary["models"]["fine_tuned"]["in-domain"]["ndcg@10"] == 0.6
    assert set(summary["models"]) == {"base", "fine_tuned"}
    md = paths["report"].read_text()
    assert "| fine_tuned | in-domain | 0.6000 | 0.5000 | 0.8000 |" in md
    assert "+0.1000" in md and "report_metrics.png" in md and "no endpoint" in md
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_report_shows_the_tradeoff_and_its_chart_inline_in_the_artifact(tmp_path: Path) -> None:
    from st_workflow.tasks.artifacts import inline_images

    cfg = load_config(
        None,
        [
            f"runs_dir={tmp_path}",
            "run_name=demo",
            "evaluation.benchmarks=[{name: in-domain, kind: pipeline}, {name: cisi, path: x, general: true}]",
        ],
    )
    metrics = {
        "base": {
            "in-domain": {"ndcg@10": 0.50, "validation/ndcg@10": 0.45},
            "cisi": {"ndcg@10": 0.40, "validation/ndcg@10": 0.42},
        },
        "fine_tuned": {
            "in-domain": {"ndcg@10": 0.60, "validation/ndcg@10": 0.55},
            "cisi": {"ndcg@10": 0.37, "validation/ndcg@10": 0.38},
        },
        "interp-0.50": {
            "in-domain": {"ndcg@10": 0.56, "validation/ndcg@10": 0.52},
            "cisi": {"ndcg@10": 0.40, "validation/ndcg@10": 0.415},
        },
    }
    paths = write_run_report(
        cfg,
        metrics=metrics,
        stages=[],
        wall_seconds=1.0,
        promotion={"promoted": "interp-0.50", "path": "/x", "reasons": ["floor"], "link": "/run/promoted"},
    )
    md = paths["report"].read_text()
    assert "| Model | in-domain | cisi (general) | general mean |" in md
    assert "| **interp-0.50** ★ | 0.5600 (+0.0600) | 0.4000 (+0.0000) | 0.4000 (+0.0000) |" in md
    assert "| fine_tuned | 0.6000 (+0.1000) | 0.3700 (-0.0300) | 0.3700 (-0.0300) |" in md
    assert "### Validation splits" in md and "| fine_tuned | 0.5500 (+0.1000) | 0.3800 (-0.0400)" in md
    summary = json.loads(paths["summary"].read_text())
    assert [r["model"] for r in summary["tradeoff"]["rows"]] == ["base", "fine_tuned", "interp-0.50"]
    # report.md links the chart relatively (it renders from disk); the artifact embeds it, because the Prefect
    # UI shows an artifact on its own page where a relative link points nowhere.
    assert "![metrics](report_metrics.png)" in md
    inline = inline_images(md, paths["report"].parent)
    assert "![metrics](data:image/png;base64,iVBORw0KGgo" in inline and "report_metrics.png)" not in inline


def test_run_report_shows_the_shipped_models_precision_choice(tmp_path: Path) -> None:
    """With ``evaluation.precisions`` beyond float32 the run report carries the promoted model's precision table
    (metric, retention, bytes/doc, ms/query) and its retention against the rescore multiplier."""
    cfg = load_config(
        None,
        [
            f"runs_dir={tmp_path}",
            "run_name=demo",
            "evaluation.precisions=[float32,int8,binary,binary_rescore]",
            "evaluation.rescore=int8",
            "evaluation.rescore_multipliers=[2]",
        ],
    )
    bench = {
        "ndcg@10": 0.8,
        "bytes_per_doc": 1536.0,
        "query_ms": 0.05,
        "int8/ndcg@10": 0.8,
        "int8/retention/ndcg@10": 1.0,
        "int8/bytes_per_doc": 384.0,
        "binary/ndcg@10": 0.72,
        "binary/retention/ndcg@10": 0.9,
        "binary/bytes_per_doc": 48.0,
        "binary/query_ms": 0.01,
        "binary_rescore/ndcg@10": 0.79,
        "binary_rescore/retention/ndcg@10": 0.9875,
        "binary_rescore/bytes_per_doc": 48.0,
        "binary_rescore/rescore_bytes_per_doc": 384.0,
        "binary_rescore@2/ndcg@10": 0.76,
        "binary_rescore@2/retention/ndcg@10": 0.95,
    }
    metrics = {"base": {"cisi": dict(bench)}, "fine_tuned": {"cisi": dict(bench)}}
    md = write_run_report(
        cfg,
        metrics=metrics,
        stages=[],
        wall_seconds=1.0,
        promotion={"promoted": "fine_tuned", "path": "/x", "reasons": []},
    )["report"].read_text()
    assert "## Choosing a precision — fine_tuned (ndcg@10)" in md
    assert "| cisi | binary + rescore | 0.7900 | 98.8% | 48.0 (+384 on disk) |" in md
    assert "| cisi | binary (Hamming) | 0.7200 | 90.0% | 48.0 | 0.010 |" in md
    assert "retention against the multiplier — fine_tuned" in md and "x2" in md and "x4" in md
    # float32 only: no precision section
    plain = load_config(None, [f"runs_dir={tmp_path / 'p'}", "run_name=demo"])
    md = write_run_report(plain, metrics=metrics, stages=[], wall_seconds=1.0)["report"].read_text()
    assert "Choosing a precision" not in md
