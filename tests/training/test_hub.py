"""The push after promotion against a local server speaking the Hugging Face Hub upload protocol.

The tiny pipeline runs in a child process, as a user runs it (``HF_ENDPOINT``, ``HF_TOKEN`` in the environment:
``huggingface_hub`` and ``datasets`` read the endpoint when imported), against the test session's Prefect API.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from st_workflow.testing.hub_upload_server import HubUploadServer

REPO = Path(__file__).resolve().parents[2]
MODEL_REPO = "alice/tiny-st"
DATASET_REPO = "alice/tiny-pairs"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _front_matter(card: str) -> dict[str, Any]:
    assert card.startswith("---\n"), card[:200]
    return yaml.safe_load(card.split("---\n", 2)[1])


class Child:
    """One ``st-workflow run`` in a child process against the session's Prefect API and the local hub."""

    def __init__(self, tmp: Path, hub: HubUploadServer, cache_dir: Path) -> None:
        from prefect.settings import PREFECT_API_URL

        self.runs = tmp / "runs"
        self.prefect_home = tmp / "prefect-home"
        self.api_url = str(PREFECT_API_URL.value())
        self.hub = hub
        self.cache_dir = cache_dir
        self.hf_home = tmp / "hf-home"

    def run(self, token: str, *extra: str) -> tuple[subprocess.CompletedProcess[str], list[Any]]:
        """Run the tiny pipeline with the push on; returns the process and the flow runs it made."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PREFECT_"))}
        env.update(
            PREFECT_API_URL=self.api_url,
            PREFECT_HOME=str(self.prefect_home),
            HF_ENDPOINT=self.hub.url,
            HF_TOKEN=token,
            HF_HOME=str(self.hf_home),
            HF_HUB_OFFLINE="0",
            HF_DATASETS_OFFLINE="0",
            HF_HUB_DISABLE_XET="1",  # the local server speaks the Hub's legacy LFS upload, not Xet
            TOKENIZERS_PARALLELISM="false",
            WANDB_MODE="disabled",
        )
        overrides = [
            f"runs_dir={self.runs}",
            f"cache_dir={self.cache_dir}",
            "hf_offline=false",
            "evaluation.benchmarks=[{name: in-domain, kind: pipeline}]",
            # the last candidate (the interpolation), so the promoted model is not the final fine-tuned one
            "evaluation.promotion.policy=last",
            "training.hub.push=true",
            f"training.hub.repo_id={MODEL_REPO}",
            "training.hub.push_dataset=true",
            f"training.hub.dataset_repo_id={DATASET_REPO}",
            "training.hub.retry_delay_s=1",
            *extra,
        ]
        args = [sys.executable, "-m", "st_workflow.cli", "run", str(REPO / "configs" / "tiny.yaml")]
        for o in overrides:
            args += ["--set", o]
        since = dt.datetime.now(dt.UTC)
        proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        return proc, self.flow_runs(since)

    @staticmethod
    def flow_runs(since: dt.datetime) -> list[Any]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime

        with get_client(sync_client=True) as client:
            return client.read_flow_runs(
                flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since))
            )


def _task_runs(flow_runs: list[Any], fn: str) -> list[Any]:
    """Task runs of the task function ``fn`` in these flow runs (not the stand-ins of subflow calls)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[f.id for f in flow_runs]))
        )
    return [t for t in runs if t.task_key.startswith(f"{fn}-")]


def _logs(flow_runs: list[Any]) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    out: list[str] = []
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[f.id for f in flow_runs])),
                limit=200,
                offset=len(out),
            )
            out += [log.message for log in page]
            if len(page) < 200:
                return "\n".join(out)


@pytest.fixture(scope="module")
def hub_run(
    prefect_harness, tmp_path_factory: pytest.TempPathFactory, test_cache_dir: Path
) -> dict[str, Any]:
    """The tiny pipeline pushing to a hub whose first model commit fails with a 503."""
    token = f"hf_{secrets.token_hex(16)}"
    hub = HubUploadServer(tokens={token: "alice"}).start()
    hub.fail("commit", status=503, repo_type="model")
    child = Child(tmp_path_factory.mktemp("hub-run"), hub, test_cache_dir)
    proc, flow_runs = child.run(token)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    yield {"hub": hub, "child": child, "token": token, "proc": proc, "flow_runs": flow_runs}
    hub.stop()


def test_failed_push_retries_only_the_push_and_uploads_the_promoted_model(hub_run) -> None:
    hub, child, flow_runs = hub_run["hub"], hub_run["child"], hub_run["flow_runs"]
    run_dir = child.runs / "tiny"
    # The 503 failed the push task once; its own retry succeeded. Training ran once, in one attempt.
    pushes = _task_runs(flow_runs, "push_task")
    assert [(t.run_count, t.state.type.value) for t in pushes] == [(2, "COMPLETED")]
    assert [r.status for r in hub.requests_to("commit", "model")] == [503, 200]
    trains = _task_runs(flow_runs, "train_task")
    assert [(t.run_count, t.state.name) for t in trains] == [(1, "Completed")]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [s["status"] for s in summary["stages"] if s["stage"] == "train"] == ["ran"]

    # What arrived is the promoted model (the interpolation), byte for byte, not the final fine-tuned one.
    promoted = json.loads((run_dir / "promoted.json").read_text())
    assert promoted["promoted"] == "interp-0.50"
    model_dir = (run_dir / "promoted").resolve()
    local = {p.relative_to(model_dir).as_posix(): p.read_bytes() for p in model_dir.rglob("*") if p.is_file()}
    remote = hub.files(MODEL_REPO)
    assert set(remote) - {".gitattributes"} == set(local)
    assert {k: _sha(v) for k, v in remote.items() if k not in (".gitattributes", "README.md")} == {
        k: _sha(v) for k, v in local.items() if k != "README.md"
    }
    final = (run_dir / "train" / "model" / "model.safetensors").read_bytes()
    assert _sha(remote["model.safetensors"]) != _sha(final)
    # The model card is the saved one, with the pairs dataset named and linked.
    card = remote["README.md"].decode()
    assert DATASET_REPO in _front_matter(card)["datasets"]
    assert f"(https://huggingface.co/datasets/{DATASET_REPO})" in card
    assert local["README.md"].decode().split("---\n", 2)[2].strip()[:200] in card


def test_pairs_dataset_pushed_with_a_dataset_card(hub_run) -> None:
    hub, child = hub_run["hub"], hub_run["child"]
    files = hub.files(DATASET_REPO, "dataset")
    shards = sorted(k for k in files if k.startswith("data/train-") and k.endswith(".parquet"))
    assert shards, sorted(files)
    pushed = [pq.read_table(io.BytesIO(files[s])).to_pylist() for s in shards]
    local = pq.read_table(child.runs / "tiny" / "pairs" / "pairs.parquet").to_pylist()
    rows = [r for shard in pushed for r in shard]
    assert [(r["anchor"], r["positive"]) for r in rows] == [(r["anchor"], r["positive"]) for r in local]
    card = files["README.md"].decode()
    meta = _front_matter(card)
    assert meta["task_categories"] == ["sentence-similarity"]
    assert meta["license"] == "other" and meta["size_categories"] == ["n<1K"]
    # push_to_hub kept our card and added what it knows (features, split sizes, data files).
    assert meta["dataset_info"]["splits"][0]["num_examples"] == len(local)
    assert meta["configs"][0]["data_files"][0]["path"].startswith("data/train-")
    for column in ("source", "type"):
        counts: dict[str, int] = {}
        for r in local:
            counts[r[column]] = counts.get(r[column], 0) + 1
        for value, n in counts.items():
            assert f"| {value} | {n} |" in card
    assert f"[{MODEL_REPO}](https://huggingface.co/{MODEL_REPO})" in card


def test_token_appears_in_no_log_or_artifact(hub_run) -> None:
    token, child, proc = hub_run["token"], hub_run["child"], hub_run["proc"]
    assert token not in proc.stdout and token not in proc.stderr
    assert token not in _logs(hub_run["flow_runs"])
    leaked = [
        str(p)
        for root in (child.runs, child.prefect_home)
        for p in root.rglob("*")
        if p.is_file() and token.encode() in p.read_bytes()
    ]
    assert leaked == []
    assert all(r.authenticated for r in hub_run["hub"].requests_to("commit"))


def test_refused_token_fails_at_once_naming_repo_and_option(hub_run) -> None:
    hub, child = hub_run["hub"], hub_run["child"]
    wrong = f"hf_{secrets.token_hex(16)}"
    before = len(hub.commits(MODEL_REPO))
    manifest = (child.runs / "tiny" / "train" / "manifest.json").read_bytes()
    # A hub option changed too: the trained model, its evaluation and promotion are reused, only the push runs.
    proc, flow_runs = child.run(wrong, "training.hub.retry_delay_s=600")
    assert proc.returncode != 0
    pushes = _task_runs(flow_runs, "push_task")
    assert [(t.run_count, t.state.type.value) for t in pushes] == [(1, "FAILED")]
    output = proc.stdout + proc.stderr
    assert "HubPushError" in output and DATASET_REPO in output
    assert "training.hub.token (the environment variable HF_TOKEN)" in output
    assert wrong not in output and wrong not in _logs(flow_runs)
    assert len(hub.commits(MODEL_REPO)) == before
    # Hub options are not part of any stage's key: the training task was served from Prefect's cache.
    assert [t.state.name for t in _task_runs(flow_runs, "train_task")] == ["Cached"]
    assert (child.runs / "tiny" / "train" / "manifest.json").read_bytes() == manifest


def test_transient_error_retries_http_5xx_not_4xx() -> None:
    """HTTP errors are OSErrors (requests, huggingface_hub): only 408/429/5xx are worth a retry."""
    import httpx2
    import requests
    from huggingface_hub.utils import hf_raise_for_status

    from st_workflow.tasks.caching import transient_error

    class State:
        def __init__(self, exc: BaseException) -> None:
            self.exc = exc

        def result(self) -> None:
            raise self.exc

    def hf_error(url: str, **kw: Any) -> BaseException:
        try:
            hf_raise_for_status(httpx2.post(url, **kw))
        except Exception as e:
            return e
        raise AssertionError(f"no error from {url}")

    def requests_error(url: str) -> BaseException:
        try:
            requests.get(url, timeout=10).raise_for_status()
        except Exception as e:
            return e
        raise AssertionError(f"no error from {url}")

    with HubUploadServer(tokens={"hf_ok": "alice"}) as hub:
        create = f"{hub.url}/api/repos/create"
        body = {"name": "m", "organization": "bob", "type": "model"}
        unauthorized = hf_error(create, json=body)
        forbidden = hf_error(create, json=body, headers={"Authorization": "Bearer hf_ok"})
        missing = hf_error(
            f"{hub.url}/api/models/alice/none/preupload/main",
            json={"files": []},
            headers={"Authorization": "Bearer hf_ok"},
        )
        hub.fail("create", status=503)
        unavailable = hf_error(
            create, json={**body, "organization": "alice"}, headers={"Authorization": "Bearer hf_ok"}
        )
        requests_401 = requests_error(f"{hub.url}/api/whoami-v2")
        hub.fail("create", status=429)
        throttled = hf_error(
            create, json={**body, "organization": "alice"}, headers={"Authorization": "Bearer hf_ok"}
        )
    assert [
        getattr(e.response, "status_code", None) for e in (unauthorized, forbidden, missing, unavailable)
    ] == [401, 403, 404, 503]
    assert all(isinstance(e, OSError) for e in (unauthorized, forbidden, missing, unavailable, requests_401))
    assert not transient_error(None, None, State(unauthorized))
    assert not transient_error(None, None, State(forbidden))
    assert not transient_error(None, None, State(missing))
    assert not transient_error(None, None, State(requests_401))
    assert transient_error(None, None, State(unavailable))
    assert transient_error(None, None, State(throttled))


def test_push_in_offline_mode_fails_at_once(tiny_model_path: Path, tmp_path: Path) -> None:
    """Offline mode (``hf_offline: true``) raises a ConnectionError in huggingface_hub: not worth a retry."""
    from huggingface_hub import constants

    from st_workflow.config import load_config
    from st_workflow.tasks.caching import transient_error
    from st_workflow.training.hub import HubPushError, push_model

    if not constants.is_offline_mode():
        pytest.skip("this process is not in Hub offline mode")
    from st_workflow.config import ConfigError

    push = [f"runs_dir={tmp_path}", "training.hub.push=true", f"training.hub.repo_id={MODEL_REPO}"]
    # A config that says offline and push is refused at load, not at the push task hours later...
    with pytest.raises(ConfigError, match="hf_offline"):
        load_config(REPO / "configs" / "tiny.yaml", push)
    # ...and one that leaves the environment offline (HF_HUB_OFFLINE=1) fails at once when it pushes.
    cfg = load_config(REPO / "configs" / "tiny.yaml", [*push, "hf_offline=null"])
    with pytest.raises(HubPushError, match="hf_offline: false") as err:
        push_model(cfg, tiny_model_path)

    class State:
        def result(self) -> None:
            raise err.value

    assert not transient_error(None, None, State())
