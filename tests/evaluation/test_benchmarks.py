"""Benchmark loading: local BEIR dirs with several qrels files, the Hub code path on local dataset repos
(BeIR-style configs, qrels files, NanoBEIR), and clear, fast failures when the Hub is unreachable."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from st_workflow.beir import read_qrels
from st_workflow.config.evaluation import BenchmarkSpec
from st_workflow.evaluation.benchmarks import (
    BenchmarkUnavailableError,
    load_benchmark,
    load_local,
    nanobeir_sources,
    spec_from_argument,
)

REPO = Path(__file__).resolve().parents[2]


def test_local_benchmark_with_two_qrels_files(mini_beir: Path) -> None:
    b = load_local(mini_beir, name="mini", qrels=["qrels/*.tsv"])
    assert sorted(t.id for t in b.tasks()) == ["neighbours", "test"]
    s = b.subsets[0]
    assert s.doc_ids == sorted(s.doc_ids, reverse=True)  # trec tie order
    assert len(s.doc_ids) == 60 and len(s.queries) == 30
    test = next(t for t in b.tasks() if t.id == "test")
    assert test.qrels["q00"] == {"doc00": 2}
    assert b.describe()["subsets"][""]["qrels"]["neighbours"]["queries"] == 20
    assert load_local(mini_beir, name="mini").tasks()[0].id == "test"  # default: the split


def test_problems_are_counted_not_hidden(tmp_path: Path) -> None:
    from st_workflow.beir import write_benchmark

    write_benchmark(
        tmp_path,
        corpus=[("d1", "", "text one"), ("d2", "", "")],
        queries=[("q1", "one?")],
        qrels={"test": [("q1", "d1", 1), ("q1", "gone", 1), ("q-no-text", "d1", 1)]},
    )
    s = load_local(tmp_path, name="x").subsets[0]
    assert s.stats == {"missing_queries": 1, "missing_docs": 1, "empty_docs": 1}
    assert s.qrels["test"] == {"q1": {"d1": 1, "gone": 1}}  # the unretrievable doc still counts as relevant


def test_max_queries_is_a_seeded_sample(mini_beir: Path) -> None:
    a = load_local(mini_beir, name="m", max_queries=7, seed=3).tasks()[0].query_ids
    b = load_local(mini_beir, name="m", max_queries=7, seed=3).tasks()[0].query_ids
    c = load_local(mini_beir, name="m", max_queries=7, seed=4).tasks()[0].query_ids
    assert a == b and len(a) == 7 and a != c


def _readme(path: Path, configs: dict[str, dict[str, str]]) -> None:
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {file}" for split, file in splits.items()]
    (path / "README.md").write_text("\n".join([*lines, "---", ""]), encoding="utf-8")


def _hub_like_repo(root: Path, mini_beir: Path) -> Path:
    """A copy of a BEIR set laid out like a Hub dataset repo (mteb/BeIR style configs) plus qrels TSV files."""
    repo = root / "beir-like"
    (repo / "qrels").mkdir(parents=True)
    for f in ("corpus.jsonl", "queries.jsonl"):
        (repo / f).write_bytes((mini_beir / f).read_bytes())
    for f in ("test.tsv", "neighbours.tsv"):
        (repo / "qrels" / f).write_bytes((mini_beir / "qrels" / f).read_bytes())
    # The qrels config in the repo's main format (one builder per repo), the TSVs read as files.
    qrels = read_qrels(mini_beir / "qrels" / "test.tsv")
    rows = [{"query-id": q, "corpus-id": d, "score": g} for q, docs in qrels.items() for d, g in docs.items()]
    (repo / "qrels" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    _readme(
        repo,
        {
            "corpus": {"corpus": "corpus.jsonl"},
            "queries": {"queries": "queries.jsonl"},
            "default": {"test": "qrels/test.jsonl"},
        },
    )
    return repo


def test_hf_code_path_on_a_local_dataset_repo(tmp_path: Path, mini_beir: Path) -> None:
    repo = _hub_like_repo(tmp_path, mini_beir)
    # No qrels_config: no ``<repo>-qrels`` sibling, so the mteb layout's ``default`` config is used.
    via_config = load_benchmark(BenchmarkSpec(name="hub", kind="hf", path=str(repo)))
    local = load_local(mini_beir, name="mini")
    assert via_config.subsets[0].doc_ids == local.subsets[0].doc_ids
    assert via_config.subsets[0].texts == local.subsets[0].texts
    assert via_config.tasks()[0].qrels == local.tasks()[0].qrels
    # Several qrels files inside the repo: one task each.
    files = load_benchmark(
        BenchmarkSpec(
            name="hub", kind="hf", path=str(repo), qrels_files=["qrels/test.tsv", "qrels/neighbours.tsv"]
        )
    )
    assert [t.id for t in files.tasks()] == ["test", "neighbours"]
    assert files.tasks()[1].qrels["q03"] == {"doc04": 1}


def _nano_repo(root: Path, name: str, n_docs: int) -> None:
    repo = root / name
    for sub in ("corpus", "queries", "qrels"):
        (repo / sub).mkdir(parents=True)
    ids = [f"{name}-d{i}" for i in range(n_docs)]
    pq.write_table(
        pa.table({"_id": ids, "text": [f"{name} text {i}" for i in range(n_docs)]}),
        repo / "corpus/train.parquet",
    )
    pq.write_table(
        pa.table({"_id": ["q1", "q2"], "text": ["first?", "second?"]}), repo / "queries/train.parquet"
    )
    pq.write_table(
        pa.table({"query-id": ["q1", "q2"], "corpus-id": [ids[0], ids[1]]}), repo / "qrels/train.parquet"
    )
    _readme(repo, {s: {"train": f"{s}/train.parquet"} for s in ("corpus", "queries", "qrels")})


def test_nanobeir_loader_on_local_copies_of_the_hub_sets(tmp_path: Path) -> None:
    root = tmp_path / "zeta-alpha-ai"
    _nano_repo(root, "NanoSciFact", 5)
    _nano_repo(root, "NanoNFCorpus", 4)
    spec = BenchmarkSpec(
        name="nanobeir", kind="nanobeir", path=str(root), split="train", subsets=["SciFact", "NFCorpus"]
    )
    b = load_benchmark(spec)
    assert [t.id for t in b.tasks()] == ["NanoSciFact", "NanoNFCorpus"]
    assert b.tasks()[1].qrels == {"q1": {"NanoNFCorpus-d0": 1}, "q2": {"NanoNFCorpus-d1": 1}}
    assert len(b.subsets[0].doc_ids) == 5
    # The default covers all 13 sets, one dataset per set under the organisation.
    srcs = nanobeir_sources(None)
    assert len(srcs) == 13 and srcs["NanoSciFact"] == ("zeta-alpha-ai/NanoSciFact", None)
    assert nanobeir_sources("sentence-transformers/NanoBEIR-en", ["SciFact"]) == {
        "NanoSciFact": ("sentence-transformers/NanoBEIR-en", "NanoSciFact")
    }


def test_offline_and_uncached_hub_dataset_fails_clearly() -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    t0 = time.monotonic()
    with pytest.raises(BenchmarkUnavailableError, match=r"benchmark 'gone'.*HF_HUB_OFFLINE=1"):
        load_benchmark(BenchmarkSpec(name="gone", kind="hf", path="st-workflow-tests/no-such-dataset"))
    assert time.monotonic() - t0 < 30


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hub_fails_fast_with_a_clear_message(tmp_path: Path) -> None:
    """Online mode, but the Hub endpoint refuses connections: the CLI exits 2 with a message, it does not hang."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
        "HF_HOME": str(tmp_path / "hf"),
    }
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "st_workflow.cli",
            "evaluate",
            "--model",
            "tiny-bert",
            "--benchmark",
            "st-workflow-tests/no-such-dataset",
            "--hub-timeout",
            "5",
            "--cache-dir",
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "did not serve dataset 'st-workflow-tests/no-such-dataset'" in proc.stderr
    assert "on_unavailable: skip" in proc.stderr
    assert time.monotonic() - t0 < 90


def test_cli_benchmark_argument_resolution(mini_beir: Path, tmp_path: Path) -> None:
    reg = [BenchmarkSpec(name="sde", kind="hf", path="nasa-impact/x", general=True)]
    assert spec_from_argument("sde", registry=reg, split="dev").split == "dev"
    assert spec_from_argument(str(mini_beir)).kind == "local"
    assert spec_from_argument("nanobeir").kind == "nanobeir"
    assert spec_from_argument("mteb/scifact").path == "mteb/scifact"
    with pytest.raises(BenchmarkUnavailableError, match="neither a BEIR directory"):
        spec_from_argument("not-a-thing")
    assert json.loads(json.dumps(reg[0].model_dump()))["general"] is True
