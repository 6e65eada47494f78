"""Hub models: fingerprinted by resolved commit (no download), fetched with only the files a load reads.

The Hub is :class:`~st_workflow.testing.hub_server.HubServer` on 127.0.0.1; each step runs in a fresh interpreter
with ``HF_ENDPOINT`` pointing at it, because huggingface_hub reads its endpoint and offline switch at import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from st_workflow.testing.hub_server import HubServer, files_of

REPO = "st-workflow-tests/tiny-st"
EXTRA = {
    "onnx/model.onnx": b"onnx weights",
    "onnx/model_O4.onnx": b"onnx optimised",
    "openvino/openvino_model.xml": b"<xml/>",
    "openvino/openvino_model.bin": b"openvino weights",
    "pytorch_model.bin": b"duplicate torch weights",
    "README.md": b"# tiny",
}

STEP = """
import json, sys
step, repo = sys.argv[1], sys.argv[2]
out = {}
if step in ("hash", "offline"):
    from st_workflow.evaluation.embeddings import model_hash
    from st_workflow.training.stage import model_fingerprint
    out["model_hash"] = model_hash(repo)
    out["train_fingerprint"] = model_fingerprint(repo)
if step in ("load", "offline"):
    from st_workflow.models import load_model
    model = load_model(repo, device="cpu")
    out["shape"] = list(model.encode(["Mars dust storms"]).shape)
print("RESULT " + json.dumps(out))
"""


def _step(step: str, hub: HubServer, hf_home: Path, offline: bool = False) -> dict:
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HF_DATASETS_OFFLINE": "1" if offline else "0",
    }
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run(
        [sys.executable, "-c", STEP, step, REPO], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


@pytest.fixture
def hub(tiny_model_path: Path):
    with HubServer() as server:
        server.add_commit(REPO, {**files_of(tiny_model_path), **EXTRA})
        yield server


def test_hub_model_is_fingerprinted_by_commit_and_fetched_without_extras(
    hub: HubServer, tiny_model_path: Path, tmp_path: Path
) -> None:
    hf_home = tmp_path / "hf"
    first = _step("hash", hub, hf_home)
    # Fingerprinting asks for the revision only: not one file is downloaded.
    assert hub.requested_files(REPO) == set()
    assert first["model_hash"] == first["train_fingerprint"]

    loaded = _step("load", hub, hf_home)
    assert loaded["shape"][0] == 1
    fetched = hub.requested_files(REPO)
    # Everything the model is made of except its card and our build spec (not read by a load).
    assert fetched == set(files_of(tiny_model_path)) - {"README.md", "spec.json"}, fetched
    assert not {f for f in fetched if f.startswith(("onnx/", "openvino/"))}
    assert "pytorch_model.bin" not in fetched and "README.md" not in fetched
    assert {"modules.json", "model.safetensors", "tokenizer.json"} <= fetched
    assert any(f.startswith("1_Pooling/") for f in fetched)

    # Offline, the commit last fetched is known from the cache: same fingerprint, and the model loads.
    before = len(hub.requests)
    offline = _step("offline", hub, hf_home, offline=True)
    assert len(hub.requests) == before
    assert offline["model_hash"] == first["model_hash"] and offline["shape"] == loaded["shape"]

    # A new upload moves main: the fingerprint changes although the name did not.
    config = json.loads((tiny_model_path / "config.json").read_text())
    hub.add_commit(
        REPO,
        {
            **files_of(tiny_model_path),
            **EXTRA,
            "config.json": json.dumps({**config, "note": "v2"}).encode(),
        },
    )
    second = _step("hash", hub, hf_home)
    assert second["model_hash"] != first["model_hash"]
    assert second["train_fingerprint"] != first["train_fingerprint"]


def test_load_files_picks_safetensors_else_torch_and_module_folders() -> None:
    from st_workflow.models.resolve import load_files

    repo = [
        "modules.json",
        "config.json",
        "config_sentence_transformers.json",
        "sentence_bert_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
        "model.safetensors",
        "pytorch_model.bin",
        "tf_model.h5",
        "flax_model.msgpack",
        "onnx/model.onnx",
        "openvino/openvino_model.xml",
        "1_Pooling/config.json",
        "2_Dense/config.json",
        "2_Dense/model.safetensors",
        "2_Dense/pytorch_model.bin",
        "3_Normalize/.gitkeep",
        "README.md",
    ]
    assert load_files(repo) == [
        "1_Pooling/config.json",
        "2_Dense/config.json",
        "2_Dense/model.safetensors",
        "config.json",
        "config_sentence_transformers.json",
        "model.safetensors",
        "modules.json",
        "sentence_bert_config.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    torch_only = ["modules.json", "config.json", "pytorch_model.bin", "onnx/model.onnx"]
    assert load_files(torch_only) == ["config.json", "modules.json", "pytorch_model.bin"]
    sharded = ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    sharded += ["model.safetensors.index.json", "pytorch_model.bin"]
    assert load_files(sharded) == sorted(set(sharded) - {"pytorch_model.bin"})
    # modules.json names the folders when it is known (here a module folder without the usual prefix).
    assert "pooling/config.json" in load_files(["config.json", "pooling/config.json"], ["pooling"])
