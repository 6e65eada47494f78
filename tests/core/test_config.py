"""Config loading: good files, bad files, overrides, and documentation of every option."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from st_workflow.config import ConfigError, PipelineConfig, dump_config, load_config
from st_workflow.config.loader import _model_types

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["demo.yaml", "tiny.yaml", "indus-sde-st.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert cfg.run_name
    assert cfg.training.sources
    # The dump round-trips to the same config.
    import yaml

    again = PipelineConfig.model_validate(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_name: x\ntraining:\n  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    msg = str(e.value)
    assert str(bad) in msg
    assert "training.lerning_rate" in msg
    assert "did you mean 'training.learning_rate'" in msg


def test_unknown_key_inside_source_list(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest:\n  sources:\n    - {name: c, kind: cmr, page_sise: 10}\n")
    with pytest.raises(ConfigError, match=r"ingest\.sources\.0\.cmr\.page_sise"):
        load_config(bad)


def test_mistyped_value_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  batch_size: many\n")
    with pytest.raises(ConfigError, match=r"invalid value for 'training\.batch_size'.*'many'"):
        load_config(bad)


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_set_overrides_by_index_and_name(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("ingest:\n  sources:\n    - {name: cmr, kind: cmr}\n    - {name: pds, kind: pds}\n")
    cfg = load_config(
        f,
        [
            "ingest.sources.pds.max_records=7",
            "ingest.sources.0.page_size=100",
            "training.epochs=3",
            "evaluation.ks=[1, 3]",
        ],
    )
    assert cfg.ingest.source("pds").max_records == 7
    assert cfg.ingest.source("cmr").page_size == 100
    assert cfg.training.epochs == 3
    assert cfg.evaluation.ks == [1, 3]
    with pytest.raises(ConfigError, match="no list element named 'nope'"):
        load_config(f, ["ingest.sources.nope.max_records=1"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(f, ["training.epochs"])
    with pytest.raises(ConfigError, match="unknown key 'training.epoch'"):
        load_config(f, ["training.epoch=2"])


def test_extends_merges_and_detects_cycles(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("run_name: base\ntraining:\n  epochs: 2\n  batch_size: 8\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nrun_name: child\ntraining:\n  batch_size: 4\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.run_name, cfg.training.epochs, cfg.training.batch_size) == ("child", 2, 4)
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")


def test_duplicate_source_names_rejected(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("ingest:\n  sources:\n    - {name: x, kind: cmr}\n    - {name: x, kind: pds}\n")
    with pytest.raises(ConfigError, match="duplicate names"):
        load_config(f)


def test_secrets_are_references_not_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret")
    cfg = load_config(None)
    assert "sk-very-secret" not in dump_config(cfg)
    secret = cfg.generation.endpoint.api_key.resolve()
    assert secret is not None and secret.get_secret_value() == "sk-very-secret"
    assert "sk-very-secret" not in repr(secret)


def _all_models(model: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    if model in seen:
        return
    seen.add(model)
    for field in model.model_fields.values():
        for sub in _model_types(field.annotation):
            _all_models(sub, seen)


def test_every_option_has_a_default_and_a_docstring() -> None:
    models: set[type[BaseModel]] = set()
    _all_models(PipelineConfig, models)
    undocumented = [
        f"{m.__name__}.{n}" for m in models for n, f in m.model_fields.items() if not f.description
    ]
    assert not undocumented, f"options without a docstring: {undocumented}"
    # Sections that are not user-addressed by name must build from defaults alone.
    PipelineConfig()


def test_section_hash_is_stable_and_sensitive() -> None:
    a = load_config(None)
    b = load_config(None, ["training.epochs=2"])
    assert a.section_hash("ingest") == b.section_hash("ingest")
    assert a.section_hash("training") != b.section_hash("training")


def test_training_dtype_reads_the_old_precision_name_and_is_in_the_training_key() -> None:
    from st_workflow.config import ConfigError, load_config

    assert load_config(None, ["training.precision=bf16"]).training.dtype == "bfloat16"
    assert load_config(None, ["training.dtype=float32"]).training.dtype == "float32"
    with pytest.raises(ConfigError, match="disagree"):
        load_config(None, ["training.precision=bf16", "training.dtype=float32"])
    a, b = (load_config(None, [f"training.dtype={d}"]).section_hash("training") for d in ("auto", "float32"))
    assert a != b
