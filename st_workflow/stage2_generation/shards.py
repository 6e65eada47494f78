"""Streaming results to Parquet shards, each written atomically, and the final deterministic consolidation.

While a stage runs, every ``shard_size`` finished documents are written as ``part-NNNNN.parquet`` in a staging
directory private to the run (so two concurrent runs never interleave shards). At the end the staged rows are sorted
by a stable key and re-chunked into the stage's output directory in one atomic directory swap: identical inputs give
identical output bytes however the calls happened to finish, so downstream cache keys stay stable.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from st_workflow import atomic


class ShardWriter:
    """Buffer rows and write a Parquet shard atomically every ``shard_size`` rows."""

    def __init__(self, directory: Path, schema: pa.Schema, shard_size: int) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.shard_size = shard_size
        self._rows: list[dict[str, Any]] = []
        self.shards: list[Path] = []
        self.rows_written = 0

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        if len(self._rows) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        path = self.directory / f"part-{len(self.shards):05d}.parquet"
        table = pa.Table.from_pylist(self._rows, schema=self.schema)
        with atomic.atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        self.shards.append(path)
        self.rows_written += len(self._rows)
        self._rows = []


def read_shards(directory: Path, schema: pa.Schema) -> pa.Table:
    """All ``part-*.parquet`` of a directory as one table (empty table with ``schema`` when none)."""
    parts = sorted(Path(directory).glob("part-*.parquet"))
    if not parts:
        return schema.empty_table()
    return pa.concat_tables([pq.read_table(p, schema=schema) for p in parts])


def consolidate(staging: Path, out_dir: Path, schema: pa.Schema, sort_by: list[str], shard_size: int) -> int:
    """Sort the staged rows by ``sort_by`` and write them as shards of ``out_dir`` (atomic swap); returns rows."""
    table = read_shards(staging, schema)
    if table.num_rows:
        table = table.sort_by([(c, "ascending") for c in sort_by])
    with atomic.atomic_dir(out_dir) as tmp:
        for i, start in enumerate(range(0, max(table.num_rows, 1), shard_size)):
            pq.write_table(table.slice(start, shard_size), Path(tmp) / f"part-{i:05d}.parquet")
    shutil.rmtree(staging, ignore_errors=True)
    return table.num_rows


def write_table_atomic(path: Path, table: pa.Table) -> Path:
    """Write one Parquet file atomically."""
    with atomic.atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path
