"""Reading the documents that ingest wrote (``documents.parquet``, :data:`st_workflow.schemas.DOCUMENT_SCHEMA`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import pyarrow.parquet as pq

from st_workflow.manifest import Manifest

_COLUMNS = ("id", "source", "title", "text", "content_hash")


@dataclasses.dataclass(frozen=True)
class Doc:
    """One document as the LLM stages see it."""

    id: str
    source: str
    title: str
    text: str
    content_hash: str

    @property
    def retrieval_text(self) -> str:
        """What a search engine indexes for this document (the positive of a search-term pair): title + text."""
        return f"{self.title} {self.text}".strip()


def documents_path(m: Manifest) -> Path:
    """The documents Parquet of an ingest manifest.

    Raises:
        KeyError: naming the manifest's stage and the roles it has, when it has no ``documents`` output.
    """
    return m.path("documents")


def load_documents(manifests: Iterable[Manifest], sources: list[str] | None = None) -> list[Doc]:
    """All documents of the given ingest manifests, sorted by (source, id), optionally only some sources.

    Raises:
        ValueError: naming the file and the missing column, or the row and field that is empty.
    """
    docs: list[Doc] = []
    wanted = set(sources or [])
    for m in manifests:
        path = documents_path(m)
        table = pq.read_table(path)
        missing = [c for c in _COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(f"{path}: documents file lacks column(s) {missing} (has {table.column_names})")
        cols = {c: table.column(c).to_pylist() for c in _COLUMNS}
        for i in range(table.num_rows):
            row = {c: cols[c][i] for c in _COLUMNS}
            if wanted and row["source"] not in wanted:
                continue
            for field in ("id", "source", "content_hash"):
                if not row[field]:
                    raise ValueError(f"{path}: row {i} (id={row['id']!r}) has an empty {field!r}")
            docs.append(
                Doc(
                    id=str(row["id"]),
                    source=str(row["source"]),
                    title=str(row["title"] or ""),
                    text=str(row["text"] or ""),
                    content_hash=str(row["content_hash"]),
                )
            )
    docs.sort(key=lambda d: (d.source, d.id))
    return docs
