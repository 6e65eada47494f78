"""``st-workflow ingest ...`` runs one source alone, through the same code the flows run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from st_workflow.cli import main
from st_workflow.manifest import Manifest
from st_workflow.testing.replay_server import ReplayServer

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SAMPLES = Path(__file__).resolve().parents[2] / "st_workflow" / "data" / "samples"


def test_local_and_arxiv_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"k": "1", "t": "Mars dust", "x": "Dust storms on Mars are global."}) + "\n")
    rc = main(
        [
            "ingest",
            "local",
            "--path",
            str(path),
            "--id-column",
            "k",
            "--title-column",
            "t",
            "--text-column",
            "x",
            "--out",
            str(tmp_path / "local"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "local: kept 1, quarantined 0, duplicates 0" in out
    assert {p.name for p in (tmp_path / "local").iterdir()} == {
        "documents.parquet",
        "quarantine.jsonl",
        "manifest.json",
    }
    rc = main(
        [
            "ingest",
            "arxiv",
            "--snapshot",
            str(SAMPLES / "arxiv" / "arxiv-metadata-oai-snapshot.head60.jsonl"),
            "--category",
            "hep-",
            "--out",
            str(tmp_path / "arxiv"),
            "--json",
        ]
    )
    m = Manifest.model_validate_json(capsys.readouterr().out)
    assert rc == 0 and m.counts["kept"] + m.counts["filtered"] == 60 and m.counts["filtered"] > 0


def test_cmr_command_against_the_replay_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ReplayServer() as srv:
        args = [
            "ingest",
            "cmr",
            "--base-url",
            srv.cmr_url,
            "--param",
            "provider=PODAAC",
            "--page-size",
            "200",
            "--out",
            str(tmp_path / "cmr"),
        ]
        assert main(args) == 0
        first = Manifest.read(tmp_path / "cmr")
        assert first.counts["kept"] == 341 and first.counts["quarantined"] == 0
        assert all(r.param("provider") == "PODAAC" for r in srv.requests_to("cmr"))
        assert main(args) == 0  # incremental re-run: nothing new, output untouched
        assert Manifest.read(tmp_path / "cmr") == first
    assert "cmr: kept 341" in capsys.readouterr().out


def test_refuses_to_replace_a_foreign_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    rc = main(
        [
            "ingest",
            "pds",
            "--from-file",
            str(SAMPLES / "pds" / "context-pds4.raw.target.planetary_system.mars_system_1.0.xml"),
            "--out",
            str(tmp_path / "mine"),
        ]
    )
    assert rc == 1 and "not an ingest output" in capsys.readouterr().err
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_source_of_a_config_into_its_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        ["ingest", "source", str(CONFIGS / "tiny.yaml"), "--source", "pds", "--set", f"runs_dir={tmp_path}"]
    )
    assert rc == 0
    m = Manifest.read(tmp_path / "tiny" / "ingest" / "pds")
    assert m.counts["kept"] == 150
