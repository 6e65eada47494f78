"""Training pair sources: the registry behind ``training.sources``.

Each ``TrainSource.data`` kind has a reader that yields column batches of ``anchor``, ``positive`` (and
``negative`` when mapped), plus a *fingerprint* of what it read (file hashes, dataset fingerprints, filters and
column mapping), which keys the pre-tokenization cache. Adding a kind means adding a reader to :data:`READERS`.

* ``pipeline``: this run's pairs Parquet (``schemas.PAIR_SCHEMA``), filtered by type, ingest source and
  synthesized flag;
* ``hf``: ``datasets.load_dataset(dataset, config, split=..., data_files=...)`` with a column mapping whose dotted
  paths reach into nested fields (``positives.docs.0``); a local directory or data files go through the same call;
* ``local``: a JSONL / Parquet / CSV / TSV file;
* ``beir``: a BEIR directory's qrels as ``(query text, title + " " + text)`` pairs.

:func:`materialize` turns a reader into a clean, memory-mappable Arrow file: rows with a missing or blank text are
dropped and counted by reason, exact duplicate rows are dropped and counted, and with a
:class:`~st_workflow.leakage.BenchmarkGuard` every row leaking into a benchmark is dropped and counted as
``leaked:<benchmark>``; nothing disappears silently.

Mined negatives: when :attr:`SourceContext.mined` holds a file of the ``mine`` stage for a (non-``pipeline``)
source, :func:`open_source` reads that file (``anchor``, ``positive``, ``negative``) instead of the source's own
rows. It still opens the source itself, to check that the file was mined from the same data (else it fails), and
the fingerprint covers the source's fingerprint and the mined file's sha256. ``pipeline`` sources get their mined
negatives through :attr:`SourceContext.pipeline_pairs` (the ``mine`` stage's ``pairs``).

Example:
    >>> get_path({"positives": {"docs": ["d0", "d1"]}}, "positives.docs.1")
    'd1'
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from st_workflow.beir import doc_text, read_corpus, read_qrels, read_queries
from st_workflow.config.training import (
    BeirPairs,
    HfPairs,
    LocalPairs,
    PairColumns,
    PipelinePairs,
    TrainSource,
)
from st_workflow.hashing import sha256_file, sha256_tree, stable_hash
from st_workflow.resources import resolve_path

if TYPE_CHECKING:
    from st_workflow.leakage import BenchmarkGuard

TEXT_COLUMNS = ("anchor", "positive", "negative")
_BATCH = 10_000


@dataclass(frozen=True)
class MinedFile:
    """A source's rows with mined hard negatives (a Parquet of the ``mine`` stage, role ``source:<name>``)."""

    path: Path
    """Parquet with string columns ``anchor``, ``positive``, ``negative``."""
    sha256: str
    """Its sha256 (from the mine manifest)."""
    source_fingerprint: str
    """Fingerprint of the source's reader when it was mined (checked against the source as it is now)."""
    max_rows: int | None = None
    """The source's ``max_rows`` when it was mined (already applied: the mined file is not capped again)."""


@dataclass
class SourceContext:
    """What readers may need besides the source's own config."""

    pipeline_pairs: Path | None = None
    """The pairs Parquet of the ``pairs`` stage."""
    pipeline_pairs_sha256: str | None = None
    """Its sha256 (from the manifest), so the fingerprint needs no re-hash."""
    hf_cache_dir: Path | None = None
    """``datasets`` cache directory."""
    mined: dict[str, MinedFile] = field(default_factory=dict)
    """Source name -> its mined file; such a source is read from that file (see the module docstring)."""


@dataclass
class SourceReader:
    """A source ready to be read: its fingerprint, output columns and a batch iterator."""

    name: str
    fingerprint: str
    columns: list[str]
    batches: Callable[[], Iterator[dict[str, list[Any]]]]
    details: dict[str, Any] = field(default_factory=dict)
    mined: bool = False
    """True when the rows come from a mined file (``max_rows`` was applied before mining)."""


def get_path(row: dict[str, Any], path: str) -> Any:
    """Value at a dotted path (``a.b.0``) in a nested row; ``None`` when any step is missing."""
    if path in row:
        return row[path]
    value: Any = row
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list | tuple) and part.lstrip("-").isdigit():
            i = int(part)
            value = value[i] if -len(value) <= i < len(value) else None
        else:
            return None
        if value is None:
            return None
    return value


def _mapping(columns: PairColumns) -> dict[str, str]:
    out = {"anchor": columns.anchor, "positive": columns.positive}
    if columns.negative:
        out["negative"] = columns.negative
    return out


def _map_rows(rows: list[dict[str, Any]], mapping: dict[str, str]) -> dict[str, list[Any]]:
    return {out: [get_path(r, src) for r in rows] for out, src in mapping.items()}


def _table_batches(
    table_batches: Iterator[pa.RecordBatch], mapping: dict[str, str]
) -> Iterator[dict[str, list]]:
    flat = all("." not in src for src in mapping.values())
    for rb in table_batches:
        if flat:
            names = set(rb.schema.names)
            yield {
                out: (rb.column(src).to_pylist() if src in names else [None] * rb.num_rows)
                for out, src in mapping.items()
            }
        else:
            yield _map_rows(rb.to_pylist(), mapping)


def _check_columns(name: str, available: list[str], mapping: dict[str, str], where: str) -> None:
    missing = [src for src in mapping.values() if src.split(".")[0] not in available and src not in available]
    if missing:
        raise ValueError(
            f"training source {name!r}: column(s) {missing} not found in {where}; available: {sorted(available)}"
        )


# ---------------------------------------------------------------------------------------------- readers
def _pipeline_reader(src: TrainSource, ctx: SourceContext) -> SourceReader:
    data = src.data
    assert isinstance(data, PipelinePairs)
    if ctx.pipeline_pairs is None:
        raise ValueError(
            f"training source {src.name!r} reads the pipeline pairs, but no pairs dataset was given; "
            "run the pipeline (ingest -> pairs) first or pass --pairs FILE.parquet"
        )
    path = Path(ctx.pipeline_pairs)
    table = pq.read_table(path)
    _check_columns(src.name, table.column_names, {"a": "anchor", "p": "positive"}, str(path))
    mask = None

    def _and(m: Any, cond: Any) -> Any:
        return cond if m is None else pc.and_(m, cond)

    if data.types and "type" in table.column_names:
        mask = _and(mask, pc.is_in(table["type"], value_set=pa.array(data.types)))
    if data.sources and "source" in table.column_names:
        mask = _and(mask, pc.is_in(table["source"], value_set=pa.array(data.sources)))
    if data.synthesized is not None and "synthesized" in table.column_names:
        mask = _and(mask, pc.equal(table["synthesized"], data.synthesized))
    if mask is not None:
        table = table.filter(mask)
    has_negative = (
        "negative" in table.column_names and table.num_rows > 0 and table["negative"].null_count == 0
    )
    mapping = {"anchor": "anchor", "positive": "positive"} | (
        {"negative": "negative"} if has_negative else {}
    )
    fp = stable_hash(
        {
            "kind": "pipeline",
            "file": ctx.pipeline_pairs_sha256 or sha256_file(path),
            "filter": data.model_dump(mode="json"),
            "negative": has_negative,
        }
    )
    return SourceReader(
        src.name,
        fp,
        list(mapping),
        lambda: _table_batches(iter(table.to_batches(_BATCH)), mapping),
        {"file": str(path), "rows_after_filter": table.num_rows},
    )


def _local_fingerprint(path: Path) -> str:
    return sha256_tree(path) if path.is_dir() else sha256_file(path)


def _hf_reader(src: TrainSource, ctx: SourceContext) -> SourceReader:
    import datasets

    data = src.data
    assert isinstance(data, HfPairs)
    mapping = _mapping(data.columns)
    local = resolve_path(data.dataset)
    dataset_arg = str(local) if local.exists() else data.dataset
    kwargs: dict[str, Any] = {"split": data.split}
    if data.config:
        kwargs["name"] = data.config
    if data.revision:
        kwargs["revision"] = data.revision
    if data.data_files:
        kwargs["data_files"] = [str(resolve_path(f)) for f in data.data_files]
    if ctx.hf_cache_dir:
        kwargs["cache_dir"] = str(ctx.hf_cache_dir)
    try:
        ds = datasets.load_dataset(dataset_arg, **kwargs)
    except Exception as e:
        raise ValueError(
            f"training source {src.name!r}: cannot load Hugging Face dataset {data.dataset!r}: {e}"
        ) from e
    _check_columns(src.name, list(ds.column_names), mapping, f"dataset {data.dataset!r}")
    if local.exists():
        content = _local_fingerprint(local)
    elif data.data_files:
        content = stable_hash([_local_fingerprint(resolve_path(f)) for f in data.data_files])
    else:
        content = ds._fingerprint
    fp = stable_hash({"kind": "hf", "spec": data.model_dump(mode="json"), "content": content})
    if src.max_rows is not None and len(ds) > src.max_rows:
        ds = ds.select(range(src.max_rows))

    def batches() -> Iterator[dict[str, list]]:
        return _table_batches(iter(ds.with_format("arrow").iter(batch_size=_BATCH)), mapping)

    return SourceReader(src.name, fp, list(mapping), batches, {"dataset": data.dataset, "rows_read": len(ds)})


def _local_reader(src: TrainSource, ctx: SourceContext) -> SourceReader:
    data = src.data
    assert isinstance(data, LocalPairs)
    path = resolve_path(data.path)
    if not path.is_file():
        raise ValueError(f"training source {src.name!r}: file not found: {path}")
    fmt = data.format
    if fmt == "auto":
        suffixes = "".join(path.suffixes[-2:]).lower()
        fmt = next(
            (
                f
                for f, exts in (
                    ("parquet", (".parquet", ".pq")),
                    ("jsonl", (".jsonl", ".json", ".jsonl.gz", ".json.gz")),
                    ("tsv", (".tsv",)),
                    ("csv", (".csv",)),
                )
                if any(suffixes.endswith(e) for e in exts)
            ),
            "",
        )
        if not fmt:
            raise ValueError(
                f"training source {src.name!r}: cannot tell the format of {path}; set data.format"
            )
    mapping = _mapping(data.columns)
    if fmt == "parquet":
        pf = pq.ParquetFile(path)
        _check_columns(src.name, pf.schema_arrow.names, mapping, str(path))
        batches: Callable[[], Iterator[dict[str, list]]] = lambda: _table_batches(  # noqa: E731
            pf.iter_batches(batch_size=_BATCH), mapping
        )
    elif fmt == "jsonl":
        from st_workflow.beir import read_jsonl

        def batches() -> Iterator[dict[str, list]]:
            buf: list[dict[str, Any]] = []
            for row in read_jsonl(path):
                buf.append(row)
                if len(buf) >= _BATCH:
                    yield _map_rows(buf, mapping)
                    buf = []
            if buf:
                yield _map_rows(buf, mapping)

        first = next(read_jsonl(path), None)
        if first is not None:
            _check_columns(src.name, list(first), mapping, str(path))
    else:
        import pyarrow.csv as pacsv

        opts = pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",", newlines_in_values=True)
        convert = pacsv.ConvertOptions(strings_can_be_null=False)
        table = pacsv.read_csv(path, parse_options=opts, convert_options=convert)
        _check_columns(src.name, table.column_names, mapping, str(path))
        batches = lambda: _table_batches(iter(table.to_batches(_BATCH)), mapping)  # noqa: E731
    fp = stable_hash({"kind": "local", "format": fmt, "file": sha256_file(path), "columns": mapping})
    return SourceReader(src.name, fp, list(mapping), batches, {"file": str(path), "format": fmt})


def _beir_reader(src: TrainSource, ctx: SourceContext) -> SourceReader:
    data = src.data
    assert isinstance(data, BeirPairs)
    root = resolve_path(data.path)
    qrels_path = root / "qrels" / f"{data.split}.tsv"
    for p in (root / "corpus.jsonl", root / "queries.jsonl", qrels_path):
        if not p.is_file():
            raise ValueError(f"training source {src.name!r}: BEIR file missing: {p}")
    fp = stable_hash(
        {
            "kind": "beir",
            "split": data.split,
            "min_score": data.min_score,
            "files": [sha256_file(p) for p in (root / "corpus.jsonl", root / "queries.jsonl", qrels_path)],
        }
    )

    def batches() -> Iterator[dict[str, list]]:
        corpus, queries, qrels = read_corpus(root), read_queries(root), read_qrels(qrels_path)
        anchors: list[Any] = []
        positives: list[Any] = []
        for qid in sorted(qrels):
            for did, score in sorted(qrels[qid].items()):
                if score < data.min_score:
                    continue
                anchors.append(queries.get(qid))
                positives.append(doc_text(corpus[did]) if did in corpus else None)
        for i in range(0, len(anchors), _BATCH):
            yield {"anchor": anchors[i : i + _BATCH], "positive": positives[i : i + _BATCH]}

    return SourceReader(src.name, fp, ["anchor", "positive"], batches, {"directory": str(root)})


READERS: dict[str, Callable[[TrainSource, SourceContext], SourceReader]] = {
    "pipeline": _pipeline_reader,
    "hf": _hf_reader,
    "local": _local_reader,
    "beir": _beir_reader,
}


def open_source(src: TrainSource, ctx: SourceContext) -> SourceReader:
    """The reader for one configured source (its mined file when ``ctx.mined`` has one, see the module docstring).

    Raises:
        ValueError: naming the source when its data cannot be found or lacks a mapped column, or when its mined
            file was mined from other data or another ``max_rows`` (re-run the ``mine`` stage).
    """
    reader = READERS[src.data.kind](src, ctx)
    mined = ctx.mined.get(src.name) if src.data.kind != "pipeline" else None
    if mined is None:
        return reader
    if mined.source_fingerprint != reader.fingerprint or mined.max_rows != src.max_rows:
        raise ValueError(
            f"training source {src.name!r}: its mined negatives ({mined.path}) were mined from other data "
            f"(fingerprint {mined.source_fingerprint[:12]}, max_rows {mined.max_rows}) than the source has now "
            f"(fingerprint {reader.fingerprint[:12]}, max_rows {src.max_rows}); re-run the mine stage"
        )
    return mined_reader(src.name, mined, reader)


def mined_reader(name: str, mined: MinedFile, original: SourceReader) -> SourceReader:
    """A reader over a mined file standing in for ``original``; fingerprint: the source's plus the file's sha256."""
    pf = pq.ParquetFile(mined.path)
    mapping = {c: c for c in TEXT_COLUMNS}
    _check_columns(name, pf.schema_arrow.names, mapping, str(mined.path))
    fp = stable_hash({"kind": "mined", "source": original.fingerprint, "file": mined.sha256})
    return SourceReader(
        name,
        fp,
        list(TEXT_COLUMNS),
        lambda: _table_batches(pf.iter_batches(batch_size=_BATCH, columns=list(TEXT_COLUMNS)), mapping),
        {"mined_file": str(mined.path), "mined_from": original.details},
        mined=True,
    )


# ---------------------------------------------------------------------------------------------- cleaning
@dataclass
class SourceCounts:
    """What happened to a source's rows."""

    read: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def drop(self, reason: str, row: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if len(self.examples) < 5:
            self.examples.append(f"row {row}: {reason}")


def _clean(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return value


def materialize(
    reader: SourceReader, path: Path, max_rows: int | None = None, guard: BenchmarkGuard | None = None
) -> SourceCounts:
    """Write the reader's rows, cleaned, to an Arrow stream file at ``path``; returns the counts.

    Dropped rows are counted by reason (``missing <column>``, ``duplicate``, and with a ``guard`` ``leaked:<bench
    mark>`` for a row whose anchor, positive or negative leaks into that benchmark, see
    :meth:`~st_workflow.leakage.BenchmarkGuard.check`); the first few are listed with their row number so a bad
    source can be inspected.
    """
    counts = SourceCounts()
    schema = pa.schema([pa.field(c, pa.string(), nullable=False) for c in reader.columns])
    seen: set[bytes] = set()
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for batch in reader.batches():
            out: dict[str, list[str]] = {c: [] for c in reader.columns}
            n = len(batch[reader.columns[0]])
            for i in range(n):
                if max_rows is not None and counts.read >= max_rows:
                    break
                counts.read += 1
                row = [_clean(batch[c][i]) for c in reader.columns]
                bad = next((c for c, v in zip(reader.columns, row, strict=True) if v is None), None)
                if bad is not None:
                    counts.drop(f"missing {bad}", counts.read - 1)
                    continue
                key = hashlib.blake2b("\0".join(row).encode("utf-8"), digest_size=16).digest()  # type: ignore[arg-type]
                if key in seen:
                    counts.drop("duplicate", counts.read - 1)
                    continue
                seen.add(key)
                if guard is not None:
                    texts = dict(zip(reader.columns, row, strict=True))
                    leak = guard.check(texts.get("anchor"), texts.get("positive"), texts.get("negative"))
                    if leak is not None:
                        counts.drop(f"leaked:{leak.benchmark}", counts.read - 1)
                        continue
                for c, v in zip(reader.columns, row, strict=True):
                    out[c].append(v)  # type: ignore[arg-type]
                counts.kept += 1
            if out[reader.columns[0]]:
                writer.write_batch(
                    pa.record_batch([pa.array(out[c], pa.string()) for c in reader.columns], schema)
                )
            if max_rows is not None and counts.read >= max_rows:
                break
    return counts
