"""Streaming readers for local files (JSON Lines, CSV, Parquet) and the identity of input files.

Readers yield ``(record, locator)`` pairs, or a :class:`~st_workflow.ingest.documents.Rejection` for a record that is
broken before it can be read (bad JSON, not UTF-8, over the size bound), so one bad line never stops an ingest and
never disappears: it goes to the quarantine file with its ``file:line``.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "docs.jsonl"
    >>> _ = p.write_bytes(b'{"title": "a"}\\nnot json\\n')
    >>> [r.reason if isinstance(r, Rejection) else r[1] for r in iter_jsonl(p, 1000)]
    ['docs.jsonl:1', 'invalid_json']
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from st_workflow.hashing import sha256_file
from st_workflow.ingest.documents import INVALID_JSON, TOO_LARGE, UNDECODABLE, Rejection

Record = tuple[Any, str] | Rejection


def iter_jsonl(path: Path, max_record_bytes: int) -> Iterator[Record]:
    """Parsed lines of a JSON Lines file with ``file:line`` locators; blank lines are skipped."""
    name = path.name
    with open(path, "rb", buffering=1 << 20) as fh:
        for lineno, line in enumerate(fh, 1):
            if len(line) > max_record_bytes:
                yield Rejection(
                    TOO_LARGE,
                    None,
                    f"line has {len(line)} bytes, more than {max_record_bytes}",
                    f"{name}:{lineno}",
                    raw=line,
                )
                continue
            try:
                yield orjson.loads(line), f"{name}:{lineno}"
            except orjson.JSONDecodeError as e:
                if (problem := line_problem(line, e)) is not None:
                    yield Rejection(problem[0], None, problem[1], f"{name}:{lineno}", raw=line)


def line_problem(line: bytes, error: orjson.JSONDecodeError) -> tuple[str, str] | None:
    """``(reason, detail)`` of a JSON Lines line that did not parse, or None for a blank line (skipped).

    The serial reader and the parallel arXiv reader both use it, so a file quarantines the same lines either way.
    """
    if not line.strip():
        return None
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as ue:
        return UNDECODABLE, f"line is not UTF-8: {ue}"
    return INVALID_JSON, f"not valid JSON: {error}"


def iter_csv(path: Path, max_record_bytes: int) -> Iterator[Record]:
    """Rows of a CSV file (header row = column names) with ``file:row`` locators; undecodable rows are quarantined."""
    name = path.name
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, "rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")
        reader = csv.DictReader(text)
        for rowno, row in enumerate(reader, 2):
            loc = f"{name}:row {rowno}"
            size = sum(len(v) for v in row.values() if isinstance(v, str))
            if size > max_record_bytes:
                yield Rejection(
                    TOO_LARGE, None, f"row has {size} characters, more than {max_record_bytes}", loc
                )
                continue
            bad = [k for k, v in row.items() if isinstance(v, str) and _has_surrogate(v)]
            if bad:
                yield Rejection(UNDECODABLE, bad[0], f"column {bad[0]!r} is not UTF-8", loc)
                continue
            if None in row:
                extra = row.pop(None)
                row["_extra_columns"] = extra
            yield row, loc


def _has_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def iter_parquet(path: Path, batch_rows: int = 10_000) -> Iterator[Record]:
    """Rows of a Parquet file, one row group batch at a time (constant memory)."""
    import pyarrow.parquet as pq

    name = path.name
    pf = pq.ParquetFile(path)
    n = 0
    for batch in pf.iter_batches(batch_size=batch_rows):
        for row in batch.to_pylist():
            n += 1
            yield row, f"{name}:row {n}"


def iter_local(path: Path, fmt: str, max_record_bytes: int, batch_rows: int = 10_000) -> Iterator[Record]:
    """Records of a local file by format (``auto`` goes by the extension; ``.jsonl``/``.json``/``.ndjson``,
    ``.csv``/``.tsv``, ``.parquet``)."""
    if fmt == "auto":
        suffix = path.suffix.lower()
        fmt = {
            ".jsonl": "jsonl",
            ".ndjson": "jsonl",
            ".json": "jsonl",
            ".csv": "csv",
            ".parquet": "parquet",
        }.get(suffix, "")
        if not fmt:
            raise ValueError(f"{path}: cannot tell the format from the extension {suffix!r}; set format")
    if fmt == "jsonl":
        return iter_jsonl(path, max_record_bytes)
    if fmt == "csv":
        return iter_csv(path, max_record_bytes)
    if fmt == "parquet":
        return iter_parquet(path, batch_rows)
    raise ValueError(f"unknown local format {fmt!r}")


def file_identity(path: Path, max_hash_bytes: int) -> dict[str, Any]:
    """What identifies an input for re-use: sha256 of the content, or, above ``max_hash_bytes``, the name, size
    and modification time (cheap for multi-GB snapshots; a replaced or touched file counts as changed).

    Directories are identified by the identities of their files.
    """
    if path.is_dir():
        return {
            "dir": path.name,
            "files": [
                {"rel": p.relative_to(path).as_posix(), **file_identity(p, max_hash_bytes)}
                for p in sorted(q for q in path.rglob("*") if q.is_file())
            ],
        }
    st = path.stat()
    if st.st_size <= max_hash_bytes:
        return {"sha256": sha256_file(path), "bytes": st.st_size}
    return {"name": path.name, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
