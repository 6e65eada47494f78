"""Progress artifacts on a real (temporary) Prefect API: what a user watching the run's page sees.

A task's stages become progress artifacts with stable keys, 100 when finished, left below 100 when stopped; a stage
reused from Prefect's cache says so at once; and after the tiny pipeline with LLM generation (the local
OpenAI-compatible server) every long stage's artifact reads 100, a re-run reports them reused, and a cancelled
training leaves its artifact where it stopped.
"""

from __future__ import annotations

import datetime as dt
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, task

from st_workflow import progress
from st_workflow.tasks.caching import ManifestCachePolicy
from st_workflow.tasks.progress import progress_key, reports_progress
from tests.core.test_progress import Recorder

REPO = Path(__file__).resolve().parents[2]


def _latest_progress(since: dt.datetime) -> dict[str, Any]:
    """The newest progress artifact of every key created since ``since``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=200,
        )
    out: dict[str, Any] = {}
    for a in arts:
        if a.key and a.created and a.created >= since and a.key not in out:
            out[a.key] = a
    return out


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@task(name="progress-probe")
@reports_progress
def _probe(n: int, fail_at: int | None = None, shard: str | None = None) -> int:
    with progress.stage("probe", "Probe", total=n, unit="docs") as bar:

        def one(i: int) -> None:
            if fail_at is not None and i >= fail_at:
                raise RuntimeError("endpoint gone")
            bar.advance(1, detail="70 tokens, $0.0012")

        with ThreadPoolExecutor(3) as pool:  # advanced from worker threads, as the LLM stages do
            if fail_at is None:
                list(pool.map(one, range(n)))
            else:
                for i in range(fail_at):
                    pool.submit(one, i).result()
                one(fail_at)
    return n


def test_a_task_stage_is_a_progress_artifact_reaching_100(prefect_harness) -> None:
    t0 = _now()

    @flow(name="progress-probe-ok")
    def run() -> int:
        return _probe(30, shard="cmr")

    assert run() == 30
    art = _latest_progress(t0)[progress_key("probe", shard="cmr")]
    assert art.key == "progress-probe-cmr" and art.data == 100.0 and art.task_run_id is not None
    assert art.description == "Probe: 30/30 docs, 70 tokens, $0.0012"


def test_a_failed_stage_is_left_below_100(prefect_harness) -> None:
    t0 = _now()

    @flow(name="progress-probe-fail")
    def run() -> int:
        return _probe(20, fail_at=8)

    with pytest.raises(RuntimeError, match="endpoint gone"):
        run()
    art = _latest_progress(t0)["progress-probe"]
    assert art.data == 40.0
    assert art.description == "Probe: 8/20 docs, stopped: RuntimeError (70 tokens, $0.0012) (stopped)"


def test_a_stage_reused_from_the_prefect_cache_says_so_at_once(prefect_harness) -> None:
    calls: list[int] = []

    @task(
        name="progress-cached-probe",
        cache_policy=ManifestCachePolicy(
            extra={"test": uuid.uuid4().hex}, progress=("cached", "Cached probe")
        ),
        persist_result=True,
    )
    @reports_progress
    def cached(n: int) -> int:
        calls.append(n)
        with progress.stage("cached", "Cached probe", total=n) as bar:
            bar.advance(n)
        return n

    @flow(name="progress-cached")
    def run() -> int:
        return cached(5)

    rec = Recorder()
    first = _now()
    assert run() == 5
    assert _latest_progress(first)["progress-cached"].description == "Cached probe: 5/5 items"
    second = _now()
    with progress.sinks(rec):  # the terminal (installed by the command line) hears of it too
        assert run() == 5
    assert calls == [5]
    art = _latest_progress(second)["progress-cached"]
    assert (art.data, art.description) == (100.0, "Cached probe: reused")
    assert [(m, s.status) for m, s in rec.calls] == [("open", "reused"), ("close", "reused")]


# ------------------------------------------------------------------------- the tiny pipeline, with generation
#: Every long stage of the tiny pipeline with an LLM endpoint: ingest per source, the relevancy filter and
#: generation, mining, pre-tokenization, training and evaluation.
STAGE_KEYS = [
    "progress-ingest-cmr",
    "progress-ingest-pds",
    "progress-ingest-arxiv",
    "progress-relevancy-filter",
    "progress-generation",
    "progress-mining",
    "progress-pretokenize",
    "progress-training",
    "progress-evaluation",
]
CACHED_KEYS = [k for k in STAGE_KEYS if not k.startswith("progress-ingest")]


@pytest.fixture(scope="module")
def llm_run(prefect_harness, tmp_path_factory: pytest.TempPathFactory, test_cache_dir: Path):
    from st_workflow.flows import pipeline_flow
    from st_workflow.testing.openai_server import OpenAICompatServer

    runs = tmp_path_factory.mktemp("progress-runs")
    mp = pytest.MonkeyPatch()
    mp.setenv("OPENAI_API_KEY", "sk-progress-test")
    with OpenAICompatServer() as llm:
        overrides = [
            f"runs_dir={runs}",
            f"cache_dir={test_cache_dir}",
            "run_name=tiny-progress",
            f"generation.endpoint.base_url={llm.base_url}",
            "generation.endpoint.model=local-stub",
            "generation.execution.prefect_concurrency_limit=null",
            "generation.pairs.max_documents=6",
        ]
        t0 = _now()
        pipeline_flow(str(REPO / "configs" / "tiny.yaml"), overrides)
        first = _latest_progress(t0)
        t1 = _now()
        pipeline_flow(str(REPO / "configs" / "tiny.yaml"), overrides)
        second = _latest_progress(t1)
    mp.undo()
    yield {"runs": runs, "overrides": overrides, "first": first, "second": second}


def test_every_long_stage_of_the_pipeline_reads_100(llm_run) -> None:
    first = llm_run["first"]
    missing = [k for k in STAGE_KEYS if k not in first]
    assert not missing, f"no progress artifact for {missing}; got {sorted(first)}"
    assert {k: first[k].data for k in STAGE_KEYS} == {k: 100.0 for k in STAGE_KEYS}
    training = first["progress-training"].description
    assert training.startswith("Training: 20/20 steps") and "samples/s" in training, training
    assert "tokens" in first["progress-generation"].description, first["progress-generation"].description


def test_an_unchanged_rerun_reports_the_cached_stages_reused(llm_run) -> None:
    second = llm_run["second"]
    got = {k: (second[k].data, second[k].description.endswith("reused")) for k in CACHED_KEYS if k in second}
    assert got == {k: (100.0, True) for k in CACHED_KEYS}


def test_a_cancelled_training_leaves_its_artifact_below_100(llm_run) -> None:
    from st_workflow.config import load_config
    from st_workflow.flows.common import existing_manifest
    from st_workflow.training import train_stage
    from st_workflow.training.launcher import TrainingCancelled

    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [*llm_run["overrides"], "training.max_steps=400", "training.launch.kill_grace_s=5"],
    )
    pairs = existing_manifest(cfg.stage_dir("pairs"))
    assert pairs is not None
    rec = Recorder()

    def stepped() -> bool:
        return any(s.key == "training" and s.completed >= 1 for s in rec.updates())

    @task(name="progress-cancelled-train")
    @reports_progress
    def train() -> None:
        with progress.sinks(rec):
            train_stage(cfg, pairs, None, should_cancel=stepped)

    @flow(name="progress-cancelled")
    def run() -> None:
        train()

    t0 = _now()
    with pytest.raises(TrainingCancelled):
        run()
    art = _latest_progress(t0)["progress-training"]
    assert 0 < art.data < 100
    assert "/400 steps" in art.description and "cancelled" in art.description, art.description
