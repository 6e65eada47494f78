"""Columns every per-document LLM result table shares (``judgements.parquet``, the ``generated`` shards).

Each table starts with the document's identity and ends with what its answer cost and which model, prompt and cache
entry produced it; only the columns in between are the stage's own.

Example:
    >>> import pyarrow as pa
    >>> schema = result_schema([pa.field("quality", pa.string())])
    >>> schema.names[:4], schema.names[-3:]
    (['doc_id', 'source', 'content_hash', 'quality'], ['model', 'prompt_version', 'cache_key'])
    >>> usage_columns({"usage": {"prompt_tokens": 12, "requests": 1}}, first=False)["prompt_tokens"]
    0
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

DOC_FIELDS = [
    pa.field("doc_id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("content_hash", pa.string(), nullable=False),
]
"""Which document a row is about."""

CALL_FIELDS = [
    pa.field("prompt_tokens", pa.int64()),
    pa.field("completion_tokens", pa.int64()),
    pa.field("requests", pa.int64()),
    pa.field("cost_usd", pa.float64()),
    pa.field("model", pa.string()),
    pa.field("prompt_version", pa.string()),
    pa.field("cache_key", pa.string()),
]
"""What the row's answer cost and where it came from."""


def result_schema(own: list[pa.Field], tail: list[pa.Field] | None = None) -> pa.Schema:
    """:data:`DOC_FIELDS`, the stage's ``own`` columns, :data:`CALL_FIELDS`, then ``tail``."""
    return pa.schema([*DOC_FIELDS, *own, *CALL_FIELDS, *(tail or [])])


def usage_columns(entry: dict[str, Any], first: bool) -> dict[str, Any]:
    """Token and cost columns of a cached answer's row.

    Documents with equal content share one answer; only the ``first`` of them carries its usage, so that summing a
    column counts each paid call once.
    """
    u = entry.get("usage", {}) if first else {}
    return {
        "prompt_tokens": int(u.get("prompt_tokens", 0)),
        "completion_tokens": int(u.get("completion_tokens", 0)),
        "requests": int(u.get("requests", 0)),
        "cost_usd": float(u.get("cost_usd", 0.0)),
    }
