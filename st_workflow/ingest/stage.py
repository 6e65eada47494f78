"""The ingest stage: one source into ``documents.parquet``, ``quarantine.jsonl`` and ``manifest.json`` (last).

Two kinds of source, two re-use rules:

* **File-backed** (arXiv snapshots, CMR/PDS ``from_file``, local files, local or revision-pinned HF datasets): the
  cache key covers the source's config section, the record bounds, the identity of every input file (sha256, or
  name + size + mtime above ``ingest.identity_hash_max_bytes``) and ``code_version("ingest")``. An unchanged re-run
  returns the existing manifest after one hash check.
* **Live** (CMR/PDS APIs, the arXiv API): every run asks the source, but only for what changed since the last
  successful ingest (CMR ``revision_date[]``, PDS ``harvest_date_time ge``, arXiv newest-first down to the last
  ``updated``), then merges by id. When nothing changed, the existing manifest is returned untouched, so its
  ``content_hash`` — and every downstream cache — stays the same. The incremental state (``state.json``: query
  signature, watermark) lives next to the output and is replaced together with it, only after success.

Every build happens in a temporary sibling directory that replaces the output directory in one ``rename`` once the
manifest is written, so a crash mid-ingest leaves the previous complete output (or nothing), never a half-written one.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from st_workflow import atomic
from st_workflow.config.ingest import (
    ArxivSource,
    CmrSource,
    HfSource,
    IngestConfig,
    LocalSource,
    PdsSource,
    SourceConfig,
)
from st_workflow.config.root import PipelineConfig
from st_workflow.hashing import code_version, combine_hashes, stable_hash
from st_workflow.ingest import arxiv, cmr, pds
from st_workflow.ingest.arxiv_api import ArxivApiPager
from st_workflow.ingest.documents import (
    DUPLICATE_ID,
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
from st_workflow.ingest.generic import iter_hf, local_dataset_dir, row_candidate
from st_workflow.ingest.httpclient import HttpSourceError, RetryingClient
from st_workflow.ingest.logs import logger as get_logger
from st_workflow.ingest.parallel import auto_workers, can_start_workers, commit_all, prepared_arxiv
from st_workflow.ingest.readers import Record, file_identity, iter_jsonl, iter_local
from st_workflow.manifest import MANIFEST_NAME, Manifest, reusable
from st_workflow.resources import resolve_path
from st_workflow.schemas import DOCUMENT_SCHEMA, schema_dict

STAGE = "ingest"
DOCUMENTS = "documents.parquet"
QUARANTINE = "quarantine.jsonl"
STATE = "state.json"
_OUR_FILES = {DOCUMENTS, QUARANTINE, STATE, MANIFEST_NAME}
_NOT_IN_KEY = {"sources", "workers", "parallel_min_bytes"}  # they change how fast, not what is written
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class OutputDirError(ValueError):
    """The output directory holds files that are not an ingest output; refusing to replace it."""


class ListingShortfallError(HttpSourceError):
    """A complete listing delivered fewer items than the server announced and ``on_shortfall`` is ``fail``."""


@dataclass
class _Listing:
    """What one CMR/PDS listing delivered."""

    candidates: list[Candidate] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    newest: str | None = None
    """Newest revision/harvest time among the candidates."""
    complete: bool = True
    """False when ``max_records`` cut the listing short or a shortfall makes it untrustworthy."""
    fetched: int = 0
    """Items that arrived (candidates and rejections)."""
    deleted: list[str] = field(default_factory=list)
    """Ids the source deleted since the watermark (CMR incremental runs)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """``expected`` (announced hits), ``received``, ``shortfall``, ``complete``: for the manifest."""


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
    report ``fetched``, ``added`` and ``updated``, and incremental CMR/PDS merges ``deleted`` (removed upstream) and
    ``deferred`` (new records left out by ``max_records``). CMR/PDS manifests carry ``metrics.listing``:
    ``expected`` (the server's hit count), ``received``, ``shortfall`` and ``complete``.

    Raises:
        OutputDirError: when ``out_dir`` exists and holds files that are not an ingest output.
    """
    ingest = ingest or IngestConfig()
    out_dir = Path(out_dir).resolve()
    _check_out_dir(out_dir)
    job = _Job(source, out_dir, ingest, full_refresh)
    if _is_live(source):
        return job.run_live()
    return job.run_files()


def read_documents(manifest: Manifest, columns: list[str] | None = None) -> Any:
    """The documents table of an ingest manifest (a ``pyarrow.Table``)."""
    return pq.read_table(manifest.path("documents"), columns=columns)


# ================================================================================================ helpers
def _is_live(source: SourceConfig) -> bool:
    if isinstance(source, CmrSource | PdsSource):
        return source.from_file is None
    if isinstance(source, ArxivSource):
        return source.api.enabled
    return False


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


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _minus_seconds(ts: str, seconds: float) -> str:
    """``ts`` (ISO 8601) minus ``seconds``, as CMR's ``YYYY-MM-DDTHH:MM:SSZ``; ``ts`` unchanged if it does not parse."""
    try:
        when = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return ts
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return (when - dt.timedelta(seconds=seconds)).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _offer(sink: DocumentSink, rec: Record, to_candidate: Callable[[Any, str], Any]) -> None:
    if isinstance(rec, Rejection):
        sink.reject(rec)
        return
    obj, loc = rec
    c = to_candidate(obj, loc)
    if c is arxiv.FILTERED:
        sink.filtered()
    elif isinstance(c, Rejection):
        sink.reject(c)
    else:
        sink.add(c)


def _progress(desc: str) -> Any:
    """A records/s progress bar on a terminal (``disable=None``: silent when stderr is not a TTY, e.g. in Prefect)."""
    from tqdm.auto import tqdm

    return tqdm(desc=desc, unit="rec", unit_scale=True, mininterval=1.0, disable=None)


def _previous_rows(manifest: Manifest, ids: set[str] | None = None) -> list[dict[str, Any]]:
    table = pq.read_table(manifest.path("documents"))
    if ids is not None:
        table = table.filter(pc.is_in(table["id"], value_set=pa.array(sorted(ids), type=pa.string())))
    return table.to_pylist()


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
    path = manifest.path("quarantine")
    with open(path, "rb") as fh:
        return [orjson.loads(line) for line in fh if line.strip()]


def _read_state(out_dir: Path) -> dict[str, Any] | None:
    try:
        state = orjson.loads((out_dir / STATE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return state if isinstance(state, dict) else None


# ================================================================================================ the job
class _Job:
    """One ingest of one source into one directory."""

    def __init__(self, source: SourceConfig, out_dir: Path, ingest: IngestConfig, full_refresh: bool) -> None:
        self.source = source
        self.out_dir = out_dir
        self.ingest = ingest
        self.full_refresh = full_refresh
        self.bounds = Bounds.from_config(ingest)
        bounds = ingest.model_dump(mode="json", exclude=_NOT_IN_KEY)
        self.config_hash = stable_hash({"source": source.model_dump(mode="json"), "bounds": bounds})
        self.code = code_version(STAGE)
        self.log = get_logger()
        self.t0 = time.perf_counter()

    # ------------------------------------------------------------------------------------------ file-backed
    def run_files(self) -> Manifest:
        identity = self._input_identity()
        key = None
        if identity is not None:
            key = combine_hashes(
                [STAGE, self.source.name, self.config_hash, stable_hash(identity), self.code]
            )
            if not self.full_refresh and (m := reusable(self.out_dir, key)) is not None:
                self.log.info(
                    "ingest %s: inputs and config unchanged, re-using %s", self.source.name, m.manifest_path
                )
                return m
        return self._build(lambda sink: self._feed_files(sink), cache_key=key or "", live=False)

    def _paths(self, values: Iterable[str]) -> list[Path]:
        out = []
        for v in values:
            p = resolve_path(v)
            if not p.exists():
                raise FileNotFoundError(f"ingest source {self.source.name!r}: input not found: {v} ({p})")
            out.append(p)
        return out

    def _snapshots(self) -> list[Path]:
        src = self.source
        assert isinstance(src, ArxivSource)
        if not src.snapshot:
            if src.api.enabled:
                return []
            return [
                arxiv.ensure_snapshot(resolve_path(src.download_dir) / arxiv.KAGGLE_FILE, src.kaggle_dataset)
            ]
        out = []
        for v in src.snapshot:
            p = resolve_path(v)
            if not p.exists() and p.name == arxiv.KAGGLE_FILE:
                p = arxiv.ensure_snapshot(p, src.kaggle_dataset)
            out.append(p)
        return self._paths(str(p) for p in out)

    def _input_identity(self) -> Any:
        src, limit = self.source, self.ingest.identity_hash_max_bytes
        if isinstance(src, ArxivSource):
            return [file_identity(p, limit) for p in self._snapshots()]
        if isinstance(src, CmrSource | PdsSource):
            return [file_identity(p, limit) for p in self._paths([src.from_file or ""])]
        if isinstance(src, LocalSource):
            return [file_identity(p, limit) for p in self._paths([src.path])]
        if isinstance(src, HfSource):
            local = local_dataset_dir(src)
            if local is not None:
                return file_identity(local, limit)
            if src.revision:
                return {
                    "hub": src.dataset,
                    "config": src.config,
                    "split": src.split,
                    "revision": src.revision,
                }
            return None  # an unpinned Hub dataset can change under the same name: always re-read it
        raise TypeError(f"unknown source kind {type(src).__name__}")

    def _feed_files(self, sink: DocumentSink) -> dict[str, int]:
        src, b = self.source, self.bounds
        if isinstance(src, ArxivSource):
            prefixes = tuple(src.categories)
            for path in self._snapshots():
                workers = self._workers(path)
                if workers > 1:
                    self.log.info(
                        "ingest %s: parsing %s with %d worker processes", src.name, path.name, workers
                    )
                    commit_all(sink, prepared_arxiv(path, prefixes, b, workers))
                else:
                    self._stream(
                        sink,
                        iter_jsonl(path, b.max_record_bytes),
                        lambda o, loc: arxiv.snapshot_candidate(o, loc, prefixes),
                        path,
                    )
                if sink.full:
                    break
        elif isinstance(src, CmrSource):
            path = self._paths([src.from_file or ""])[0]
            self._stream(sink, cmr.iter_file(path, b.max_record_bytes), cmr.item_candidate, path)
        elif isinstance(src, PdsSource):
            path = self._paths([src.from_file or ""])[0]
            cands: list[Candidate] = []
            for rec in pds.iter_file(path, b.max_record_bytes):
                if isinstance(rec, Rejection):
                    sink.reject(rec)
                    continue
                c = pds.record_candidate(*rec)
                if isinstance(c, Rejection):
                    sink.reject(c)
                else:
                    cands.append(c)
            pds.resolve_references(cands)
            for c in cands:
                if sink.full:
                    break
                sink.add(c)
        elif isinstance(src, LocalSource):
            path = self._paths([src.path])[0]
            self._stream(
                sink,
                iter_local(path, src.format, b.max_record_bytes, b.batch_rows),
                lambda o, loc: row_candidate(o, loc, src.columns, "local", {"file": path.name}),
                path,
            )
        elif isinstance(src, HfSource):
            self._stream(
                sink,
                iter_hf(src),
                lambda o, loc: row_candidate(o, loc, src.columns, "hf", {"dataset": src.dataset}),
            )
        return {}

    def _workers(self, path: Path) -> int:
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

    def _stream(
        self,
        sink: DocumentSink,
        records: Iterator[Record],
        to_candidate: Callable[[Any, str], Any],
        label: Any = None,
    ) -> None:
        bar = _progress(f"{self.source.name} {getattr(label, 'name', '')}".strip())
        n = 0
        try:
            for rec in records:
                _offer(sink, rec, to_candidate)
                n += 1
                if n == 10_000:
                    bar.update(n)
                    n = 0
                if sink.full:
                    break
        finally:
            bar.update(n)
            bar.close()

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
    def _signature(self) -> str:
        src = self.source
        if isinstance(src, ArxivSource):
            exclude: Any = {
                "enabled": True,
                "api": {"retry": True, "min_interval_s": True, "page_size": True},
            }
            query = src.model_dump(mode="json", exclude=exclude)
            query["snapshots"] = [
                file_identity(p, self.ingest.identity_hash_max_bytes) for p in self._snapshots()
            ]
        else:
            ignored = {
                "retry",
                "page_size",
                "limit",
                "client_id",
                "token",
                "enabled",
                "incremental",
                "incremental_overlap_s",
                "on_shortfall",
            }  # how we ask, not what we ask for
            query = src.model_dump(mode="json", exclude=ignored)
        bounds = self.ingest.model_dump(mode="json", exclude=_NOT_IN_KEY)
        return stable_hash({"query": query, "bounds": bounds, "code": self.code})

    def run_live(self) -> Manifest:
        src = self.source
        signature = self._signature()
        prev = reusable_any(self.out_dir)
        state = _read_state(self.out_dir)
        incremental_on = src.api.incremental if isinstance(src, ArxivSource) else src.incremental  # type: ignore[union-attr]
        incremental = bool(
            incremental_on
            and not self.full_refresh
            and prev is not None
            and state is not None
            and state.get("signature") == signature
            and state.get("complete")
            and state.get("watermark")
        )
        watermark = state.get("watermark") if incremental and state else None
        key = combine_hashes([STAGE, src.name, self.config_hash, self.code, "live"])
        if isinstance(src, ArxivSource):
            return self._run_arxiv_live(prev if incremental else None, watermark, signature, key)
        return self._run_api_live(prev if incremental else None, watermark, signature, key)

    def _client(self, retry: Any, headers: dict[str, str], min_interval_s: float = 0.0) -> RetryingClient:
        return RetryingClient(
            retry, headers=headers, min_interval_s=min_interval_s, label=f"ingest {self.source.name}"
        )

    def _fetch_api(self, watermark: str | None) -> _Listing:
        """Fetch (the changed part of) a CMR or PDS listing, and for an incremental CMR run the deletions since the
        watermark. A first or full listing stops at ``max_records`` candidates; an incremental one is read whole
        (the merge applies the cap, see :meth:`_run_api_live`)."""
        src = self.source
        assert isinstance(src, CmrSource | PdsSource)
        out = _Listing()
        limit = src.max_records if watermark is None else None
        since: str | None = None
        if isinstance(src, CmrSource):
            headers = {"Client-Id": src.client_id, "Accept": "application/json"}
            token = src.token.resolve()
            if token is not None:
                headers["Authorization"] = f"Bearer {token.get_secret_value()}"
            params = cmr.flatten_params(src.params)
            if watermark:
                since = _minus_seconds(watermark, src.incremental_overlap_s)
                params.append(("revision_date[]", f"{since},"))
                self.log.info("ingest %s: incremental, asking CMR for revision_date >= %s", src.name, since)
            client = self._client(src.retry, headers)
            pager: Any = cmr.CmrPager(client, src.base_url, cmr.COLLECTIONS_PATH, params, src.page_size)
            convert: Callable = lambda item, loc: cmr.item_candidate(item, loc, src.base_url)  # noqa: E731
            stamp = "revision_date"
        else:
            if watermark:
                self.log.info(
                    "ingest %s: incremental, asking PDS for harvest_date_time >= %s", src.name, watermark
                )
            client = self._client(src.retry, {})
            pager = pds.PdsPager(
                client,
                src.base_url,
                src.endpoint,
                pds.query_params(src.params, watermark),
                src.limit,
                tuple(src.sort),
            )
            convert = lambda item, loc: pds.api_candidate(item, loc, src.base_url)  # noqa: E731
            stamp = "harvest_date_time"
        with client:
            for item, loc in pager:
                out.fetched += 1
                c = convert(item, loc)
                if isinstance(c, Rejection):
                    out.rejections.append(c)
                    continue
                ts = c.metadata.get(stamp)
                if isinstance(ts, str) and (out.newest is None or ts > out.newest):
                    out.newest = ts
                out.candidates.append(c)
                if limit is not None and len(out.candidates) >= limit:
                    out.complete = False
                    break
            self.log.info(
                "ingest %s: %d items in %d pages (%d requests, %d retries)",
                src.name,
                out.fetched,
                pager.pages,
                client.requests,
                client.retries,
            )
            self._check_listing(out, pager.hits)
            if since is not None and isinstance(src, CmrSource):
                out.deleted = cmr.deleted_collections(client, src.base_url, since)
                self.log.info(
                    "ingest %s: CMR lists %d collections deleted since %s", src.name, len(out.deleted), since
                )
        return out

    def _check_listing(self, out: _Listing, hits: int | None) -> None:
        """Compare what a complete listing delivered with what the server announced; act on a shortfall."""
        src = self.source
        assert isinstance(src, CmrSource | PdsSource)
        shortfall = max(0, hits - out.fetched) if hits is not None and out.complete else 0
        out.metrics = {
            "expected": hits,
            "received": out.fetched,
            "shortfall": shortfall,
            "complete": out.complete,
        }
        if not shortfall:
            return
        msg = (
            f"ingest {src.name}: the server announced {hits} items but the listing delivered {out.fetched} "
            f"({shortfall} missing)"
        )
        if src.on_shortfall == "fail":
            raise ListingShortfallError(msg + " (on_shortfall: fail)", transient=True)
        self.log.warning("%s; marking the run incomplete so the next one lists everything again", msg)
        out.complete = out.metrics["complete"] = False

    def _run_api_live(
        self, prev: Manifest | None, watermark: str | None, signature: str, key: str
    ) -> Manifest:
        src = self.source
        assert isinstance(src, CmrSource | PdsSource)
        listing = self._fetch_api(watermark)
        rejections = listing.rejections
        complete, fetched = listing.complete, listing.fetched
        newest = listing.newest
        # One record per id: a later revision in the same listing wins; the other is reported as a duplicate.
        by_id: dict[Any, Candidate] = {}
        stamp = "revision_date" if isinstance(src, CmrSource) else "harvest_date_time"
        for c in listing.candidates:
            if not isinstance(c.id, str) or c.id not in by_id:
                by_id[c.id if isinstance(c.id, str) else id(c)] = c
                continue
            old = by_id[c.id]
            newer, older = (
                (c, old) if str(c.metadata.get(stamp, "")) >= str(old.metadata.get(stamp, "")) else (old, c)
            )
            by_id[c.id] = newer
            rejections.append(
                Rejection(
                    DUPLICATE_ID,
                    "id",
                    "the listing returned this id twice; the newer revision was kept",
                    older.locator,
                    id=c.id,
                )
            )
        carried: list[dict[str, Any]] = []
        counts = {"fetched": fetched}
        metrics: dict[str, Any] = {"listing": listing.metrics}
        if prev is not None:
            prev_rows = {r["id"]: r for r in _previous_rows(prev)}
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
            if isinstance(src, PdsSource):
                titles = {
                    r_meta.get("lid"): r["title"]
                    for r in prev_rows.values()
                    if isinstance(r_meta := orjson.loads(r["metadata"] or "{}"), dict) and r_meta.get("lid")
                }
                pds.resolve_references(list(by_id.values()), titles)
            changed = [c for k, c in by_id.items() if not _same(c, prev_rows.get(k))]
            admitted, deferred = self._admit(changed, prev_rows, stamp)
            for c in deferred:
                by_id.pop(c.id, None)
            fetched_ids = {k for k in by_id if isinstance(k, str)}
            known = {(q.get("id"), q.get("reason"), q.get("field")) for q in prev_q}
            new_rejections = [r for r in rejections if (r.id, r.reason, r.field) not in known]
            stored_newest = max(filter(None, [watermark, newest]), default=None)
            if deferred:
                # Not kept, so not past the watermark: the next incremental run asks for them again.
                stored_newest = min(str(c.metadata.get(stamp) or "") for c in deferred) or watermark
                self.log.info(
                    "ingest %s: max_records=%s reached; %d new records deferred (watermark held at %s)",
                    src.name,
                    src.max_records,
                    len(deferred),
                    stored_newest,
                )
            if not admitted and not new_rejections and not deleted:
                atomic.write_json(
                    self.out_dir / STATE, self._state(signature, stored_newest, complete, fetched)
                )
                self.log.info(
                    "ingest %s: nothing new since %s (%d items re-checked); output unchanged",
                    src.name,
                    watermark,
                    fetched,
                )
                return prev
            added = sum(1 for c in admitted if c.id not in prev_rows)
            counts |= {
                "added": added,
                "updated": len(admitted) - added,
                "deleted": len(deleted),
                "deferred": len(deferred),
            }
            merged: dict[Any, Candidate] = {k: _row_candidate(r) for k, r in prev_rows.items()}
            merged.update(by_id)
            carried = [q for q in prev_q if q.get("id") not in fetched_ids]
            newest = stored_newest
        else:
            merged = by_id
            counts |= {"added": len(by_id), "updated": 0}
        ordered = sorted(merged.values(), key=lambda c: (not isinstance(c.id, str), str(c.id)))
        if isinstance(src, PdsSource):
            pds.resolve_references(ordered)

        def feed(sink: DocumentSink) -> dict[str, int]:
            for q in carried:
                sink.carry(q)
            for r in rejections:
                sink.reject(r)
            for c in ordered:
                if sink.full:
                    break
                sink.add(c)
            return counts

        state = self._state(signature, newest, complete, fetched)
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

    def _state(self, signature: str, watermark: str | None, complete: bool, fetched: int) -> dict[str, Any]:
        return {
            "signature": signature,
            "watermark": watermark,
            "complete": complete,
            "fetched": fetched,
            "updated_at": _utc_now(),
        }

    def _run_arxiv_live(
        self, prev: Manifest | None, watermark: str | None, signature: str, key: str
    ) -> Manifest:
        src = self.source
        assert isinstance(src, ArxivSource)
        client = self._client(src.api.retry, {}, src.api.min_interval_s)
        pager = ArxivApiPager(client, src.api, since=watermark, categories=tuple(src.categories))
        by_id: dict[str, Candidate] = {}
        filtered = 0
        with client:
            for c in pager:
                if c is arxiv.FILTERED:
                    filtered += 1
                    continue
                assert isinstance(c, Candidate)
                old = by_id.get(c.id)
                if old is None or str(c.metadata.get("update_date", "")) > str(
                    old.metadata.get("update_date", "")
                ):
                    by_id[c.id] = c
        newest = max(filter(None, [watermark, pager.newest]), default=None)
        # Newest-first listings stay incremental even when max_results cut them: everything newer than the watermark
        # was seen, and what is older than the cut is out of scope by configuration.
        complete = pager.complete or src.api.incremental
        counts = {"fetched": len(by_id) + filtered}
        if prev is not None:
            prev_rows = {r["id"]: r for r in _previous_rows(prev, set(by_id))}
            changed = [c for k, c in by_id.items() if not _same(c, prev_rows.get(k))]
            if not changed:
                atomic.write_json(
                    self.out_dir / STATE, self._state(signature, newest, complete, counts["fetched"])
                )
                self.log.info(
                    "ingest %s: no new or updated papers since %s; output unchanged", src.name, watermark
                )
                return prev
            added = sum(1 for c in changed if c.id not in prev_rows)
            counts |= {"added": added, "updated": len(changed) - added}
        else:
            counts |= {"added": len(by_id), "updated": 0}
        api_sorted = [by_id[k] for k in sorted(by_id)]
        prefixes = tuple(src.categories)

        def feed(sink: DocumentSink) -> dict[str, int]:
            sink.filtered(filtered)
            if prev is not None:
                for q in _read_quarantine(prev):
                    if q.get("id") not in by_id:
                        sink.carry(q)
                pf = pq.ParquetFile(prev.path("documents"))
                for batch in pf.iter_batches(batch_size=self.bounds.batch_rows):
                    for row in batch.to_pylist():
                        if row["id"] not in by_id:
                            sink.add(_row_candidate(row))
            else:
                for path in self._snapshots():
                    for rec in iter_jsonl(path, self.bounds.max_record_bytes):
                        if isinstance(rec, tuple) and isinstance(rec[0], dict) and rec[0].get("id") in by_id:
                            sink.reject(
                                Rejection(
                                    DUPLICATE_ID,
                                    "id",
                                    "superseded by the newer arXiv API version",
                                    rec[1],
                                    id=rec[0]["id"],
                                )
                            )
                            continue
                        _offer(sink, rec, lambda o, loc: arxiv.snapshot_candidate(o, loc, prefixes))
            for c in api_sorted:
                if sink.full:
                    break
                sink.add(c)
            return counts

        state = self._state(signature, newest, complete and src.max_records is None, counts["fetched"])
        return self._build(feed, cache_key=key, live=True, state=state)


def reusable_any(directory: Path) -> Manifest | None:
    """The manifest in ``directory`` if its outputs are intact, whatever key wrote it (live sources merge into it)."""
    try:
        m = Manifest.read(directory)
    except (OSError, ValueError):
        return None
    return m if m.is_valid() else None
