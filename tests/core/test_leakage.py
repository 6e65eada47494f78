"""Leakage means the answers, not the corpus: the rule, its per-benchmark strictness, the all-dropped failure."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from st_workflow.beir import write_benchmark
from st_workflow.config import load_config
from st_workflow.leakage import BenchmarkGuard, LeakageError, LeakageTarget, leakage_targets
from st_workflow.manifest import Manifest
from st_workflow.pairset import assemble_pairs
from st_workflow.schemas import PAIR_SCHEMA

DOCS = {
    "d1": "Dust storms on Mars grow during the southern summer and can cover the whole planet.",
    "d2": "Comet tails point away from the Sun because the solar wind pushes the released gas.",
    "d3": "Ocean salinity is mapped from orbit with an L-band radiometer on the SMAP mission.",
    "d4": "Lunar regolith is a layer of loose dust and broken rock covering solid bedrock.",
}


@pytest.fixture()
def bench(tmp_path: Path) -> Path:
    d = tmp_path / "bench"
    write_benchmark(
        d,
        [(k, "", v) for k, v in DOCS.items()],
        [
            ("q1", "When do dust storms on Mars grow?"),
            ("q2", "Why do comet tails point away?"),
            ("q9", "Train q"),
        ],
        {"test": [("q1", "d1", 1)], "validation": [("q2", "d2", 1)], "train": [("q9", "d3", 1)]},
    )
    return d


def test_answers_rule_guards_queries_and_relevant_documents_only(bench: Path) -> None:
    g = BenchmarkGuard([LeakageTarget("b", str(bench), "answers", ("test", "validation"))])
    leak = g.check("Martian weather", DOCS["d1"].upper())
    assert leak is not None and (leak.field, leak.reason, leak.match) == (
        "positive",
        "relevant document",
        "d1",
    )
    q = g.check("when do dust storms on mars grow", "anything else entirely different here")
    assert q is not None and (q.field, q.reason) == ("anchor", "query")
    assert (
        g.check("What is the regolith?", DOCS["d4"]) is None
    )  # corpus documents no query asks for: fair game
    assert g.check("Salt from orbit", DOCS["d3"]) is None  # judged only by the train split: training data
    assert (
        g.check("Martian weather", "other text", negative=DOCS["d1"]) is None
    )  # a hard negative is no answer
    assert "leakage: answers" in leak.describe()


def test_stricter_and_looser_modes(bench: Path) -> None:
    corpus = BenchmarkGuard([LeakageTarget("b", str(bench), "corpus")])
    assert corpus.check("What is the regolith?", DOCS["d4"]).reason == "corpus document"
    queries = BenchmarkGuard([LeakageTarget("b", str(bench), "queries")])
    assert (
        queries.check("x", DOCS["d1"]) is None and queries.check("Why do comet tails point away?") is not None
    )
    assert not BenchmarkGuard([LeakageTarget("b", str(bench), "none")])
    everything = BenchmarkGuard([str(bench)])  # a bare directory: answers over every qrels file
    assert everything.check("Salt from orbit", DOCS["d3"]) is not None
    with pytest.raises(ValueError, match="unknown leakage mode"):
        LeakageTarget("b", str(bench), "strict")


def _pairs_manifest(tmp_path: Path, rows: list[tuple[str, str]]) -> Manifest:
    d = tmp_path / "natural"
    d.mkdir()
    table = pa.Table.from_pylist(
        [
            {
                "anchor": a,
                "positive": p,
                "negative": None,
                "type": "title-abstract",
                "source": "loc",
                "synthesized": False,
                "doc_id": f"d{i}",
                "model": None,
                "prompt_version": None,
            }
            for i, (a, p) in enumerate(rows)
        ],
        schema=PAIR_SCHEMA,
    )
    pq.write_table(table, d / "pairs.parquet")
    return Manifest.build(stage="pairs-natural", directory=d, files={"pairs": ("pairs.parquet", len(rows))})


def test_a_benchmark_over_the_training_corpus_keeps_the_pairs_that_answer_nothing(
    bench: Path, tmp_path: Path
) -> None:
    cfg = load_config(
        None,
        [
            f"runs_dir={tmp_path / 'runs'}",
            f"evaluation.benchmarks=[{{name: mine, kind: local, path: '{bench}'}}]",
        ],
    )
    targets = leakage_targets(cfg, None)
    assert [(t.name, t.mode, t.qrels) for t in targets] == [("mine", "answers", ("test", "validation"))]
    pairs = _pairs_manifest(tmp_path, [(f"Title of {k}", v) for k, v in DOCS.items()])
    m = assemble_pairs(cfg, [pairs], [t.as_dict() for t in targets])
    assert m.counts["pairs"] == 2 and m.counts["dropped_leaked:mine"] == 2  # d1 and d2 answer queries


def test_a_rule_that_drops_every_pair_fails_at_once_naming_benchmark_count_and_option(
    bench: Path, tmp_path: Path
) -> None:
    cfg = load_config(
        None,
        [
            f"runs_dir={tmp_path / 'runs'}",
            f"evaluation.benchmarks=[{{name: mine, kind: local, path: '{bench}', leakage: corpus}}]",
        ],
    )
    pairs = _pairs_manifest(tmp_path, [(f"Title of {k}", v) for k, v in DOCS.items()])
    with pytest.raises(LeakageError) as e:
        assemble_pairs(cfg, [pairs], [t.as_dict() for t in leakage_targets(cfg, None)])
    msg = str(e.value)
    assert (
        "benchmark 'mine' (leakage: corpus) dropped 4" in msg and "evaluation.benchmarks[mine].leakage" in msg
    )
