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
