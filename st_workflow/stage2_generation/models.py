"""The structured outputs the LLM must return, with validators that turn bad answers into precise re-asks.

Validation is driven by a validation context, so one schema serves every document. It is given as pydantic's
``context=`` or, for Instructor calls, through :data:`VALIDATION_CONTEXT` (Instructor's own ``context=`` would also
render every message as a Jinja template, which mangles documents containing ``{{``, ``{%`` or ``{#`` - common in
LaTeX):

* ``pairs`` / ``terms``: ``(lo, hi)`` item bounds scaled to the document's length; fewer than ``lo`` is an error
  (re-ask), more than ``hi`` are cut (a re-ask would cost more than the surplus is worth);
* ``document``: the whitespace-normalised document text; each context must occur in it (verbatim check);
* ``lenient``: structure only. Used to salvage the last answer once the re-asks are spent; the pair gates then drop
  whatever is still not verbatim or not standalone, and count it.
* ``title`` / ``query_chars`` / ``title_copy_min_words``: what a :class:`BenchmarkQuery` is checked against (the
  document's title, ``(lo, hi)`` characters, the word count from which a title must not appear whole).

The error messages are written for the model: they name the item and say how to fix it.

The generator's models subclass Instructor's ``ResponseSchema``: Instructor then uses the class as it is (and its
cached tool schema) instead of wrapping it in a freshly built class on every call, which is most of its per-call CPU.

Example:
    >>> ctx = {"pairs": (1, 2), "terms": (1, 3), "document": "SWOT measures river height from orbit."}
    >>> GeneratedPairs.model_validate({"question_context": [{"query": "What does SWOT measure from orbit?",
    ...     "context": "SWOT measures river height from orbit."}], "search_terms": ["SWOT river height"]},
    ...     context=ctx).search_terms
    ['SWOT river height']
"""

from __future__ import annotations

import contextvars
import enum
import re
from typing import Any

from instructor import ResponseSchema
from pydantic import BaseModel, Field, ValidationInfo, field_validator

from st_workflow.hashing import stable_hash
from st_workflow.schemas import normalize_for_match, normalize_whitespace

# A query that leans on the document instead of naming its subject ("this mission", "the paper").
_VAGUE = re.compile(
    r"\b(?:(?:this|that|these|those)\s+(?:mission|missions|study|paper|dataset|data\s*set|instrument|document|article|"
    r"work|project|record|spacecraft|survey|collection|product|model|experiment|campaign|research|report)|"
    r"the\s+(?:document|text|passage|article|paper|above|authors?|given\s+context))\b",
    re.I,
)
_QUOTES = "\"'“”‘’«» "


#: The validation context of the call the current asyncio task is making (see the module docstring).
VALIDATION_CONTEXT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "st_validation_context", default=None
)


def _ctx(info: ValidationInfo) -> dict[str, Any]:
    return info.context or VALIDATION_CONTEXT.get() or {}


def strip_quotes(text: str) -> str:
    """Remove quotes and ellipses models like to wrap quoted passages in."""
    t = text.strip().strip(_QUOTES)
    for e in ("...", "…"):
        t = t.removeprefix(e).removesuffix(e)
    return t.strip().strip(_QUOTES)


def is_verbatim(context: str, normalized_document: str) -> bool:
    """True when ``context`` occurs in the document, comparing whitespace-normalised text."""
    c = normalize_whitespace(strip_quotes(context))
    return bool(c) and c in normalized_document


def vague_reference(query: str) -> str | None:
    """The phrase that makes a query depend on an unseen document (``"this mission"``), or ``None``."""
    m = _VAGUE.search(query)
    return m.group(0) if m else None


class QueryContextPair(BaseModel):
    """One retrieval training pair: a search query and the passage that answers it."""

    query: str = Field(
        description="A standalone search query that names its mission, instrument, dataset or phenomenon explicitly "
        "and is fully answered by the context."
    )
    context: str = Field(
        description="A passage copied verbatim from the document (one or a few consecutive sentences) that answers "
        "the query on its own."
    )


class GeneratedPairs(ResponseSchema):
    """Question/context pairs and search terms grounded in one document."""

    question_context: list[QueryContextPair] = Field(
        description="Diverse question/context pairs spread over the whole document."
    )
    search_terms: list[str] = Field(
        description="Specific multi-word search phrases (missions, instruments, data products, methods, phenomena)."
    )

    @field_validator("question_context")
    @classmethod
    def _check_pairs(cls, v: list[QueryContextPair], info: ValidationInfo) -> list[QueryContextPair]:
        c = _ctx(info)
        pairs = [
            QueryContextPair(query=" ".join(p.query.split()), context=strip_quotes(p.context))
            for p in v
            if p.query.strip() and p.context.strip()
        ]
        lo, hi = c.get("pairs", (1, 10**6))
        if c.get("lenient"):
            return pairs[:hi]
        problems: list[str] = []
        if len(pairs) < lo:
            problems.append(f"give at least {lo} question/context pairs (got {len(pairs)} non-empty ones)")
        doc = c.get("document")
        for i, p in enumerate(pairs):
            if (phrase := vague_reference(p.query)) is not None:
                problems.append(
                    f"question_context[{i}].query uses {phrase!r}; name the mission, instrument or dataset instead"
                )
            if doc is not None and not is_verbatim(p.context, doc):
                problems.append(
                    f"question_context[{i}].context is not copied verbatim from the document; copy the passage "
                    "exactly, character for character"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return pairs[:hi]

    @field_validator("search_terms")
    @classmethod
    def _check_terms(cls, v: list[str], info: ValidationInfo) -> list[str]:
        return _dedupe_terms(v, _ctx(info))


class SearchTerms(ResponseSchema):
    """Search phrases that find one dataset or archive record."""

    search_terms: list[str] = Field(
        description="Specific multi-word search phrases for this record (names, variables, instruments, targets)."
    )

    @field_validator("search_terms")
    @classmethod
    def _check_terms(cls, v: list[str], info: ValidationInfo) -> list[str]:
        return _dedupe_terms(v, _ctx(info))


def _dedupe_terms(v: list[str], c: dict[str, Any]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for t in v:
        t = " ".join(strip_quotes(t).split())
        if t and t.casefold() not in seen:
            seen.add(t.casefold())
            out.append(t)
    lo, hi = c.get("terms", (1, 10**6))
    if not c.get("lenient") and len(out) < lo:
        raise ValueError(f"give at least {lo} distinct search terms (got {len(out)})")
    return out[:hi]


_TITLE_EDGE = " \t?.!:;,"


def title_copy_problem(query: str, title: str, min_words: int) -> str | None:
    """Why ``query`` merely copies ``title`` (equal after :func:`~st_workflow.schemas.normalize_for_match`, edge
    punctuation aside, or, for a title of at least ``min_words`` words (0: never), containing it whole), else ``None``.

    Example:
        >>> title_copy_problem("swot  mission?", "SWOT Mission", 4) is not None
        True
        >>> title_copy_problem("When did SWOT launch?", "SWOT", 4) is None   # a short title may be named
        True
    """
    q = normalize_for_match(query).strip(_TITLE_EDGE)
    t = normalize_for_match(title).strip(_TITLE_EDGE)
    if not t:
        return None
    if q == t:
        return "the query repeats the document title"
    if min_words and len(t.split()) >= min_words and t in q:
        return "the query contains the whole document title"
    return None


class BenchmarkQuery(ResponseSchema):
    """The query a scientist would type to find one document: grounded in it, standalone, not its title.

    Example:
        >>> ctx = {"title": "SWOT Level 2 River Single-Pass Vector Reach Data Product", "query_chars": (10, 300)}
        >>> BenchmarkQuery.model_validate({"query": " How wide are the swaths of SWOT's KaRIn radar? "},
        ...     context=ctx).query
        "How wide are the swaths of SWOT's KaRIn radar?"
    """

    query: str = Field(
        description="One standalone search query or question, answerable by this document, that names what it asks "
        "about explicitly and does not copy the document title."
    )

    @field_validator("query")
    @classmethod
    def _check_query(cls, v: str, info: ValidationInfo) -> str:
        c = _ctx(info)
        q = " ".join(strip_quotes(v).split())
        lo, hi = c.get("query_chars", (10, 300))
        if not q:
            raise ValueError(
                "query is empty; write one search query a scientist would type to find the document"
            )
        problems: list[str] = []
        if len(q) < lo:
            problems.append(f"query has {len(q)} characters; write at least {lo}")
        if len(q) > hi:
            problems.append(
                f"query has {len(q)} characters; keep it to at most {hi} (one question, no explanation)"
            )
        if (
            why := title_copy_problem(q, c.get("title") or "", int(c.get("title_copy_min_words", 4)))
        ) is not None:
            problems.append(f"{why}; ask in a searcher's own words what the document answers")
        if (phrase := vague_reference(q)) is not None:
            problems.append(
                f"query uses {phrase!r}; name the mission, instrument, dataset or phenomenon instead"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return q


class Quality(enum.StrEnum):
    """Fitness of a document for grounded question answering."""

    VERY_GOOD = "VERY_GOOD"
    GOOD = "GOOD"
    POOR = "POOR"


class ContentQuality(BaseModel):
    """The relevancy judge's verdict on one document."""

    quality: Quality = Field(description="VERY_GOOD, GOOD or POOR for grounded question answering.")
    reasons: list[str] = Field(
        default_factory=list,
        description="Two to four short reasons pointing at what in the document decided it.",
    )


def schema_hash(model: type[BaseModel]) -> str:
    """Hash of a model's JSON schema: part of the cache key, so a schema change invalidates old answers."""
    return stable_hash(model.model_json_schema(), length=16)
