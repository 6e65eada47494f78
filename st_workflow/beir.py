"""Reading and writing BEIR-layout benchmarks (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``).

Shared by the hold-out builder (writes), the leakage gates (read texts) and the evaluator (reads).

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = write_benchmark(d, corpus=[("d1", "Title", "Body")], queries=[("q1", "Body?")],
    ...                     qrels={"test": [("q1", "d1", 1)]})
    >>> read_qrels(d / "qrels" / "test.tsv")
    {'q1': {'d1': 1}}
    >>> doc_text(read_corpus(d)["d1"])
    'Title Body'
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from st_workflow import atomic


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a JSON Lines file; blank lines are skipped, bad lines raise with the line number."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {e}") from None


def read_corpus(directory: str | Path) -> dict[str, dict[str, str]]:
    """``{doc_id: {"title": ..., "text": ...}}`` from ``corpus.jsonl``."""
    out: dict[str, dict[str, str]] = {}
    for row in read_jsonl(Path(directory) / "corpus.jsonl"):
        out[str(row["_id"])] = {"title": row.get("title") or "", "text": row.get("text") or ""}
    return out


def read_queries(directory: str | Path) -> dict[str, str]:
    """``{query_id: text}`` from ``queries.jsonl``."""
    return {str(r["_id"]): r.get("text") or "" for r in read_jsonl(Path(directory) / "queries.jsonl")}


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """``{query_id: {doc_id: score}}`` from a BEIR qrels TSV (header ``query-id corpus-id score``)."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        for i, row in enumerate(reader):
            if not row or (i == 0 and row[0] == "query-id"):
                continue
            if len(row) < 3:
                raise ValueError(f"{path}:{i + 1}: expected 3 tab-separated columns, got {row!r}")
            qrels.setdefault(row[0], {})[row[1]] = int(float(row[2]))
    return qrels


def qrels_files(directory: str | Path) -> list[Path]:
    """Every qrels TSV of a benchmark, sorted."""
    return sorted((Path(directory) / "qrels").glob("*.tsv"))


def doc_text(doc: dict[str, str]) -> str:
    """The text MTEB embeds for a corpus entry: ``(title + " " + text).strip()``."""
    return (doc.get("title", "") + " " + doc.get("text", "")).strip()


def write_benchmark(
    directory: str | Path,
    corpus: Iterable[tuple[str, str, str]],
    queries: Iterable[tuple[str, str]],
    qrels: dict[str, Iterable[tuple[str, str, int]]],
) -> dict[str, int]:
    """Write a BEIR benchmark atomically file by file; returns row counts.

    Args:
        corpus: ``(doc_id, title, text)`` rows.
        queries: ``(query_id, text)`` rows.
        qrels: qrels file stem (``test``, ``title-description~cmr``) -> ``(query_id, doc_id, score)`` rows.
    """
    directory = Path(directory)
    counts = {
        "corpus": atomic.write_jsonl(
            directory / "corpus.jsonl", ({"_id": i, "title": t, "text": x} for i, t, x in corpus)
        ),
        "queries": atomic.write_jsonl(
            directory / "queries.jsonl", ({"_id": i, "text": t} for i, t in queries)
        ),
    }
    for stem, rows in qrels.items():
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in rows]
        atomic.write_text(directory / "qrels" / f"{stem}.tsv", "\n".join(lines) + "\n")
        counts[f"qrels:{stem}"] = len(lines) - 1
    return counts
