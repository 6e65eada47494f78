"""The Prefect cache policy: keyed on manifest content and config sections, validated against the disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow, task

from st_workflow.config import load_config
from st_workflow.manifest import Manifest
from st_workflow.tasks.caching import ManifestCachePolicy, fingerprint, transient_error

CALLS: list[str] = []


@task(cache_policy=ManifestCachePolicy(sections=("training",), code=("tasks",)), persist_result=True)
def make_output(cfg, upstream: Manifest, tag: str) -> Manifest:
    CALLS.append(tag)
    out = cfg.stage_dir("unit")
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.txt").write_text(f"{tag}:{upstream.content_hash}")
    m = Manifest.build(stage="unit", directory=out, files={"data": "data.txt"}, upstream=[upstream])
    m.write()
    return m


@flow
def two_stage(cfg, upstream: Manifest, tag: str):
    return make_output(cfg, upstream, tag)


@pytest.fixture
def upstream(tmp_path: Path) -> Manifest:
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "u.txt").write_text("upstream")
    m = Manifest.build(stage="up", directory=tmp_path / "up", files={"u": "u.txt"})
    m.write()
    return m


def test_cache_hits_misses_and_revalidates(prefect_harness, tmp_path: Path, upstream: Manifest) -> None:
    CALLS.clear()
    cfg = load_config(None, [f"runs_dir={tmp_path / 'runs'}", "run_name=cache-test"])
    first = two_stage(cfg, upstream, "a")
    assert CALLS == ["a"]
    # Same inputs: cached, even with an unrelated config section changed.
    again = two_stage(
        load_config(
            None, [f"runs_dir={tmp_path / 'runs'}", "run_name=cache-test", "evaluation.batch_size=7"]
        ),
        upstream,
        "a",
    )
    assert CALLS == ["a"] and again.content_hash == first.content_hash
    # A config section the task reads changed: recomputed.
    two_stage(
        load_config(None, [f"runs_dir={tmp_path / 'runs'}", "run_name=cache-test", "training.epochs=3"]),
        upstream,
        "a",
    )
    assert CALLS == ["a", "a"]
    # Upstream content changed: recomputed.
    (Path(upstream.directory) / "u.txt").write_text("new upstream")
    changed = Manifest.build(stage="up", directory=upstream.directory, files={"u": "u.txt"})
    two_stage(cfg, changed, "a")
    assert CALLS == ["a", "a", "a"]
    # Outputs deleted behind Prefect's back: the stale record is not trusted, the task runs again.
    two_stage(cfg, upstream, "a")
    n = len(CALLS)
    (first.path("data")).unlink()
    rebuilt = two_stage(cfg, upstream, "a")
    assert len(CALLS) == n + 1
    assert rebuilt.is_valid()


def test_fingerprint_refuses_objects_without_content_identity() -> None:
    class Opaque:
        pass

    with pytest.raises(TypeError, match="cannot build a cache key from a Opaque"):
        fingerprint({"x": Opaque()}, ())
    assert fingerprint({"b": 1, "a": [Path("/x"), None]}, ()) == {"a": ["/x", None], "b": 1}


def test_retry_condition_only_for_transient_errors() -> None:
    class State:
        def __init__(self, exc: BaseException) -> None:
            self.exc = exc

        def result(self):
            raise self.exc

    assert transient_error(None, None, State(ConnectionError("reset")))
    assert transient_error(None, None, State(TimeoutError()))
    assert not transient_error(None, None, State(ValueError("bad record")))
    assert not transient_error(None, None, State(FileNotFoundError("x")))


# ---------------------------------------------------------------------------------------------- incomplete results
PARTIAL: list[str] = []
WORLD = {"complete": False}  # what the stage finds this time (Hub up or down); not an input of the task


@task(cache_policy=ManifestCachePolicy(sections=("training",), code=("tasks",)), persist_result=True)
def maybe_partial(cfg, upstream: Manifest) -> Manifest:
    """Writes a manifest that says whether the stage finished, which depends on the world, not on the inputs."""
    PARTIAL.append("run")
    complete = WORLD["complete"]
    out = cfg.stage_dir("partial")
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.txt").write_text(f"complete={complete}")
    m = Manifest.build(
        stage="partial", directory=out, files={"data": "data.txt"}, metrics={"complete": complete}
    )
    m.write()
    return m


@flow
def partial_flow(cfg, upstream: Manifest, complete: bool):
    WORLD["complete"] = complete
    return maybe_partial(cfg, upstream, return_state=True)


def test_incomplete_result_reruns_until_complete_then_is_cached(
    prefect_harness, tmp_path: Path, upstream: Manifest
) -> None:
    PARTIAL.clear()
    cfg = load_config(None, [f"runs_dir={tmp_path / 'runs'}", "run_name=partial"])
    # The world decides completeness (hub down, budget); the task's inputs are the same every time.
    first = partial_flow(cfg, upstream, False)
    assert PARTIAL == ["run"] and first.result().metrics["complete"] is False
    second = partial_flow(cfg, upstream, False)  # still incomplete: never served from the cache
    assert len(PARTIAL) == 2 and second.name != "Cached"
    third = partial_flow(cfg, upstream, True)
    assert len(PARTIAL) == 3 and third.result().metrics["complete"] is True
    fourth = partial_flow(cfg, upstream, True)
    fifth = partial_flow(cfg, upstream, False)
    # Once a complete result exists it is what the key resolves to, run after run.
    assert len(PARTIAL) == 3 and fourth.name == "Cached" and fifth.name == "Cached"
    assert fifth.result().metrics["complete"] is True and fifth.result().is_complete


def test_stage_cache_never_reuses_an_incomplete_manifest(tmp_path: Path) -> None:
    from st_workflow.manifest import reusable

    (tmp_path / "x.txt").write_text("x")
    for partial in ({"incomplete": {"benchmark:hub": "Hub unreachable"}}, {"metrics": {"complete": False}}):
        m = Manifest.build(stage="s", directory=tmp_path, files={"x": "x.txt"}, cache_key="k", **partial)
        m.write()
        assert not m.is_complete and reusable(tmp_path, "k") is None
    m = Manifest.build(stage="s", directory=tmp_path, files={"x": "x.txt"}, cache_key="k")
    m.write()
    assert m.is_complete and reusable(tmp_path, "k") is not None


def _mini_benchmark(directory: Path, answer: str) -> Path:
    from st_workflow.beir import write_benchmark

    write_benchmark(
        directory,
        corpus=[("d1", "", answer), ("d2", "", "Comet tails point away from the Sun.")],
        queries=[("q1", "What does the benchmark ask?")],
        qrels={"test": [("q1", "d1", 1)]},
    )
    return directory


@flow
def eval_flow(cfg, models: dict[str, str]):
    from st_workflow.tasks.model import evaluate_task

    return evaluate_task(cfg, models, {}, return_state=True)


def test_evaluation_that_skipped_a_benchmark_transiently_reruns(
    prefect_harness, tmp_path: Path, tiny_model_path: Path, test_cache_dir: Path, monkeypatch
) -> None:
    bench = _mini_benchmark(tmp_path / "bench", "Dust storms on Mars grow in summer.")
    overrides = [
        f"runs_dir={tmp_path / 'runs'}",
        "run_name=eval-skip",
        f"cache_dir={test_cache_dir}",
        "evaluation.ks=[10]",
    ]
    cfg = load_config(None, overrides)
    data = cfg.model_dump()
    data["evaluation"]["benchmarks"] = [
        {"name": "mini", "kind": "local", "path": str(bench)},
        # A Hub benchmark the Hub does not serve now (huggingface_hub refuses the network in this process):
        # with HF_HUB_OFFLINE unset the skip is transient, the run incomplete.
        {"name": "hub", "kind": "hf", "path": "st-workflow-tests/absent", "on_unavailable": "skip"},
    ]
    cfg = type(cfg).model_validate(data)
    models = {"base": str(tiny_model_path)}
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE, "conftest's HF_HUB_OFFLINE=1 must hold at import time"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    first = eval_flow(cfg, models)
    m = first.result()
    assert m.counts["benchmarks_skipped"] == 1
    second = eval_flow(cfg, models)
    assert second.name != "Cached", (
        "an evaluation that skipped a benchmark transiently was served from the cache"
    )
    assert not m.is_complete and "benchmark:hub" in m.incomplete and not second.result().is_complete
    # With the Hub switched off on purpose the skip is what every run gets: complete, cached.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    third = eval_flow(cfg, models)
    assert third.result().is_complete
    assert eval_flow(cfg, models).name == "Cached"
    # Back online, that offline result is not the answer: the Hub benchmark is tried again.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert eval_flow(cfg, models).name != "Cached"


# ---------------------------------------------------------------------------------------------- benchmark content
@flow
def assemble_flow(cfg, pairs: list[Manifest], benchmarks: list[dict]):
    from st_workflow.tasks.data import assemble_pairs_task

    return assemble_pairs_task(cfg, pairs, benchmarks, return_state=True)


def test_benchmark_rebuilt_in_place_reruns_the_tasks_that_guard_it(prefect_harness, tmp_path: Path) -> None:
    from tests.core.test_pairset_report import _pairs

    cfg = load_config(None, [f"runs_dir={tmp_path / 'runs'}", "run_name=bench-content"])
    pairs = _pairs(
        tmp_path / "pairs",
        [
            ("Title A", "Sea surface temperature from MODIS.", "cmr"),
            ("Title B", "Fine text about Mars dust storms in summer.", "pds"),
        ],
        "pairs-natural",
    )
    bench = _mini_benchmark(tmp_path / "bench", "Sea surface temperature from MODIS.")
    targets = [{"name": "bench", "directory": str(bench), "mode": "answers", "qrels": []}]
    first = assemble_flow(cfg, [pairs], targets).result()
    assert first.counts["dropped_leaked"] == 1 and first.counts["pairs"] == 1
    assert assemble_flow(cfg, [pairs], targets).name == "Cached"
    # Same path, other answers: the other pair now leaks; a key on the path would return the old dataset.
    _mini_benchmark(bench, "Fine text about Mars dust storms in summer.")
    rebuilt = assemble_flow(cfg, [pairs], targets)
    assert rebuilt.name != "Cached"
    assert rebuilt.result().counts["dropped_leaked"] == 1
    assert rebuilt.result().content_hash != first.content_hash


def test_every_benchmark_input_of_a_task_is_keyed_on_content() -> None:
    from st_workflow.tasks import data, model

    assert data.pair_gates_task.cache_policy.benchmarks == ("benchmark_dirs",)
    assert data.assemble_pairs_task.cache_policy.benchmarks == ("benchmark_dirs",)
    assert model.pretokenize_task.cache_policy.benchmarks == ("guard_targets",)
    assert model.evaluate_task.cache_policy.benchmarks == ("benchmarks",)
