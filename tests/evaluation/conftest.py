"""Fixtures of the evaluation tests: a small BEIR benchmark from the bundled arXiv records, configs, a 2nd model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from st_workflow.beir import write_benchmark
from st_workflow.config import PipelineConfig

ARXIV = (
    Path(__file__).resolve().parents[2]
    / "st_workflow/data/samples/arxiv/arxiv-metadata-oai-snapshot.head60.jsonl"
)


def arxiv_records() -> list[dict]:
    with open(ARXIV, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="session")
def mini_beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 real arXiv abstracts; 30 title queries; qrels ``test`` (title -> own abstract, some graded 2) and
    ``neighbours`` (title -> the next abstract), so there are two tasks over one corpus."""
    d = tmp_path_factory.mktemp("mini-beir")
    rows = arxiv_records()
    corpus = [(f"doc{i:02d}", "", " ".join(r["abstract"].split())) for i, r in enumerate(rows)]
    queries = [(f"q{i:02d}", " ".join(r["title"].split())) for i, r in enumerate(rows[:30])]
    test = [(f"q{i:02d}", f"doc{i:02d}", 2 if i % 5 == 0 else 1) for i in range(30)]
    neighbours = [(f"q{i:02d}", f"doc{i + 1:02d}", 1) for i in range(20)]
    write_benchmark(d, corpus=corpus, queries=queries, qrels={"test": test, "neighbours": neighbours})
    return d


@pytest.fixture()
def eval_cfg(tmp_path: Path, test_cache_dir: Path) -> PipelineConfig:
    """A config writing under ``tmp_path`` with the shared test cache (tiny models live there)."""
    return PipelineConfig(runs_dir=str(tmp_path / "runs"), run_name="evalrun", cache_dir=str(test_cache_dir))


@pytest.fixture()
def model_copy(tiny_model_path: Path, tmp_path: Path) -> Path:
    """A writable copy of the tiny model (so a test can 'retrain' it)."""
    dst = tmp_path / "fine_tuned"
    shutil.copytree(tiny_model_path, dst)
    return dst
