"""Manifests, hashing and atomic writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from st_workflow import atomic
from st_workflow.hashing import code_version, sha256_file, sha256_tree, stable_hash
from st_workflow.lineage import collect_lineage
from st_workflow.manifest import Manifest, StaleArtifactError, reusable


def _write(d: Path, name: str, text: str) -> Path:
    p = d / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_build_write_read_roundtrip(tmp_path: Path) -> None:
    _write(tmp_path, "a.jsonl", '{"x": 1}\n{"x": 2}\n')
    _write(tmp_path, "model/weights.bin", "w")
    m = Manifest.build(
        stage="s",
        name="n",
        directory=tmp_path,
        files={"rows": ("a.jsonl", 2), "model": "model"},
        counts={"kept": 2},
        schema={"x": "int64"},
        config_hash="c",
        code_version="v",
        cache_key="k",
    )
    assert m.files["rows"].sha256 == sha256_file(tmp_path / "a.jsonl")
    assert m.files["model"].is_dir and m.files["model"].sha256 == sha256_tree(tmp_path / "model")
    m.write()
    back = Manifest.read(tmp_path)
    assert back == m
    assert back.content_hash == m.content_hash
    assert back.path("rows") == tmp_path / "a.jsonl"
    with pytest.raises(KeyError, match="no output 'nope'"):
        back.path("nope")


def test_content_hash_ignores_location_and_time(tmp_path: Path) -> None:
    for d in ("one", "two"):
        _write(tmp_path / d, "f.txt", "same")
    a = Manifest.build(stage="s", directory=tmp_path / "one", files={"f": "f.txt"})
    b = Manifest.build(stage="s", directory=tmp_path / "two", files={"f": "f.txt"})
    b.created_at = "1999-01-01T00:00:00+00:00"
    assert a.content_hash == b.content_hash
    _write(tmp_path / "two", "f.txt", "different")
    c = Manifest.build(stage="s", directory=tmp_path / "two", files={"f": "f.txt"})
    assert c.content_hash != a.content_hash


def test_verify_detects_missing_and_changed(tmp_path: Path) -> None:
    _write(tmp_path, "f.txt", "abc")
    m = Manifest.build(stage="s", directory=tmp_path, files={"f": "f.txt"}, cache_key="k")
    m.write()
    assert reusable(tmp_path, "k") == m
    assert reusable(tmp_path, "other-key") is None
    _write(tmp_path, "f.txt", "abcd")
    with pytest.raises(StaleArtifactError, match="changed"):
        m.verify()
    assert reusable(tmp_path, "k") is None
    (tmp_path / "f.txt").unlink()
    with pytest.raises(StaleArtifactError, match="missing"):
        m.verify()


def test_missing_output_fails_at_build(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="output 'f' missing"):
        Manifest.build(stage="s", directory=tmp_path, files={"f": "nope.txt"})


def test_read_rebases_moved_directory(tmp_path: Path) -> None:
    _write(tmp_path / "a", "f.txt", "x")
    Manifest.build(stage="s", directory=tmp_path / "a", files={"f": "f.txt"}).write()
    (tmp_path / "a").rename(tmp_path / "b")
    m = Manifest.read(tmp_path / "b")
    assert m.path("f") == (tmp_path / "b" / "f.txt").resolve()
    m.verify()


def test_stable_hash_is_order_and_process_independent() -> None:
    obj = {"b": [1, 2, {"z": 1, "a": 2}], "a": "x"}
    assert stable_hash(obj) == stable_hash({"a": "x", "b": [1, 2, {"a": 2, "z": 1}]})
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "from st_workflow.hashing import stable_hash; "
            "print(stable_hash({'a': 'x', 'b': [1, 2, {'z': 1, 'a': 2}]}))",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert other.stdout.strip() == stable_hash(obj)


def test_code_version_tracks_sources() -> None:
    v = code_version("ingest")
    assert v.startswith("0.") and "+" in v
    assert code_version("ingest") == v
    assert code_version("hashing") != code_version("manifest")


def test_atomic_write_leaves_old_file_on_crash(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    atomic.write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("crash mid-write")
    assert target.read_text().strip().startswith("{")
    assert not [p for p in tmp_path.iterdir() if p.name != "out.json"], "temp file left behind"


def test_atomic_write_survives_kill_9(tmp_path: Path) -> None:
    """A process killed while writing never leaves a half-written target."""
    target = tmp_path / "big.txt"
    atomic.write_text(target, "old complete content\n")
    code = (
        "import os, signal, sys\n"
        "from st_workflow import atomic\n"
        f"with atomic.atomic_path({str(target)!r}) as tmp:\n"
        "    with open(tmp, 'w') as fh:\n"
        "        fh.write('x' * 1000000)\n"
        "        fh.flush()\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -9
    assert target.read_text() == "old complete content\n"


def test_atomic_dir_replaces_whole_directory(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic.atomic_dir(target) as d:
        (d / "a").write_text("1")
    with atomic.atomic_dir(target) as d:
        (d / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]


def test_lineage_walks_upstream_chain(tmp_path: Path) -> None:
    _write(tmp_path / "s1", "f", "1")
    m1 = Manifest.build(stage="ingest", name="cmr", directory=tmp_path / "s1", files={"f": "f"})
    m1.write()
    _write(tmp_path / "s2", "f", "2")
    m2 = Manifest.build(stage="pairs", directory=tmp_path / "s2", files={"f": "f"}, upstream=[m1])
    m2.write()
    _write(tmp_path / "s3", "f", "3")
    m3 = Manifest.build(stage="train", directory=tmp_path / "s3", files={"f": "f"}, upstream=[m2])
    lineage = collect_lineage([m3])
    assert [r["stage"] for r in lineage] == ["ingest", "pairs", "train"]
    assert lineage[0]["content_hash"] == m1.content_hash
    (tmp_path / "s1" / "manifest.json").unlink()
    assert collect_lineage([m3])[0].get("missing") is True
