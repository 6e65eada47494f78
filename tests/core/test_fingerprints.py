"""Model fingerprints and benchmark hashes keep their values: caches on users' disks must keep hitting.

Every value below was computed by the code of the release before ``st_workflow.fingerprints`` and
``st_workflow.benchmark_hashes`` existed (``weights_hash``/``model_hash``/``module_hash``/``corpus_hash`` in
``evaluation.embeddings``, ``model_fingerprint`` in ``training.stage``, ``tokenizer_fingerprint`` in
``training.pretokenize``, ``hub_fingerprint`` in ``models.resolve``, ``benchmark_hash`` in ``hashing``,
``benchmarks_hash`` in ``leakage``) over the fixtures of ``fingerprint_fixtures``, from a checkout of that commit.
A change here re-embeds every corpus, re-mines, re-tokenizes or retrains: only ever for a real bug.
"""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest

from st_workflow import benchmark_hashes, fingerprints
from st_workflow.evaluation.benchmarks import Subset
from st_workflow.leakage import LeakageTarget
from st_workflow.tasks.caching import benchmark_fingerprint
from tests.core.fingerprint_fixtures import hub_cache_ref, make_benchmark_dir, make_model_dir, make_module

WEIGHTS = "61bc75efc96a64995033b523bf9d985640ba4a4d8eecf958f8ec6c02c2904558"
TREE = "ef8f8364a9ba3f2c168d8219ec3ee98ff9db66cfe83b066324daaa5024752fea"
TOKENIZER = "d21418171e8d69d886e41654cbc0f1601aaa47d3b8a79c6f98baac5c4df37ea4"
HUB_ID_ONLY = "e6e32b031671a3ac83367f3628a6c21851b34ac6d90c6d8799a8f5b2be52c2bf"
HUB_CACHED = "be851c7ef5e26bc53c67cfc5291cd6d2897e53f7f91d49d679b57aa496eae2b2"
MODULE = "8d7af9634cd9867c75abe8be3c8f000df1cfb30bf58d0c51ee719e66988de570"
BENCHMARK = "f5ffb31cc073c4ab47f34c30b956238b93d13b4bec4e0ce433f328d4df035cf3"
BENCHMARKS = "94ffdbc94818e6029f7af7102c25a3ff86582d8f0b6121e02d2947bb22ce3111"
CORPUS = "d450fc7946b1872557683d195a7f319c4a9a6432721f66b7500e6783b6fb528f"
QRELS = "6fde295e97bb7083bfefc7f25758ed1b823866ba9cac6314b712b4d6e121ea04"


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No Hub to ask: revisions come from an empty local cache (``org/cached`` was fetched once)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    hub_cache_ref(cache, "org/cached", "a" * 40)
    return cache


def test_model_directory_fingerprints_keep_their_values(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "model")
    assert fingerprints.weights_hash(model) == WEIGHTS
    assert fingerprints.model_hash(str(model)) == WEIGHTS
    assert fingerprints.model_hash("org/any", str(model)) == WEIGHTS  # the resolver's local copy of a hub id
    assert fingerprints.model_fingerprint(str(model)) == TREE  # the train stage's base model: every file
    assert fingerprints.tree_hash(model) == TREE
    assert fingerprints.tokenizer_fingerprint(str(model)) == TOKENIZER


def test_training_state_and_cards_do_not_move_the_weights_hash(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "model")
    for name in ("optimizer.pt", "README.md", "lineage.json", "rng_state.pth", "eval/results.json"):
        (model / name).write_bytes(b"changed")
    assert fingerprints.weights_hash(model) == WEIGHTS
    assert fingerprints.tokenizer_fingerprint(str(model)) == TOKENIZER
    (model / "model.safetensors").write_bytes(b"new weights")
    assert fingerprints.weights_hash(model) != WEIGHTS
    assert fingerprints.tokenizer_fingerprint(str(model)) == TOKENIZER


def test_hub_ids_are_keyed_by_revision_or_else_by_id(offline_hub: Path) -> None:
    assert fingerprints.hub_fingerprint("org/cached") == HUB_CACHED
    assert fingerprints.model_hash("org/cached") == fingerprints.model_fingerprint("org/cached") == HUB_CACHED
    assert fingerprints.hub_fingerprint("org/unknown") is None
    assert fingerprints.model_hash("org/unknown") == HUB_ID_ONLY
    assert fingerprints.model_fingerprint("org/unknown") == HUB_ID_ONLY
    assert (
        fingerprints.tokenizer_fingerprint("org/unknown")
        == HUB_ID_ONLY
        == fingerprints.hub_id_hash("org/unknown")
    )


def test_module_hash_keeps_its_value() -> None:
    assert fingerprints.module_hash(make_module()) == MODULE


def test_benchmark_hashes_keep_their_values(tmp_path: Path) -> None:
    bench = make_benchmark_dir(tmp_path / "bench")
    assert benchmark_hashes.benchmark_hash(bench) == BENCHMARK
    targets = [
        LeakageTarget("b", str(bench), "answers", ("test",)),
        LeakageTarget("a", str(bench), "queries"),
    ]
    assert benchmark_hashes.benchmarks_hash(targets) == BENCHMARKS
    assert benchmark_fingerprint([{"name": "b", "directory": str(bench), "mode": "answers"}, str(bench)]) == [
        {"directory": BENCHMARK, "mode": "answers", "name": "b"},
        {"benchmark": BENCHMARK},
    ]
    sub = Subset(
        "",
        ["d1", "d2"],
        ["Dust storms on Mars.", "Comet tails."],
        {"q1": "Mars dust?", "q2": "x"},
        {"test": {"q1": {"d1": 1}, "q3": {"d2": 2}}},
    )
    assert sub.corpus_hash == benchmark_hashes.corpus_hash(sub.doc_ids, sub.texts) == CORPUS
    assert sub.qrels_hash("test") == benchmark_hashes.qrels_hash(sub.qrels["test"], sub.queries) == QRELS


def test_benchmark_hash_reads_content_not_place(tmp_path: Path) -> None:
    """A moved copy is the same benchmark; the manifest and timestamps are not content."""
    a = make_benchmark_dir(tmp_path / "a")
    b = make_benchmark_dir(tmp_path / "elsewhere" / "b")
    (b / "manifest.json").write_text('{"created_at": "later"}', encoding="utf-8")
    assert benchmark_hashes.benchmark_hash(a) == benchmark_hashes.benchmark_hash(b) == BENCHMARK
    (b / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td2\t1\n", encoding="utf-8")
    assert benchmark_hashes.benchmark_hash(b) != BENCHMARK
    assert benchmark_hashes.benchmark_hash(tmp_path / "missing") is None


def test_old_names_are_the_same_functions() -> None:
    """Code importing the names from where they lived keeps working, and computes the same thing."""
    from st_workflow import hashing, leakage
    from st_workflow.evaluation import embeddings
    from st_workflow.models import resolve
    from st_workflow.training import pretokenize, stage

    assert embeddings.weights_hash is fingerprints.weights_hash
    assert embeddings.model_hash is fingerprints.model_hash
    assert embeddings.module_hash is fingerprints.module_hash
    assert embeddings.corpus_hash is benchmark_hashes.corpus_hash
    assert stage.model_fingerprint is fingerprints.model_fingerprint
    assert pretokenize.tokenizer_fingerprint is fingerprints.tokenizer_fingerprint
    assert resolve.hub_fingerprint is fingerprints.hub_fingerprint
    assert hashing.benchmark_hash is benchmark_hashes.benchmark_hash
    assert leakage.benchmarks_hash is benchmark_hashes.benchmarks_hash
