"""Pair-level quality gates. Each gate reports its yield, and every dropped pair is kept with the gate's name.

Order (cheap first): ``relevancy`` (only when the filter ran after generation), ``length``, ``standalone`` (queries
that say "this mission" instead of naming it), ``verbatim`` (the context must occur in the document, whitespace-
normalised), ``exact_duplicate`` (case/space/Unicode-normalised anchor + positive), ``near_duplicate`` (anchor AND
positive near-duplicates of an earlier kept pair's, by :mod:`st_workflow.near_duplicates`' one rule, found exactly),
``leakage`` (the pair leaks into a benchmark by :mod:`st_workflow.leakage`'s rule: a benchmark query, or a
document judged relevant to one).

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
from collections import Counter
from typing import Any

from st_workflow.config.generation import GatesConfig
from st_workflow.leakage import BenchmarkGuard
from st_workflow.near_duplicates import NearDuplicateIndex, NearDuplicateRule
from st_workflow.schemas import normalize_for_match, normalize_whitespace
from st_workflow.stage2_generation.models import is_verbatim, vague_reference

QA_TYPE = "question-answer"
TERM_TYPE = "search_term-document"


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


# ---------------------------------------------------------------------- gates
def _length_ok(c: Candidate, g: GatesConfig) -> bool:
    if c.type == TERM_TYPE:
        return g.min_term_chars <= len(c.anchor.strip()) <= g.max_term_chars and bool(c.positive.strip())
    return (
        g.min_query_chars <= len(c.anchor.strip()) <= g.max_query_chars
        and g.min_context_chars <= len(c.positive.strip()) <= g.max_context_chars
    )


def near_duplicate_pairs(cands: list[Candidate], rule: NearDuplicateRule) -> list[bool]:
    """``True`` for each candidate whose anchor and positive both near-duplicate an earlier kept candidate's."""
    positives = NearDuplicateIndex(rule, [c.positive for c in cands])
    dup = [False] * len(cands)
    for i, c in enumerate(cands):
        for j in positives.matches(c.positive):
            if j < i and not dup[j] and rule.same(c.anchor, cands[j].anchor):
                dup[i] = True
                break
    return dup


def apply_gates(
    cands: list[Candidate],
    g: GatesConfig,
    leakage: BenchmarkGuard | None = None,
    rejected_docs: set[tuple[str, str]] | None = None,
    rule: NearDuplicateRule | None = None,
) -> tuple[list[Candidate], list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the gates in order. Returns (kept, rejected rows with their gate, per-gate yield report).

    ``rule`` is the near-duplicate rule (``pairs.near_duplicates``; default: its defaults).
    """
    rule = rule or NearDuplicateRule()
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
    cur = gate("near_duplicate", cur, [not d for d in near_duplicate_pairs(cur, rule)])
    if g.leakage_check and leakage:
        cur = gate("leakage", cur, [leakage.check(c.anchor, c.positive) is None for c in cur])
    return cur, rejected, report
