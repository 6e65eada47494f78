"""Local files and Hugging Face datasets as document sources (column mapping, bad rows, re-use)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from st_workflow.config.ingest import ColumnMap, HfSource, LocalSource
from st_workflow.ingest import ingest_to_dir

ROWS = [
    {
        "doc": "d1",
        "name": "Mars dust storms",
        "body": "Global dust storms on Mars, observed from orbit.",
        "year": 2018,
    },
    {"doc": "d2", "name": "Titan lakes", "body": "Methane lakes near the north pole of Titan.", "year": 2007},
    {
        "doc": "d3",
        "name": "Io volcanism",
        "body": "Active volcanoes on Io seen by Galileo and Juno.",
        "year": 2019,
    },
    {"doc": "d4", "name": None, "body": "A row without a title is quarantined, not lost.", "year": 2020},
]
COLUMNS = ColumnMap(id="doc", title="name", text="body")


def _docs(m) -> list[dict]:
    return pq.read_table(m.path("documents")).to_pylist()


def _reasons(m) -> list[tuple[str, str]]:
    return [
        (e["reason"], e["field"])
        for e in map(json.loads, Path(m.path("quarantine")).read_text().splitlines())
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_local_files_of_every_format(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"docs.{fmt}"
    if fmt == "jsonl":
        lines = [json.dumps(r) for r in ROWS] + ["{broken"]
        path.write_text("\n".join(lines) + "\n")
    elif fmt == "csv":
        import csv

        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(ROWS[0]))
            w.writeheader()
            w.writerows(ROWS)
    else:
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    m = ingest_to_dir(LocalSource(name="local", path=str(path), columns=COLUMNS), tmp_path / "out")
    docs = _docs(m)
    assert [d["id"] for d in docs] == ["d1", "d2", "d3"]
    assert docs[0]["title"] == "Mars dust storms" and docs[0]["source"] == "local"
    meta = json.loads(docs[0]["metadata"])
    assert meta["kind"] == "local" and str(meta["year"]) == "2018"
    # The title-less row (an empty string in CSV, a null elsewhere) and, in JSON Lines, the broken line.
    expected = [("missing_field", "title")] + ([("invalid_json", None)] if fmt == "jsonl" else [])
    assert sorted(_reasons(m), key=str) == sorted(expected, key=str)


def test_local_rows_without_id_get_content_ids(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"title": r["name"], "text": r["body"]}) for r in ROWS[:3]) + "\n")
    m1 = ingest_to_dir(LocalSource(name="l", path=str(path)), tmp_path / "a")
    m2 = ingest_to_dir(LocalSource(name="l", path=str(path)), tmp_path / "b")
    ids = [d["id"] for d in _docs(m1)]
    assert all(i.startswith("h:") for i in ids) and ids == [d["id"] for d in _docs(m2)]


def test_hf_dataset_directory_goes_through_load_dataset(tmp_path: Path) -> None:
    """A local directory of Parquet files is loaded by ``datasets.load_dataset`` exactly like a Hub repository."""
    repo = tmp_path / "my-dataset"
    (repo / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ROWS[:3]), repo / "data" / "train-00000-of-00001.parquet")
    src = HfSource(name="hf", dataset=str(repo), split="train", columns=COLUMNS)
    m = ingest_to_dir(src, tmp_path / "out")
    assert [d["id"] for d in _docs(m)] == ["d1", "d2", "d3"]
    assert json.loads(_docs(m)[0]["metadata"])["dataset"] == str(repo)
    # A local dataset directory is identified by its files, so an unchanged re-run re-uses the output.
    again = ingest_to_dir(src, tmp_path / "out")
    assert again == m


def test_hf_save_to_disk_directory(tmp_path: Path) -> None:
    import datasets

    ds = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS[:2]), "test": datasets.Dataset.from_list(ROWS[2:3])}
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    m = ingest_to_dir(
        HfSource(name="hf", dataset=str(tmp_path / "saved"), split="test", streaming=False, columns=COLUMNS),
        tmp_path / "out",
    )
    assert [d["id"] for d in _docs(m)] == ["d3"]
