"""Hugging Face datasets and local files as documents, through a column mapping.

A Hub id and a local dataset directory go through the same call, ``datasets.load_dataset(path, name, split=...,
revision=..., streaming=...)`` (a local directory of Parquet/JSON/CSV files is loaded by the matching packaged
builder, exactly like a Hub repository of such files); a directory written by ``Dataset.save_to_disk`` is opened with
``load_from_disk``. Local files are streamed directly (JSON Lines, CSV, Parquet), so a bad line is quarantined with
its line number instead of failing the whole load.

Rows without an id column get ``h:<content hash prefix>`` as id, so re-ingesting the same rows gives the same ids.
Columns that are not mapped are kept in ``metadata`` when they are scalars (strings cut to 1,000 characters).

Example:
    >>> from st_workflow.config.ingest import ColumnMap
    >>> c = row_candidate({"title": "Mars dust", "text": "Dust storms on Mars.", "year": 2020}, "f:1", ColumnMap(), "local")
    >>> c.id.startswith("h:"), c.metadata["year"]
    (True, 2020)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from st_workflow.ingest.documents import Candidate, collapse, document_hash, normalize_text
from st_workflow.resources import resolve_path

if TYPE_CHECKING:
    from st_workflow.ingest.sources.base import ColumnMap
    from st_workflow.ingest.sources.hf import HfSource

_META_STR_CHARS = 1000


def row_candidate(
    row: Any, locator: str, columns: ColumnMap, kind: str, extra: dict[str, Any] | None = None
) -> Any:
    """A mapped row as a candidate (a non-mapping row is a wrong-type candidate the sink quarantines)."""
    if not isinstance(row, dict):
        return Candidate(locator, row, None, None, {}, locator, raw=row)
    title, text = row.get(columns.title), row.get(columns.text)
    if columns.id is not None:
        doc_id = row.get(columns.id)
    elif isinstance(title, str) and isinstance(text, str):
        doc_id = "h:" + document_hash(collapse(title), normalize_text(text))[:24]
    else:
        doc_id = locator  # the sink will report the real problem (title/text), not a missing id
    url = row.get(columns.url) if columns.url else None
    mapped = {columns.id, columns.title, columns.text, columns.url}
    metadata: dict[str, Any] = {"kind": kind, **(extra or {})}
    for key, value in row.items():
        if key in mapped or not isinstance(key, str):
            continue
        if isinstance(value, str):
            metadata[key] = value[:_META_STR_CHARS]
        elif isinstance(value, bool | int | float) or value is None:
            metadata[key] = value
    return Candidate(doc_id, title, text, url if isinstance(url, str) else None, metadata, locator, raw=row)


def _is_saved_to_disk(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def local_dataset_dir(src: HfSource) -> Path | None:
    """The local directory a ``dataset`` value names, or None for a Hub id."""
    s = src.dataset
    if s.startswith("pkg://") or s.startswith((".", "/", "~")) or Path(s).expanduser().exists():
        p = resolve_path(s)
        return p if p.exists() else None
    return None


def iter_hf(src: HfSource) -> Iterator[tuple[Any, str]]:
    """Rows of the configured dataset split, streamed when ``streaming`` (and the dataset allows it)."""
    import datasets

    local = local_dataset_dir(src)
    if local is not None and _is_saved_to_disk(local):
        ds: Any = datasets.load_from_disk(str(local))
        if isinstance(ds, datasets.DatasetDict):
            if src.split not in ds:
                raise ValueError(f"{local}: no split {src.split!r}; has {sorted(ds)}")
            ds = ds[src.split]
    else:
        ds = datasets.load_dataset(
            str(local) if local is not None else src.dataset,
            src.config,
            split=src.split,
            revision=src.revision,
            streaming=src.streaming,
        )
    label = local.name if local is not None else src.dataset
    for i, row in enumerate(ds):
        yield row, f"{label}[{src.split}]#{i}"
