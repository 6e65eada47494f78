"""Normalised documents: validation, de-duplication, quarantine and streaming Parquet output.

Every source reader turns its raw records into :class:`Candidate` objects (or :class:`Rejection` objects for records
that are broken before they can be read) and hands them to a :class:`DocumentSink`. The sink is the one place that
decides what a valid document is, so all sources obey the same rules:

* ``id``, ``title`` and ``text`` must be strings (an integer id is accepted and converted);
* titles are whitespace-collapsed, texts keep paragraph breaks but lose hard line-wraps (LaTeX is untouched);
* titles and texts shorter than the configured minimum, texts longer than the maximum, strings that cannot be
  encoded as UTF-8 (lone surrogates) and metadata that is not JSON are quarantined with the field and the reason;
* a second record with an id already kept is a ``duplicate_id``; one whose normalised title and text equal an earlier
  record's is a ``duplicate_content``. Both are written to the quarantine file too, so nothing disappears silently.

Documents stream out in row groups of ``batch_rows`` so memory stays bounded however large the input is; only the
ids and 16-byte content-hash prefixes of kept documents are remembered for de-duplication.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> sink = DocumentSink("demo", d / "documents.parquet", d / "quarantine.jsonl", Bounds(min_text_chars=5))
    >>> sink.add(Candidate("1", "A  title", "Some\\n  wrapped text.", None, {}, "f:1"))
    True
    >>> sink.add(Candidate("2", None, "Some text here.", None, {}, "f:2"))
    False
    >>> sink.close().counts
    {'seen': 2, 'kept': 1, 'quarantined': 1, 'duplicates': 0, 'filtered': 0}
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from st_workflow.hashing import sha256_text
from st_workflow.schemas import DOCUMENT_SCHEMA

# Quarantine reasons (the ``reason`` field of quarantine.jsonl).
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
TOO_LARGE = "too_large"
INVALID_JSON = "invalid_json"
UNDECODABLE = "undecodable"
DUPLICATE_ID = "duplicate_id"
DUPLICATE_CONTENT = "duplicate_content"
DUPLICATE_REASONS = frozenset({DUPLICATE_ID, DUPLICATE_CONTENT})

FILTERED = object()
"""Returned by a source's record converter for a record its own filter skips on purpose (arXiv categories); the
sink counts it as ``filtered``, neither kept nor quarantined."""

_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")
_EXCERPT_CHARS = 300


def collapse(text: str) -> str:
    """Same result as :func:`st_workflow.schemas.normalize_whitespace`, about three times faster.

    ``str.split()`` splits on exactly the characters the regex ``\\s`` matches (both use ``str.isspace``), so the two
    agree on every string; the ingest hot loop uses this one.
    """
    return " ".join(text.split())


def normalize_text(text: str) -> str:
    """Collapse hard line-wraps and runs of whitespace but keep paragraph breaks (blank lines) as ``"\\n\\n"``.

    Example:
        >>> normalize_text("  A fully differential\\ncalculation of $\\\\Lambda$.\\n\\n  Second   paragraph.\\n")
        'A fully differential calculation of $\\\\Lambda$.\\n\\nSecond paragraph.'
    """
    if "\n" in text and _BLANK_LINE.search(text):
        parts = (collapse(p) for p in _BLANK_LINE.split(text))
        return "\n\n".join(p for p in parts if p)
    return collapse(text)


def _match_form(s: str) -> str:
    # schemas.normalize_for_match for a string that normalize_text/collapse already produced: when it is NFKC-normal
    # and has no paragraph break, collapsing is a no-op and only the case-fold remains.
    if "\n" not in s and unicodedata.is_normalized("NFKC", s):
        return s.casefold()
    return collapse(unicodedata.normalize("NFKC", s)).casefold()


def document_hash(title: str, text: str) -> str:
    """:func:`st_workflow.schemas.content_hash` of an already normalised title and text (same value, faster)."""
    return sha256_text(_match_form(title) + "\n" + _match_form(text))


def excerpt(raw: Any, limit: int = _EXCERPT_CHARS) -> str:
    """A short printable excerpt of a raw record for the quarantine file."""
    if isinstance(raw, bytes | bytearray):
        raw = bytes(raw[: limit * 4]).rstrip(b"\r\n").decode("utf-8", errors="replace")
    elif not isinstance(raw, str):
        try:
            raw = orjson.dumps(raw, default=str).decode()
        except TypeError:
            raw = repr(raw)
    return raw[:limit]


@dataclass(slots=True)
class Bounds:
    """The record rules every source obeys (built from :class:`~st_workflow.config.ingest.IngestConfig`)."""

    min_title_chars: int = 3
    min_text_chars: int = 20
    max_text_chars: int = 200_000
    max_record_bytes: int = 4 * 1024 * 1024
    dedup_content: bool = True
    batch_rows: int = 20_000

    @classmethod
    def from_config(cls, ingest: Any) -> Bounds:
        """Bounds of an ``IngestConfig``."""
        return cls(
            min_title_chars=ingest.min_title_chars,
            min_text_chars=ingest.min_text_chars,
            max_text_chars=ingest.max_text_chars,
            max_record_bytes=ingest.max_record_bytes,
            dedup_content=ingest.dedup_content,
            batch_rows=ingest.batch_rows,
        )


@dataclass(slots=True)
class Candidate:
    """A record read from a source, before validation. Fields may still be of the wrong type."""

    id: Any
    title: Any
    text: Any
    url: str | None
    metadata: dict[str, Any]
    locator: str
    """Where the record came from (``file:line``, ``page N item M``...), for the quarantine file."""
    raw: Any = None
    """The raw record (or a part of it), excerpted into the quarantine file when the record is rejected."""


@dataclass(slots=True)
class Rejection:
    """A record that is broken before it can become a :class:`Candidate` (bad JSON, wrong shape, too large)."""

    reason: str
    field: str | None
    detail: str
    locator: str
    id: str | None = None
    raw: Any = None


ROW = "row"
REJECT = "reject"
Prepared = tuple[Any, ...]
"""``(ROW, id, title, text, url, metadata_json, content_hash, locator)`` or
``(REJECT, reason, field, detail, locator, id, raw_excerpt)``: plain tuples, cheap to send between processes."""


def _reject(c: Candidate, reason: str, fld: str | None, detail: str, doc_id: str | None) -> Prepared:
    return (REJECT, reason, fld, detail, c.locator, doc_id, c.raw)


def rejection(r: Rejection) -> Prepared:
    """A :class:`Rejection` in :data:`Prepared` form."""
    return (REJECT, r.reason, r.field, r.detail, r.locator, r.id, r.raw)


def prepare(c: Candidate, b: Bounds) -> Prepared:
    """Validate and normalise one candidate without any state: the row to keep, or why it is quarantined.

    Duplicates are not decided here (that needs what was kept before): see :meth:`DocumentSink.commit`.
    """
    doc_id = c.id
    if type(doc_id) is not str:
        if isinstance(doc_id, int) and not isinstance(doc_id, bool):
            doc_id = str(doc_id)
        elif doc_id is None:
            return _reject(c, MISSING_FIELD, "id", "the record has no id", None)
        else:
            return _reject(c, WRONG_TYPE, "id", f"id is a {type(doc_id).__name__}, expected a string", None)
    doc_id = doc_id.strip()
    if not doc_id:
        return _reject(c, MISSING_FIELD, "id", "the record has no id", None)
    title, text = c.title, c.text
    for name, value in (("title", title), ("text", text)):
        if value is None:
            return _reject(c, MISSING_FIELD, name, f"the record has no {name}", doc_id)
        if type(value) is not str:
            return _reject(
                c, WRONG_TYPE, name, f"{name} is a {type(value).__name__}, expected a string", doc_id
            )
    title = " ".join(title.split())
    text = normalize_text(text)
    if len(title) < b.min_title_chars:
        detail = f"title has {len(title)} characters, fewer than {b.min_title_chars}"
        return _reject(c, MISSING_FIELD if not title else TOO_SHORT, "title", detail, doc_id)
    if len(text) < b.min_text_chars:
        detail = f"text has {len(text)} characters, fewer than {b.min_text_chars}"
        return _reject(c, MISSING_FIELD if not text else TOO_SHORT, "text", detail, doc_id)
    if len(text) > b.max_text_chars:
        return _reject(
            c, TOO_LONG, "text", f"text has {len(text)} characters, more than {b.max_text_chars}", doc_id
        )
    if not (
        title.isascii() and text.isascii()
    ):  # isascii is O(1); only non-ASCII strings can hold lone surrogates
        try:
            title.encode("utf-8")
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            return _reject(c, UNDECODABLE, "title or text", f"not valid Unicode: {e.reason}", doc_id)
    try:
        metadata = orjson.dumps(c.metadata).decode() if c.metadata else "{}"
    except TypeError as e:
        return _reject(c, WRONG_TYPE, "metadata", f"metadata is not JSON-serialisable: {e}", doc_id)
    return (ROW, doc_id, title, text, c.url, metadata, document_hash(title, text), c.locator)


@dataclass
class SinkResult:
    """What a sink wrote: counts (``seen = kept + quarantined + duplicates + filtered``) and reasons."""

    counts: dict[str, int]
    reasons: dict[str, int]
    quarantine_rows: int
    documents_path: Path
    quarantine_path: Path


@dataclass
class DocumentSink:
    """Validates candidates and streams the kept ones to Parquet, the rejected ones to a JSONL quarantine file."""

    source: str
    documents_path: Path
    quarantine_path: Path
    bounds: Bounds = field(default_factory=Bounds)
    max_records: int | None = None

    def __post_init__(self) -> None:
        self.documents_path = Path(self.documents_path)
        self.quarantine_path = Path(self.quarantine_path)
        self._cols: dict[str, list[Any]] = {name: [] for name in DOCUMENT_SCHEMA.names}
        self._writer: pq.ParquetWriter | None = None
        self._quarantine = open(self.quarantine_path, "wb")  # noqa: SIM115 - closed in close()
        self._ids: set[str] = set()
        self._hashes: set[bytes] = set()
        self._counts = Counter({"seen": 0, "kept": 0, "quarantined": 0, "duplicates": 0, "filtered": 0})
        self._reasons: Counter[str] = Counter()
        self._quarantine_rows = 0
        self._closed = False
        self._dedup_content = self.bounds.dedup_content
        self._batch_rows = self.bounds.batch_rows

    # ------------------------------------------------------------------ state
    @property
    def kept(self) -> int:
        """Documents kept so far."""
        return self._counts["kept"]

    @property
    def full(self) -> bool:
        """True once ``max_records`` documents are kept: the reader should stop."""
        return self.max_records is not None and self._counts["kept"] >= self.max_records

    def known_id(self, doc_id: str) -> bool:
        """Whether a document with this id was already kept."""
        return doc_id in self._ids

    # ------------------------------------------------------------------ input
    def filtered(self, n: int = 1) -> None:
        """Count records a source filter skipped on purpose (e.g. outside the configured categories)."""
        self._counts["seen"] += n
        self._counts["filtered"] += n

    def reject(self, r: Rejection) -> None:
        """Quarantine a broken record."""
        self.commit(rejection(r))

    def carry(self, entry: dict[str, Any]) -> None:
        """Copy a quarantine entry of the previous ingest (a live source keeps its verdicts on records it did not
        fetch again)."""
        self._counts["seen"] += 1
        reason = str(entry.get("reason", "unknown"))
        self._counts["duplicates" if reason in DUPLICATE_REASONS else "quarantined"] += 1
        self._reasons[reason] += 1
        self._quarantine.write(orjson.dumps(entry) + b"\n")
        self._quarantine_rows += 1

    def add(self, c: Candidate) -> bool:
        """Validate one candidate; keep it (True) or quarantine it with the reason (False)."""
        return self.commit(prepare(c, self.bounds))

    def commit(self, prepared: Prepared) -> bool:
        """Keep a row from :func:`prepare` unless its id or content was already kept, or quarantine a rejection.

        This is the only stateful step (de-duplication and writing), so :func:`prepare` can run in worker processes
        while one sink commits in input order.
        """
        self._counts["seen"] += 1
        if prepared[0] != ROW:
            _, reason, fld, detail, locator, doc_id, raw = prepared
            self._quarantine_entry(reason, fld, detail, locator, doc_id, raw)
            return False
        _, doc_id, title, text, url, metadata, chash, locator = prepared
        if doc_id in self._ids:
            self._quarantine_entry(
                DUPLICATE_ID, "id", "a document with this id was already kept", locator, doc_id, None
            )
            return False
        if self._dedup_content:
            key = bytes.fromhex(chash[:32])
            if key in self._hashes:
                self._quarantine_entry(
                    DUPLICATE_CONTENT,
                    "title,text",
                    "same normalised title and text as a kept document",
                    locator,
                    doc_id,
                    None,
                )
                return False
            self._hashes.add(key)
        self._ids.add(doc_id)
        cols = self._cols
        cols["id"].append(doc_id)
        cols["source"].append(self.source)
        cols["title"].append(title)
        cols["text"].append(text)
        cols["url"].append(url)
        cols["metadata"].append(metadata)
        cols["content_hash"].append(chash)
        self._counts["kept"] += 1
        if len(cols["id"]) >= self._batch_rows:
            self._flush()
        return True

    # ------------------------------------------------------------------ output
    def close(self) -> SinkResult:
        """Flush everything and close both files (an empty source still gets a valid, empty Parquet file)."""
        if not self._closed:
            self._flush(final=True)
            if self._writer is not None:
                self._writer.close()
            self._quarantine.close()
            self._closed = True
        return SinkResult(
            counts=dict(self._counts),
            reasons=dict(sorted(self._reasons.items())),
            quarantine_rows=self._quarantine_rows,
            documents_path=self.documents_path,
            quarantine_path=self.quarantine_path,
        )

    def abort(self) -> None:
        """Close the files without finishing them (the caller discards the temporary directory)."""
        with contextlib.suppress(Exception):
            if self._writer is not None:
                self._writer.close()
        with contextlib.suppress(Exception):
            self._quarantine.close()
        self._closed = True

    # ------------------------------------------------------------------ internals
    def _quarantine_entry(
        self, reason: str, fld: str | None, detail: str, locator: str, doc_id: Any, raw: Any
    ) -> None:
        if reason in DUPLICATE_REASONS:
            self._counts["duplicates"] += 1
        else:
            self._counts["quarantined"] += 1
        self._reasons[reason] += 1
        entry = {
            "source": self.source,
            "locator": locator,
            "id": doc_id if isinstance(doc_id, str) else None,
            "field": fld,
            "reason": reason,
            "detail": detail,
        }
        if raw is not None and reason not in DUPLICATE_REASONS:
            entry["excerpt"] = excerpt(raw)
        self._quarantine.write(orjson.dumps(entry) + b"\n")
        self._quarantine_rows += 1

    def _flush(self, final: bool = False) -> None:
        cols = self._cols
        if not cols["id"] and not (final and self._writer is None):
            return
        table = pa.Table.from_pydict(cols, schema=DOCUMENT_SCHEMA)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.documents_path, DOCUMENT_SCHEMA, compression="zstd")
        self._writer.write_table(table)
        for v in cols.values():
            v.clear()
