"""The ingest stage: one source into ``documents.parquet``, ``quarantine.jsonl`` and ``manifest.json`` (last).

One generic loop over the source protocol (:mod:`st_workflow.ingest.sources.base`); it knows no source kind. Two
kinds of source, two re-use rules:

* **File-backed** (arXiv snapshots, CMR/PDS ``from_file``, local files, local or revision-pinned HF datasets): the
  cache key covers the source's config section, the record bounds, the source's ``input_identity`` (sha256 of every
  input file, or name + size + mtime above ``ingest.identity_hash_max_bytes``) and the code version. An unchanged
  re-run returns the existing manifest after one hash check.
* **Live** (CMR/PDS/ADS APIs, the arXiv API): every run asks the source, but only for what changed since the last
  successful ingest (the source's ``fetch(watermark)``), then merges by id. When nothing changed, the existing
  manifest is returned untouched, so its ``content_hash`` — and every downstream cache — stays the same. The
  incremental state (``state.json``: query signature, watermark) lives next to the output and is replaced together
  with it, only after success.

Every build happens in a temporary sibling directory that replaces the output directory in one ``rename`` once the
manifest is written, so a crash mid-ingest leaves the previous complete output (or nothing), never a half-written one.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from st_workflow import atomic, progress
from st_workflow.config.ingest import IngestConfig, SourceConfig
from st_workflow.config.root import PipelineConfig
from st_workflow.hashing import code_version, combine_hashes, sha256_file, stable_hash
from st_workflow.ingest.documents import (
    DUPLICATE_ID,
    FILTERED,
    ROW,
    Bounds,
    Candidate,
    DocumentSink,
    Rejection,
    SinkResult,
    collapse,
    normalize_text,
    prepare,
)
from st_workflow.ingest.httpclient import RetryingClient
from st_workflow.ingest.logs import logger as get_logger
from st_workflow.ingest.parallel import auto_workers, can_start_workers
from st_workflow.ingest.readers import Record, file_identity
from st_workflow.ingest.sources.base import Listing, ListingShortfallError
from st_workflow.ingest.timestamps import utc_now
from st_workflow.manifest import MANIFEST_NAME, Manifest, reusable
from st_workflow.resources import resolve_path
from st_workflow.schemas import DOCUMENT_SCHEMA, schema_dict

__all__ = [
    "IngestContext",
    "ListingShortfallError",
    "OutputDirError",
    "ingest_source",
    "ingest_to_dir",
    "read_documents",
    "reusable_any",
]

STAGE = "ingest"
DOCUMENTS = "documents.parquet"
QUARANTINE = "quarantine.jsonl"
STATE = "state.json"
_OUR_FILES = {DOCUMENTS, QUARANTINE, STATE, MANIFEST_NAME}
_NOT_IN_KEY = {"sources", "workers", "parallel_min_bytes"}  # they change how fast, not what is written
_PROGRESS_BATCH = 10_000
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class OutputDirError(ValueError):
    """The output directory holds files that are not an ingest output; refusing to replace it."""


# ================================================================================================ public entry points
def ingest_source(cfg: PipelineConfig, source_name: str, *, full_refresh: bool = False) -> Manifest:
    """Ingest the source ``source_name`` of ``cfg`` into ``<run>/ingest/<source_name>/``.

    Args:
        full_refresh: ignore the re-use key and, for live sources, the incremental state.

    Example:
        >>> from st_workflow.config import load_config
        >>> cfg = load_config("configs/tiny.yaml", ["runs_dir=/tmp/st-doc-runs"])  # doctest: +SKIP
        >>> ingest_source(cfg, "cmr").counts["kept"]  # doctest: +SKIP
        150
    """
    source = cfg.ingest.source(source_name)
    if not source.enabled:
        raise ValueError(f"ingest source {source_name!r} is disabled (enabled: false)")
    return ingest_to_dir(
        source, cfg.stage_dir(STAGE) / source_name, ingest=cfg.ingest, full_refresh=full_refresh
    )


def ingest_to_dir(
    source: SourceConfig,
    out_dir: str | Path,
    *,
    ingest: IngestConfig | None = None,
    full_refresh: bool = False,
) -> Manifest:
    """Ingest one source config into an arbitrary directory (what ``st-workflow ingest ... --out DIR`` runs).

    Writes ``documents.parquet`` (:data:`st_workflow.schemas.DOCUMENT_SCHEMA`), ``quarantine.jsonl`` (one JSON object
    per bad or duplicate record: ``source, locator, id, field, reason, detail[, excerpt]``), ``state.json`` for live
    sources, then ``manifest.json``. Counts: ``seen = kept + quarantined + duplicates + filtered``; live sources also
    report ``fetched``, ``added`` and ``updated``, and incremental ``sorted`` merges (CMR/PDS/ADS) ``deleted``
    (removed upstream) and ``deferred`` (new records left out by ``max_records``). Listings with an announced hit
    count carry ``metrics.listing``: ``expected``, ``received``, ``shortfall`` and ``complete``.

    Raises:
        OutputDirError: when ``out_dir`` exists and holds files that are not an ingest output.
    """
    ingest = ingest or IngestConfig()
    out_dir = Path(out_dir).resolve()
    _check_out_dir(out_dir)
    ctx = IngestContext(source, out_dir, ingest, full_refresh)
    return ctx.run()


def read_documents(manifest: Manifest, columns: list[str] | None = None) -> Any:
    """The documents table of an ingest manifest (a ``pyarrow.Table``)."""
    return pq.read_table(manifest.path("documents"), columns=columns)


def reusable_any(directory: Path) -> Manifest | None:
    """The manifest in ``directory`` if its outputs are intact, whatever key wrote it (live sources merge into it)."""
    try:
        m = Manifest.read(directory)
    except (OSError, ValueError):
        return None
    return m if m.is_valid() else None


# ================================================================================================ helpers
def _check_out_dir(out_dir: Path) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise OutputDirError(f"{out_dir} exists and is not a directory")
    stray = sorted(p.name for p in out_dir.iterdir() if p.name not in _OUR_FILES)
    if stray:
        raise OutputDirError(
            f"{out_dir} holds files that are not an ingest output ({', '.join(stray[:5])}); an ingest replaces its "
            "output directory as a whole, so choose an empty or new directory"
        )


def _source_code(source: Any) -> str:
    """Hash of the module that defines the source class: a plug-in outside the package invalidates caches too."""
    try:
        path = inspect.getsourcefile(type(source))
    except TypeError:
        path = None
    return sha256_file(Path(path))[:12] if path else "?"


def _previous_rows(manifest: Manifest, ids: set[str] | None = None) -> dict[str, dict[str, Any]]:
    table = pq.read_table(manifest.path("documents"))
    if ids is not None:
        table = table.filter(pc.is_in(table["id"], value_set=pa.array(sorted(ids), type=pa.string())))
    return {r["id"]: r for r in table.to_pylist()}


def _row_candidate(row: dict[str, Any]) -> Candidate:
    meta = orjson.loads(row["metadata"]) if row.get("metadata") else {}
    return Candidate(
        row["id"], row["title"], row["text"], row["url"], meta, f"previous ingest id={row['id']}"
    )


def _same(c: Candidate, row: dict[str, Any] | None) -> bool:
    """Whether a fetched candidate would produce exactly the stored row."""
    if row is None or not isinstance(c.title, str) or not isinstance(c.text, str):
        return False
    try:
        meta = orjson.dumps(c.metadata).decode() if c.metadata else "{}"
    except TypeError:
        return False
    return (
        collapse(c.title) == row["title"]
        and normalize_text(c.text) == row["text"]
        and c.url == row["url"]
        and meta == row["metadata"]
    )


def _read_quarantine(manifest: Manifest) -> list[dict[str, Any]]:
    with open(manifest.path("quarantine"), "rb") as fh:
        return [orjson.loads(line) for line in fh if line.strip()]


def _read_state(out_dir: Path) -> dict[str, Any] | None:
    try:
        state = orjson.loads((out_dir / STATE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return state if isinstance(state, dict) else None


def _one_per_id(candidates: list[Candidate], stamp: str) -> tuple[dict[Any, Candidate], list[Rejection]]:
    """One record per id: a later revision (by ``stamp``) in the same listing wins; the other is a duplicate."""
    by_id: dict[Any, Candidate] = {}
    dups: list[Rejection] = []
    for c in candidates:
        if not isinstance(c.id, str) or c.id not in by_id:
            by_id[c.id if isinstance(c.id, str) else id(c)] = c
            continue
        old = by_id[c.id]
        newer, older = (
            (c, old) if str(c.metadata.get(stamp, "")) >= str(old.metadata.get(stamp, "")) else (old, c)
        )
        by_id[c.id] = newer
        dups.append(
            Rejection(
                DUPLICATE_ID,
                "id",
                "the listing returned this id twice; the newer revision was kept",
                older.locator,
                id=c.id,
            )
        )
    return by_id, dups


# ================================================================================================ the generic loop
class IngestContext:
    """One ingest of one source into one directory: the loop, and the services a source's methods use."""

    def __init__(self, source: SourceConfig, out_dir: Path, ingest: IngestConfig, full_refresh: bool) -> None:
        self.source = source
        self.out_dir = out_dir
        self.ingest = ingest
        self.full_refresh = full_refresh
        self.bounds = Bounds.from_config(ingest)
        bounds = ingest.model_dump(mode="json", exclude=_NOT_IN_KEY)
        self.config_hash = stable_hash({"source": source.model_dump(mode="json"), "bounds": bounds})
        self.code = f"{code_version(STAGE)}+{_source_code(source)}"
        self.log = get_logger()
        self.t0 = time.perf_counter()
        self.bar: progress.StageProgress | None = None
        self._progress_key = f"ingest-{source.name}"
        self._progress_title = f"Ingest {source.name}"

    def run(self) -> Manifest:
        """Ingest the source: reuse, or build (file-backed), or fetch and merge what changed (live)."""
        if self.source.is_live():
            with progress.stage(self._progress_key, self._progress_title, None, unit="records") as bar:
                self.bar = bar
                return self._run_live()
        identity = self.source.input_identity(self)
        key = None
        if identity is not None:
            key = combine_hashes(
                [STAGE, self.source.name, self.config_hash, stable_hash(identity), self.code]
            )
            if not self.full_refresh and (m := reusable(self.out_dir, key)) is not None:
                self.log.info(
                    "ingest %s: inputs and config unchanged, re-using %s", self.source.name, m.manifest_path
                )
                progress.reused(self._progress_key, self._progress_title)
                return m
        with progress.stage(self._progress_key, self._progress_title, None, unit="records") as bar:
            self.bar = bar
            return self._build(
                lambda sink: self.source.feed(self, sink) or {}, cache_key=key or "", live=False
            )

    # ------------------------------------------------------------------------------------------ services
    def paths(self, values: Iterable[str]) -> list[Path]:
        """Resolved input paths (``pkg://`` included); a missing one is an error naming the source."""
        out = []
        for v in values:
            p = resolve_path(v)
            if not p.exists():
                raise FileNotFoundError(f"ingest source {self.source.name!r}: input not found: {v} ({p})")
            out.append(p)
        return out

    def identity(self, path: Path) -> dict[str, Any]:
        """The reuse identity of one input file or directory (sha256, or name + size + mtime when big)."""
        return file_identity(path, self.ingest.identity_hash_max_bytes)

    def advance(self, n: int = 1) -> None:
        """Count ``n`` records read on the progress bar."""
        if self.bar is not None:
            self.bar.advance(n)

    def counted(self, items: Iterator[Any]) -> Iterator[Any]:
        """``items``, counted on the progress bar in batches."""
        n = 0
        try:
            for item in items:
                yield item
                n += 1
                if n == _PROGRESS_BATCH:
                    self.advance(n)
                    n = 0
        finally:
            self.advance(n)

    def offer(self, sink: DocumentSink, rec: Record, to_candidate: Callable[[Any, str], Any]) -> None:
        """Convert one raw record and hand it to the sink (kept, quarantined, or counted as filtered)."""
        if isinstance(rec, Rejection):
            sink.reject(rec)
            return
        obj, loc = rec
        c = to_candidate(obj, loc)
        if c is FILTERED:
            sink.filtered()
        elif isinstance(c, Rejection):
            sink.reject(c)
        else:
            sink.add(c)

    def stream(
        self, sink: DocumentSink, records: Iterator[Record], to_candidate: Callable[[Any, str], Any]
    ) -> None:
        """Offer raw records one by one until the sink is full."""
        for rec in self.counted(records):
            self.offer(sink, rec, to_candidate)
            if sink.full:
                break

    def workers(self, path: Path) -> int:
        """Processes to parse ``path`` with (1: in-process)."""
        n = (
            self.ingest.workers
            if self.ingest.workers is not None
            else auto_workers(path.stat().st_size, self.ingest.parallel_min_bytes)
        )
        if n > 1 and not can_start_workers():
            self.log.info(
                "ingest %s: this is a daemonic process (a Dask worker?), which cannot start worker processes; "
                "parsing %s in-process",
                self.source.name,
                path.name,
            )
            return 1
        return n

    def client(self, retry: Any, headers: dict[str, str], min_interval_s: float = 0.0) -> RetryingClient:
        """An HTTP client with the source's retry policy (headers are never logged)."""
        return RetryingClient(
            retry, headers=headers, min_interval_s=min_interval_s, label=f"ingest {self.source.name}"
        )

    def log_paging(self, listing: Listing, pages: int, client: RetryingClient) -> None:
        """One log line per listing: items, pages, requests, retries."""
        self.log.info(
            "ingest %s: %d items in %d pages (%d requests, %d retries)",
            self.source.name,
            listing.fetched,
            pages,
            client.requests,
            client.retries,
        )

    # ------------------------------------------------------------------------------------------ building
    def _build(
        self,
        feed: Callable[[DocumentSink], dict[str, int]],
        *,
        cache_key: str,
        live: bool,
        state: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> Manifest:
        src = self.source
        with atomic.atomic_dir(self.out_dir) as tmp:
            os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes it private; the output should follow the umask
            sink = DocumentSink(
                src.name, tmp / DOCUMENTS, tmp / QUARANTINE, self.bounds, max_records=src.max_records
            )
            try:
                extra = feed(sink)
            except BaseException:
                sink.abort()
                raise
            res = sink.close()
            if state is not None:
                atomic.write_json(tmp / STATE, state)
            m = self._manifest(tmp, res, extra, cache_key, live, metrics or {})
        self._log_done(m)
        if self.bar is not None:
            c = m.counts
            self.bar.done(f"kept {c.get('kept', 0)} of {c.get('seen', 0)}")
        return m

    def _manifest(
        self,
        tmp: Path,
        res: SinkResult,
        extra: dict[str, int],
        cache_key: str,
        live: bool,
        metrics: dict[str, Any],
    ) -> Manifest:
        m = Manifest.build(
            stage=STAGE,
            name=self.source.name,
            directory=tmp,
            files={
                "documents": (DOCUMENTS, res.counts["kept"]),
                "quarantine": (QUARANTINE, res.quarantine_rows),
            },
            counts={**res.counts, **extra},
            schema=schema_dict(DOCUMENT_SCHEMA),
            metrics={"kind": self.source.kind, "live": live, "reasons": res.reasons, **metrics},
            config_hash=self.config_hash,
            code_version=self.code,
            cache_key=cache_key,
        )
        m.directory = str(self.out_dir)
        m.write(tmp / MANIFEST_NAME)
        return m

    def _log_done(self, m: Manifest) -> None:
        secs = time.perf_counter() - self.t0
        c = m.counts
        self.log.info(
            "ingest %s: kept %d, quarantined %d, duplicates %d, filtered %d of %d records in %.1f s (%.0f records/s) -> %s",
            m.name,
            c.get("kept", 0),
            c.get("quarantined", 0),
            c.get("duplicates", 0),
            c.get("filtered", 0),
            c.get("seen", 0),
            secs,
            c.get("seen", 0) / secs if secs > 0 else 0.0,
            m.manifest_path,
        )

    # ------------------------------------------------------------------------------------------ live
    def _state(self, signature: str, watermark: str | None, complete: bool, fetched: int) -> dict[str, Any]:
        return {
            "signature": signature,
            "watermark": watermark,
            "complete": complete,
            "fetched": fetched,
            "updated_at": utc_now(),
        }

    def _run_live(self) -> Manifest:
        src = self.source
        bounds = self.ingest.model_dump(mode="json", exclude=_NOT_IN_KEY)
        signature = stable_hash({"query": src.query_identity(self), "bounds": bounds, "code": self.code})
        prev = reusable_any(self.out_dir)
        state = _read_state(self.out_dir)
        incremental = bool(
            src.incremental_enabled()
            and not self.full_refresh
            and prev is not None
            and state is not None
            and state.get("signature") == signature
            and state.get("complete")
            and state.get("watermark")
        )
        watermark = state.get("watermark") if incremental and state else None
        key = combine_hashes([STAGE, src.name, self.config_hash, self.code, "live"])
        prev = prev if incremental else None

        listing = src.fetch(self, watermark)
        stamp = src.watermark_field
        by_id, duplicates = _one_per_id(listing.candidates, stamp)
        rejections = listing.rejections + duplicates
        counts: dict[str, int] = {"fetched": listing.fetched}
        metrics: dict[str, Any] = {"listing": listing.metrics} if listing.metrics else {}
        sorted_merge = src.merge == "sorted"
        newest, complete = listing.newest, listing.complete

        def write_state_only(watermark_now: str | None) -> Manifest:
            assert prev is not None
            atomic.write_json(
                self.out_dir / STATE, self._state(signature, watermark_now, complete, listing.fetched)
            )
            self.log.info(
                "ingest %s: nothing new since %s (%d items re-checked); output unchanged",
                src.name,
                watermark,
                listing.fetched,
            )
            if self.bar is not None:
                self.bar.done("nothing new; output unchanged")
            return prev

        carried: list[dict[str, Any]] = []
        merged: dict[Any, Candidate] = by_id
        prev_rows: dict[str, dict[str, Any]] = {}
        if prev is None:
            counts |= {"added": len(by_id), "updated": 0}
        else:
            # The previous documents: all of them for a sorted merge, only the re-fetched ids for an append merge.
            prev_rows = _previous_rows(
                prev, None if sorted_merge else {k for k in by_id if isinstance(k, str)}
            )
            prev_q = _read_quarantine(prev)
            # Deleted upstream: gone from the merged set, documents and quarantine verdicts alike.
            gone = set(listing.deleted)
            deleted = {i for i in gone if i in prev_rows} | {
                q.get("id") for q in prev_q if q.get("id") in gone
            }
            for i in gone:
                prev_rows.pop(i, None)
                by_id.pop(i, None)
            prev_q = [q for q in prev_q if q.get("id") not in gone]
            src.resolve(list(by_id.values()), prev_rows)
            changed = [c for k, c in by_id.items() if not _same(c, prev_rows.get(k))]
            admitted, deferred = self._admit(changed, prev_rows, stamp) if sorted_merge else (changed, [])
            for c in deferred:
                by_id.pop(c.id, None)
            fetched_ids = {k for k in by_id if isinstance(k, str)}
            known = {(q.get("id"), q.get("reason"), q.get("field")) for q in prev_q}
            new_rejections = [r for r in rejections if (r.id, r.reason, r.field) not in known]
            newest = max(filter(None, [watermark, newest]), default=None)
            if deferred:
                # Not kept, so not past the watermark: the next incremental run asks for them again.
                newest = min(str(c.metadata.get(stamp) or "") for c in deferred) or watermark
                self.log.info(
                    "ingest %s: max_records=%s reached; %d new records deferred (watermark held at %s)",
                    src.name,
                    src.max_records,
                    len(deferred),
                    newest,
                )
            if not admitted and not new_rejections and not deleted:
                return write_state_only(newest)
            added = sum(1 for c in admitted if c.id not in prev_rows)
            counts |= {"added": added, "updated": len(admitted) - added}
            if sorted_merge:
                counts |= {"deleted": len(deleted), "deferred": len(deferred)}
                merged = {k: _row_candidate(r) for k, r in prev_rows.items()}
                merged.update(by_id)
            carried = [q for q in prev_q if q.get("id") not in fetched_ids]
        ordered = sorted(merged.values(), key=lambda c: (not isinstance(c.id, str), str(c.id)))
        src.resolve(ordered, None)

        def feed(sink: DocumentSink) -> dict[str, int]:
            sink.filtered(listing.filtered)
            for q in carried:
                sink.carry(q)
            for r in rejections:
                sink.reject(r)
            if not sorted_merge:  # append: what the listing adds to, in stored order
                if prev is None:
                    src.base_records(self, sink, {k for k in by_id if isinstance(k, str)})
                else:
                    pf = pq.ParquetFile(prev.path("documents"))
                    for batch in pf.iter_batches(batch_size=self.bounds.batch_rows):
                        for row in batch.to_pylist():
                            if row["id"] not in by_id:
                                sink.add(_row_candidate(row))
            for c in ordered:
                if sink.full:
                    break
                sink.add(c)
            return counts

        state = self._state(signature, newest, complete, listing.fetched)
        return self._build(feed, cache_key=key, live=True, state=state, metrics=metrics)

    def _admit(
        self, changed: list[Candidate], prev_rows: dict[str, dict[str, Any]], stamp: str
    ) -> tuple[list[Candidate], list[Candidate]]:
        """Split the changed records of an incremental merge into admitted and deferred under ``max_records``.

        Updates of documents already kept are always admitted; new records are admitted oldest first (by ``stamp``)
        while the cap leaves room. A record the bounds would quarantine takes no room. Without a cap everything is
        admitted.
        """
        cap = self.source.max_records
        if cap is None:
            return changed, []
        updates = [c for c in changed if c.id in prev_rows]
        new = sorted(
            (c for c in changed if c.id not in prev_rows),
            key=lambda c: (str(c.metadata.get(stamp) or ""), str(c.id)),
        )
        replaced = {c.id for c in updates}
        valid_updates = sum(1 for c in updates if prepare(c, self.bounds)[0] == ROW)
        room = cap - (len(prev_rows) - len(replaced)) - valid_updates
        admitted, deferred = list(updates), []
        for c in new:
            if prepare(c, self.bounds)[0] != ROW:
                admitted.append(c)  # quarantined: takes no room, keeps its verdict visible
            elif room > 0:
                admitted.append(c)
                room -= 1
            else:
                deferred.append(c)
        return admitted, deferred
