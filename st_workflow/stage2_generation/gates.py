"""Pair-level quality gates. Each gate reports its yield, and every dropped pair is kept with the gate's name.

Order (cheap first): ``relevancy`` (only when the filter ran after generation), ``length``, ``standalone`` (queries
that say "this mission" instead of naming it), ``verbatim`` (the context must occur in the document, whitespace-
normalised), ``exact_duplicate`` (case/space/Unicode-normalised anchor + positive), ``near_duplicate`` (Jaccard of
word shingles of both anchor and positive >= threshold, found exactly with prefix filtering), ``leakage`` (anchor
equal to a benchmark query, or a share of the anchor's or positive's word n-grams found in any benchmark's queries or
corpus).

Example:
    >>> from st_workflow.config.generation import GatesConfig
    >>> doc = "SWOT measures the height of rivers and lakes from orbit with a radar interferometer."
    >>> pairs = [Candidate("What does SWOT measure from orbit?", doc, "question-answer", "cmr", "d1", doc)] * 2
    >>> kept, rejected, report = apply_gates(pairs, GatesConfig(min_context_chars=10))
    >>> len(kept), [r["gate"] for r in rejected], report[3]["gate"]
    (1, ['exact_duplicate'], 'exact_duplicate')
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from st_workflow.beir import doc_text, read_corpus, read_queries
from st_workflow.config.generation import GatesConfig
from st_workflow.schemas import normalize_for_match, normalize_whitespace
from st_workflow.stage2_generation.models import is_verbatim, vague_reference

QA_TYPE = "question-answer"
TERM_TYPE = "search_term-document"
_TOKEN = re.compile(r"\w+")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A generated pair before the gates, with the document it came from (for the verbatim check)."""

    anchor: str
    positive: str
    type: str
    source: str
    doc_id: str
    document: str
    model: str = ""
    prompt_version: str = ""


# ---------------------------------------------------------------------- shingles
def _words(text: str) -> list[str]:
    return _TOKEN.findall(normalize_for_match(text))


def shingles(text: str, n: int) -> set[str]:
    """Word ``n``-grams of the match-normalised text; character 3-grams when it has fewer than ``n`` words."""
    ws = _words(text)
    if len(ws) >= n:
        return {" ".join(ws[i : i + n]) for i in range(len(ws) - n + 1)}
    s = " ".join(ws)
    if len(s) < 3:
        return {s} if s else set()
    return {s[i : i + 3] for i in range(len(s) - 2)}


def jaccard(a: set[Any], b: set[Any]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


# ---------------------------------------------------------------------- leakage index
_MIX = np.uint64(0x9E3779B97F4A7C15)


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """64-bit hashes of the word ``n``-grams of the match-normalised text (one hash of all words when shorter).

    Vectorised (a polynomial hash over per-word hashes), so indexing a benchmark corpus of thousands of documents
    takes a moment, not minutes.
    """
    ws = _words(text)
    if not ws:
        return np.empty(0, dtype=np.uint64)
    ids = np.fromiter((hash(w) for w in ws), dtype=np.int64, count=len(ws)).view(np.uint64)
    k = min(n, len(ids))
    out = np.zeros(len(ids) - k + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):
            out = out * _MIX + ids[j : j + len(out)]
    return out


class LeakageIndex:
    """Normalised queries and word n-gram hashes of benchmark queries and corpora."""

    def __init__(self, queries: Iterable[str], texts: Iterable[str], n: int) -> None:
        self.n = n
        self.queries = {normalize_for_match(q) for q in queries if q}
        parts = [ngram_hashes(t, n) for t in texts]
        self.hashes = np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.uint64)

    @classmethod
    def from_dirs(cls, dirs: Iterable[Path], n: int) -> LeakageIndex:
        """Index every BEIR-layout benchmark directory (``corpus.jsonl``, ``queries.jsonl``)."""
        queries: list[str] = []
        texts: list[str] = []
        for d in dirs:
            d = Path(d)
            if not (d / "corpus.jsonl").is_file() or not (d / "queries.jsonl").is_file():
                raise FileNotFoundError(
                    f"benchmark {d} is not BEIR layout: corpus.jsonl and queries.jsonl expected"
                )
            qs = list(read_queries(d).values())
            queries.extend(qs)
            texts.extend(qs)
            texts.extend(doc_text(doc) for doc in read_corpus(d).values())
        return cls(queries, texts, n)

    def overlap(self, text: str) -> float:
        """Share of ``text``'s word n-grams that occur in the benchmarks (short texts: all-or-nothing)."""
        h = ngram_hashes(text, self.n)
        if not len(h) or not len(self.hashes):
            return 0.0
        pos = np.minimum(np.searchsorted(self.hashes, h), len(self.hashes) - 1)
        return float((self.hashes[pos] == h).mean())

    def leaks(self, c: Candidate, threshold: float) -> bool:
        if normalize_for_match(c.anchor) in self.queries:
            return True
        return self.overlap(c.anchor) >= threshold or self.overlap(c.positive) >= threshold


# ---------------------------------------------------------------------- gates
def _length_ok(c: Candidate, g: GatesConfig) -> bool:
    if c.type == TERM_TYPE:
        return g.min_term_chars <= len(c.anchor.strip()) <= g.max_term_chars and bool(c.positive.strip())
    return (
        g.min_query_chars <= len(c.anchor.strip()) <= g.max_query_chars
        and g.min_context_chars <= len(c.positive.strip()) <= g.max_context_chars
    )


def _near_duplicates(cands: list[Candidate], g: GatesConfig) -> list[bool]:
    """``True`` for each candidate that nearly duplicates an earlier kept one (exact search, prefix filtering)."""
    t = g.near_duplicate_threshold
    pos = [frozenset(shingles(c.positive, g.near_duplicate_ngram)) for c in cands]
    anc = [frozenset(shingles(c.anchor, g.near_duplicate_ngram)) for c in cands]
    freq: Counter[str] = Counter(s for p in pos for s in p)
    index: dict[str, list[int]] = defaultdict(list)
    dup = [False] * len(cands)
    for i, p in enumerate(pos):
        order = sorted(p, key=lambda s: (freq[s], s))
        # Two sets with Jaccard >= t share at least one token of their first |s| - ceil(t*|s|) + 1 rarest tokens.
        prefix = order[: len(order) - math.ceil(t * len(order)) + 1] if order else []
        seen: set[int] = set()
        for s in prefix:
            for j in index.get(s, ()):
                if j in seen:
                    continue
                seen.add(j)
                if jaccard(p, pos[j]) >= t and jaccard(anc[i], anc[j]) >= t:
                    dup[i] = True
                    break
            if dup[i]:
                break
        if not dup[i]:
            for s in prefix:
                index[s].append(i)
    return dup


def apply_gates(
    cands: list[Candidate],
    g: GatesConfig,
    leakage: LeakageIndex | None = None,
    rejected_docs: set[tuple[str, str]] | None = None,
) -> tuple[list[Candidate], list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the gates in order. Returns (kept, rejected rows with their gate, per-gate yield report)."""
    report: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []

    def gate(name: str, current: list[Candidate], keep: list[bool]) -> list[Candidate]:
        kept = [c for c, k in zip(current, keep, strict=True) if k]
        dropped = [c for c, k in zip(current, keep, strict=True) if not k]
        by_type = Counter(c.type for c in dropped)
        report.append(
            {
                "gate": name,
                "in": len(current),
                "kept": len(kept),
                "dropped": len(dropped),
                "yield": round(len(kept) / len(current), 4) if current else None,
                "dropped_by_type": dict(sorted(by_type.items())),
            }
        )
        rejected.extend(
            {
                "anchor": c.anchor,
                "positive": c.positive,
                "type": c.type,
                "source": c.source,
                "doc_id": c.doc_id,
                "gate": name,
            }
            for c in dropped
        )
        return kept

    cur = list(cands)
    if rejected_docs is not None:
        cur = gate("relevancy", cur, [(c.source, c.doc_id) not in rejected_docs for c in cur])
    cur = gate("length", cur, [_length_ok(c, g) for c in cur])
    if g.require_standalone_query:
        cur = gate("standalone", cur, [c.type != QA_TYPE or vague_reference(c.anchor) is None for c in cur])
    if g.require_verbatim_context:
        norm_docs: dict[tuple[str, str], str] = {}
        keep = []
        for c in cur:
            if c.type != QA_TYPE:
                keep.append(True)
                continue
            k = (c.source, c.doc_id)
            if k not in norm_docs:
                norm_docs[k] = normalize_whitespace(c.document)
            keep.append(is_verbatim(c.positive, norm_docs[k]))
        cur = gate("verbatim", cur, keep)
    seen: set[tuple[str, str]] = set()
    keep = []
    for c in cur:
        k = (normalize_for_match(c.anchor), normalize_for_match(c.positive))
        keep.append(k not in seen)
        seen.add(k)
    cur = gate("exact_duplicate", cur, keep)
    cur = gate("near_duplicate", cur, [not d for d in _near_duplicates(cur, g)])
    if g.leakage_check and leakage is not None:
        cur = gate("leakage", cur, [not leakage.leaks(c, g.leakage_overlap) for c in cur])
    return cur, rejected, report
