"""Benchmark leakage checks: no training text may equal a benchmark query or corpus text.

Comparison is on :func:`st_workflow.schemas.normalize_for_match` (NFKC, case-folded, whitespace-collapsed), against
every query and, for every corpus document, its title, its text and the MTEB form ``title + " " + text``.

Example:
    >>> import tempfile, pathlib
    >>> from st_workflow.beir import write_benchmark
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = write_benchmark(d, [("d1", "Mars Dust", "Dust storms on Mars.")], [("q1", "Mars Dust")], {"test": []})
    >>> texts = BenchmarkTexts.from_dirs([d])
    >>> texts.leaks("  mars   DUST "), texts.leaks("Jupiter")
    (True, False)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from st_workflow.beir import doc_text, read_corpus, read_queries
from st_workflow.hashing import sha256_text
from st_workflow.schemas import normalize_for_match


def _key(text: str) -> str:
    return sha256_text(normalize_for_match(text))[:32]


@dataclass
class BenchmarkTexts:
    """Hashed, normalised texts of one or more BEIR benchmarks (memory: 32 bytes per text)."""

    keys: set[str] = field(default_factory=set)
    sources: list[str] = field(default_factory=list)

    @classmethod
    def from_dirs(cls, dirs: Iterable[str | Path]) -> BenchmarkTexts:
        """Collect query and corpus texts of every BEIR directory given (missing files raise)."""
        out = cls()
        for d in dirs:
            d = Path(d)
            out.sources.append(str(d))
            for q in read_queries(d).values():
                if q.strip():
                    out.keys.add(_key(q))
            for doc in read_corpus(d).values():
                for t in (doc.get("title", ""), doc.get("text", ""), doc_text(doc)):
                    if t.strip():
                        out.keys.add(_key(t))
        return out

    def leaks(self, text: str | None) -> bool:
        """True when ``text`` equals (normalised) a benchmark query or corpus text."""
        return bool(text) and _key(text) in self.keys
