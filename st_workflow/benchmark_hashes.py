"""Benchmark hashes: the one place that says what identifies a benchmark in a cache key.

A benchmark is identified by its *content*, never its path or timestamps, at two levels:

* on disk, :func:`benchmark_hash`: the bytes of a BEIR directory's ``corpus.jsonl``, ``queries.jsonl`` and
  ``qrels/*.tsv`` (what every reader reads). Stage keys, Prefect cache keys (``tasks.caching``) and the leakage
  guard's identity (:func:`benchmarks_hash`: name, strictness and content of each guarded benchmark) use it, so a
  benchmark rebuilt in place with other content invalidates them all and one rebuilt with the same content none;
* loaded, :func:`corpus_hash` and :func:`qrels_hash`: the exact texts that get embedded and the judgements that get
  scored (key of the embedding cache and of per-task results, whatever the loader: local, hub or NanoBEIR).

Every value here is part of cache keys already on users' disks; ``tests/core/test_fingerprints.py`` pins them.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\\n')
    >>> before = benchmark_hash(d)
    >>> _ = (d / "corpus.jsonl").write_text('{"_id": "d1", "text": "y"}\\n')
    >>> benchmark_hash(d) != before, corpus_hash(["d1"], ["x"]) != corpus_hash(["d1"], ["y"])
    (True, True)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from st_workflow.hashing import combine_hashes, sha256_file, stable_hash

__all__ = ["benchmark_hash", "benchmarks_hash", "corpus_hash", "qrels_hash"]

_memo: dict[tuple[str, tuple[tuple[str, int, int, int], ...]], str] = {}


def benchmark_hash(directory: str | Path) -> str | None:
    """Content identity of a BEIR benchmark directory: the bytes of ``corpus.jsonl``, ``queries.jsonl`` and
    ``qrels/*.tsv``, not its path, manifest or timestamps. Memoised per process on the files' (size, mtime, inode).
    None when ``directory`` is not a directory."""
    root = Path(directory)
    if not root.is_dir():
        return None
    files = [root / n for n in ("corpus.jsonl", "queries.jsonl") if (root / n).is_file()]
    files += sorted((root / "qrels").glob("*.tsv"))
    stats = []
    for p in files:
        st = p.stat()
        stats.append((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns, st.st_ino))
    memo_key = (str(root.resolve()), tuple(stats))
    if memo_key not in _memo:
        _memo[memo_key] = combine_hashes(f"{rel}\0{sha256_file(root / rel)}" for rel, *_ in stats)
    return _memo[memo_key]


class _Guarded(Protocol):
    """What :func:`benchmarks_hash` reads of a guarded benchmark (:class:`st_workflow.leakage.LeakageTarget`)."""

    name: str
    directory: str

    def as_dict(self) -> dict[str, Any]: ...


def benchmarks_hash(targets: Iterable[_Guarded]) -> str:
    """Identity of a set of guarded benchmarks (the leakage guard): each one's name, strictness and qrels
    selection, and :func:`benchmark_hash` of its directory in place of the path; order-free."""
    return stable_hash(
        [
            {**t.as_dict(), "directory": None, "content": benchmark_hash(t.directory)}
            for t in sorted(targets, key=lambda t: t.name)
        ]
    )


def corpus_hash(doc_ids: Sequence[str], texts: Sequence[str]) -> str:
    """Hash of an ordered, loaded corpus (ids and the exact texts that get embedded)."""
    h = hashlib.sha256()
    for i, t in zip(doc_ids, texts, strict=True):
        h.update(i.encode())
        h.update(b"\0")
        h.update(t.encode())
        h.update(b"\1")
    return h.hexdigest()


def qrels_hash(qrels: Mapping[str, Mapping[str, int]], queries: Mapping[str, str]) -> str:
    """Hash of one qrels file's judgements and of the texts of the queries it judges (a query without a text:
    None)."""
    return stable_hash({"qrels": qrels, "queries": {qid: queries.get(qid) for qid in sorted(qrels)}})
