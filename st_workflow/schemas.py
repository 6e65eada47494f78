"""The two record types every stage agrees on: documents and pairs (Arrow schemas + normalisation helpers).

Documents (``documents.parquet``): one row per source record, with ``content_hash`` over the normalised title and
text so that re-ingests, LLM caches and dedup all key on content, not on row position.

Pairs (``pairs.parquet``): ``anchor, positive[, negative], type, source, synthesized, doc_id, model, prompt_version``.
"""

from __future__ import annotations

import unicodedata

import pyarrow as pa

from st_workflow.hashing import sha256_text

DOCUMENT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("metadata", pa.string()),  # JSON object as a string: sources differ in what they carry
        pa.field("content_hash", pa.string(), nullable=False),
    ]
)

PAIR_SCHEMA = pa.schema(
    [
        pa.field("anchor", pa.string(), nullable=False),
        pa.field("positive", pa.string(), nullable=False),
        pa.field("negative", pa.string()),
        pa.field("type", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("synthesized", pa.bool_(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("model", pa.string()),
        pa.field("prompt_version", pa.string()),
    ]
)

#: Pair types the pipeline produces.
PAIR_TYPES = ("title-abstract", "title-description", "question-answer", "search_term-document")


def normalize_whitespace(text: str) -> str:
    """Collapse runs of whitespace (hard line-wraps included) to single spaces and strip.

    LaTeX and other characters are kept intact.

    Example:
        >>> normalize_whitespace("  Calculation of $\\\\Lambda$\\n  at LHC ")
        'Calculation of $\\\\Lambda$ at LHC'
    """
    return " ".join(text.split())  # same result as re.sub(r"\s+", " ").strip(), about 3x faster


def normalize_for_match(text: str) -> str:
    """Canonical form for equality checks (leakage, dedup): NFKC, case-folded, whitespace-collapsed."""
    return normalize_whitespace(unicodedata.normalize("NFKC", text)).casefold()


def content_hash(title: str, text: str) -> str:
    """sha256 over the match-normalised title and text: equal content gives equal hashes across sources."""
    return sha256_text(normalize_for_match(title) + "\n" + normalize_for_match(text))


def schema_dict(schema: pa.Schema) -> dict[str, str]:
    """``{column: type}`` for manifests."""
    return {f.name: str(f.type) for f in schema}
