"""Ingest-style document outputs built from plain rows, for tests and benchmarks of the stages after ingest.

They bypass ingest on purpose (no bounds, no de-duplication), so a test controls exactly which documents a later
stage sees.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> d = Path(tempfile.mkdtemp())
    >>> m = write_documents(d / "cmr", [{"id": "C1", "source": "cmr", "title": "SWOT", "text": "River heights."}])
    >>> m.counts, m.path("documents").name
    ({'kept': 1}, 'documents.parquet')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from st_workflow.manifest import Manifest
from st_workflow.schemas import DOCUMENT_SCHEMA, content_hash


def write_documents(directory: Path, rows: list[dict[str, Any]], name: str = "documents") -> Manifest:
    """Write ``rows`` (id, source, title, text) as ``documents.parquet`` plus an ingest ``manifest.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    full = [
        {**r, "url": None, "metadata": "{}", "content_hash": content_hash(r["title"], r["text"])}
        for r in rows
    ]
    pq.write_table(pa.Table.from_pylist(full, schema=DOCUMENT_SCHEMA), directory / "documents.parquet")
    m = Manifest.build(
        stage="ingest",
        name=name,
        directory=directory,
        files={"documents": ("documents.parquet", len(full))},
        counts={"kept": len(full)},
    )
    m.write()
    return m
