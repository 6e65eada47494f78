"""The source protocol: one config model per source kind that also says how that kind is ingested, and the registry.

A source kind is one class (a pydantic config model, subclass of :class:`SourceBase`) in one module. Like a
Hugging Face ``datasets`` builder (``_info`` / ``_split_generators`` / ``_generate_examples``) or a Singer/Airbyte
stream (records plus a cursor field and state), the class answers the questions the generic ingest loop
(:mod:`st_workflow.ingest.stage`) asks:

* file-backed: :meth:`~SourceBase.input_identity` (what the reuse key covers; None: always re-read) and
  :meth:`~SourceBase.feed` (offer every record to the sink);
* live (:meth:`~SourceBase.is_live`): :meth:`~SourceBase.query_identity` (what we ask for, not how),
  :meth:`~SourceBase.incremental_enabled`, :meth:`~SourceBase.fetch` (the listing since a watermark),
  :attr:`~SourceBase.watermark_field` (the cursor field: which metadata value orders revisions) and
  :attr:`~SourceBase.merge` (how a changed listing merges into the previous documents);
* natural pairs: :attr:`~SourceBase.pair_type` and :meth:`~SourceBase.natural_positive`;
* the command line: :meth:`~SourceBase.add_cli_arguments` and :meth:`~SourceBase.from_cli`.

The registry maps ``kind`` to the class. Built-in kinds and third-party ones register the same way: a
``module:Class`` reference, the built-ins from :data:`BUILTINS` (mirrored by the ``st_workflow.sources`` entry point
table in ``pyproject.toml``), others from that entry point group (:func:`importlib.metadata.entry_points`).
:mod:`st_workflow.config.ingest` builds the ``kind``-discriminated ``SourceConfig`` union from the registry when it
is imported. A third-party source module should import only this module (never ``st_workflow.config.ingest``,
which is still being built while entry points load).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import yaml
from pydantic import Field

from st_workflow.config.base import PositiveInt, StrictModel
from st_workflow.ingest.httpclient import HttpSourceError

if TYPE_CHECKING:
    from st_workflow.config.pairs import NaturalPairsConfig
    from st_workflow.ingest.documents import Candidate, DocumentSink, Rejection
    from st_workflow.ingest.httpclient import RetryingClient
    from st_workflow.ingest.stage import IngestContext

ENTRY_POINT_GROUP = "st_workflow.sources"
BUILTINS: dict[str, str] = {
    "arxiv": "st_workflow.ingest.sources.arxiv:ArxivSource",
    "cmr": "st_workflow.ingest.sources.cmr:CmrSource",
    "pds": "st_workflow.ingest.sources.pds:PdsSource",
    "hf": "st_workflow.ingest.sources.hf:HfSource",
    "local": "st_workflow.ingest.sources.local:LocalSource",
    "ads": "st_workflow.ingest.sources.ads:AdsSource",
}
"""Sources shipped with the package, as ``module:Class`` (the same references the entry point table declares)."""

TITLE_ABSTRACT = "title-abstract"
TITLE_DESCRIPTION = "title-description"

_log = logging.getLogger(__name__)


# ================================================================================================ shared config parts
class RetryConfig(StrictModel):
    """Bounded exponential backoff with jitter for HTTP sources."""

    max_attempts: PositiveInt = 6
    """Attempts per request, the first included."""
    backoff_base_s: float = Field(default=1.0, ge=0)
    """First backoff delay; doubles each attempt (full jitter: the actual delay is uniform in [0, delay])."""
    backoff_max_s: float = Field(default=60.0, ge=0)
    """Upper bound of one backoff delay (and of an honoured ``Retry-After``)."""
    timeout_s: float = Field(default=60.0, gt=0)
    """Per-request read timeout (CMR's own hard limit is 180 s)."""


class ColumnMap(StrictModel):
    """Which input columns become the document fields."""

    id: str | None = None
    """Id column; when absent the id is the content hash."""
    title: str = "title"
    """Title column."""
    text: str = "text"
    """Body text column."""
    url: str | None = None
    """URL column, if any."""


class ListingShortfallError(HttpSourceError):
    """A complete listing delivered fewer items than the server announced and ``on_shortfall`` is ``fail``."""


@dataclass
class Listing:
    """What one live listing delivered (the Singer "records + state" of one sync)."""

    candidates: list[Candidate] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    newest: str | None = None
    """Newest :attr:`SourceBase.watermark_field` value among the candidates (the next watermark)."""
    complete: bool = True
    """False when ``max_records`` cut the listing short or a shortfall makes it untrustworthy: the next run then
    lists everything again instead of continuing from the watermark."""
    fetched: int = 0
    """Items that arrived (candidates, rejections and filtered)."""
    filtered: int = 0
    """Items a source filter skipped on purpose (arXiv categories)."""
    deleted: list[str] = field(default_factory=list)
    """Ids the source deleted since the watermark (CMR incremental runs)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """``expected`` (announced hits), ``received``, ``shortfall``, ``complete``: for the manifest (``listing``)."""


class SourceBase(StrictModel):
    """Fields every source has, and the protocol the generic ingest loop calls (defaults: a file-backed source)."""

    name: str
    """Unique source name; also the sub-directory of the ingest stage and the ``source`` field of documents."""
    enabled: bool = True
    """Skip the source when false."""
    max_records: PositiveInt | None = None
    """Keep at most this many documents (handy for slices and smoke runs). A first or full ingest stops reading once
    it has this many. An incremental merge of a live source (CMR, PDS, ADS) keeps the documents it already has and
    applies their updates, then takes new records oldest first (by revision or harvest time) while room is left; new
    records left out are counted as ``deferred``, not ``added``, and the watermark stays at the oldest of them, so
    they are asked for again next run (and taken once the cap is raised)."""

    # ----------------------------------------------------------------------------------------- class-level protocol
    watermark_field: ClassVar[str] = ""
    """Live sources: the candidate ``metadata`` key whose value orders revisions (the cursor field)."""
    merge: ClassVar[Literal["sorted", "append"]] = "sorted"
    """How a live listing merges into the previous documents: ``sorted`` loads them all (small catalogues), applies
    deletions and the ``max_records`` admission rule and writes everything sorted by id; ``append`` streams the
    previous documents in their stored order and appends the changed ones (large corpora: arXiv)."""
    how_we_ask: ClassVar[frozenset[str]] = frozenset({"enabled"})
    """Config fields that change how a live source is asked, not what: left out of the incremental signature."""
    pair_type: ClassVar[str] = TITLE_DESCRIPTION
    """Natural pair type of this kind's documents."""
    cli_help: ClassVar[str] = ""
    """One line for ``st-workflow ingest --help``."""

    # ----------------------------------------------------------------------------------------- file-backed
    def is_live(self) -> bool:
        """Whether every run asks a live service (and merges what changed) instead of reading identifiable files."""
        return False

    def input_identity(self, ctx: IngestContext) -> Any:
        """JSON-able identity of the inputs for the reuse key; None when the input cannot be pinned (always re-read)."""
        raise NotImplementedError(f"source kind {kind_of(type(self))!r} does not implement input_identity")

    def feed(self, ctx: IngestContext, sink: DocumentSink) -> dict[str, int] | None:
        """Offer every record to ``sink`` (stop when ``sink.full``); returns extra manifest counts, if any."""
        raise NotImplementedError(f"source kind {kind_of(type(self))!r} does not implement feed")

    # ----------------------------------------------------------------------------------------- live
    def query_identity(self, ctx: IngestContext) -> Any:
        """What a live source asks for (the incremental state is only continued while this stays the same)."""
        return self.model_dump(mode="json", exclude=set(self.how_we_ask))

    def incremental_enabled(self) -> bool:
        """Whether a live run may continue from the last watermark."""
        return bool(getattr(self, "incremental", False))

    def fetch(self, ctx: IngestContext, watermark: str | None) -> Listing:
        """The listing since ``watermark`` (everything when None; then stop at ``max_records`` candidates)."""
        raise NotImplementedError(f"source kind {kind_of(type(self))!r} is not live")

    def base_records(self, ctx: IngestContext, sink: DocumentSink, superseded: set[str]) -> None:
        """``append`` merge, first run: records the live listing is added to (arXiv: the snapshot); ids in
        ``superseded`` are reported as duplicates of the newer fetched version."""

    def resolve(self, candidates: list[Candidate], previous: dict[str, dict[str, Any]] | None) -> None:
        """Cross-record fix-ups before writing (PDS: reference ids to titles); ``previous``: stored rows by id."""

    # ----------------------------------------------------------------------------------------- natural pairs
    @classmethod
    def natural_positive(cls, text: str, meta: dict[str, Any], cfg: NaturalPairsConfig) -> str:
        """The natural-pair positive of a document of this kind (before truncation): the text itself."""
        return text

    # ----------------------------------------------------------------------------------------- command line
    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this kind's options to its ``st-workflow ingest <kind>`` sub-command."""

    @classmethod
    def from_cli(cls, args: argparse.Namespace, common: dict[str, Any]) -> SourceBase:
        """The source config an ``st-workflow ingest <kind>`` command line describes (``common``: name, max_records)."""
        return cls(**common)


class ListingChecks(StrictModel):
    """``on_shortfall`` for listings whose server announces a hit count (CMR, PDS, ADS)."""

    on_shortfall: Literal["warn", "fail"] = "warn"
    """What to do when a complete listing delivers fewer items than the server announced (CMR ``CMR-Hits``, PDS
    ``summary.hits``, ADS ``numFound``): ``warn`` logs it and marks the run incomplete (the next run lists everything
    again instead of continuing from the watermark); ``fail`` raises. Either way the manifest's ``metrics.listing``
    records ``expected``, ``received`` and ``shortfall``."""

    def page_listing(
        self,
        ctx: IngestContext,
        client: RetryingClient,
        pager: Any,
        convert: Callable[[Any, str], Any],
        watermark: str | None,
        then: Callable[[Listing], None] | None = None,
    ) -> Listing:
        """Read a pager (``(item, locator)`` pairs; ``pages`` and ``hits`` after iteration) into a checked listing.

        A first or full listing stops at ``max_records`` candidates; an incremental one is read whole (the merge
        applies the cap). ``then`` runs with the listing while the client is still open (CMR's deletions).
        """
        with client:
            out = collect(
                pager,
                convert,
                self.watermark_field,  # type: ignore[attr-defined]
                self.max_records if watermark is None else None,  # type: ignore[attr-defined]
                ctx.advance,
            )
            ctx.log_paging(out, pager.pages, client)
            self.check_listing(out, pager.hits, ctx.log)
            if then is not None:
                then(out)
        return out

    def check_listing(
        self, out: Listing, hits: int | None, log: logging.Logger | logging.LoggerAdapter
    ) -> None:
        """Compare what a complete listing delivered with what the server announced; act on a shortfall."""
        shortfall = max(0, hits - out.fetched) if hits is not None and out.complete else 0
        out.metrics = {
            "expected": hits,
            "received": out.fetched,
            "shortfall": shortfall,
            "complete": out.complete,
        }
        if not shortfall:
            return
        name = getattr(self, "name", "?")
        msg = (
            f"ingest {name}: the server announced {hits} items but the listing delivered {out.fetched} "
            f"({shortfall} missing)"
        )
        if self.on_shortfall == "fail":
            raise ListingShortfallError(msg + " (on_shortfall: fail)", transient=True)
        log.warning("%s; marking the run incomplete so the next one lists everything again", msg)
        out.complete = out.metrics["complete"] = False


def collect(
    items: Iterable[tuple[Any, str]],
    convert: Callable[[Any, str], Any],
    stamp: str,
    limit: int | None,
    advance: Callable[[int], None] = lambda n: None,
) -> Listing:
    """Turn paged ``(item, locator)`` pairs into a :class:`Listing`: candidates, rejections, the newest ``stamp``;
    stop (incomplete) at ``limit`` candidates."""
    from st_workflow.ingest.documents import Rejection

    out = Listing()
    for item, loc in items:
        out.fetched += 1
        advance(1)
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
    return out


def parse_params(items: list[str], flag: str = "--param") -> dict[str, Any]:
    """``KEY=VALUE`` command-line items as a dict (values parsed as YAML; a repeated key becomes a list)."""
    from st_workflow.config.loader import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        value = yaml.safe_load(raw) if raw.strip() else ""
        if key in out:  # a repeated key becomes a list (provider=A --param provider=B)
            out[key] = [*(out[key] if isinstance(out[key], list) else [out[key]]), value]
        else:
            out[key] = value
    return out


def set_given(obj: Any, **given: Any) -> Any:
    """Set the fields whose command-line value was given (non-empty), keeping the model's defaults otherwise."""
    for name, value in given.items():
        if value:
            setattr(obj, name, value)
    return obj


def add_column_arguments(sp: argparse.ArgumentParser) -> None:
    """``--id-column/--title-column/--text-column/--url-column`` (sources mapped through a :class:`ColumnMap`)."""
    sp.add_argument("--id-column", metavar="COL", help="id column (default: a content hash)")
    sp.add_argument("--title-column", default="title", metavar="COL", help="title column (default: title)")
    sp.add_argument("--text-column", default="text", metavar="COL", help="text column (default: text)")
    sp.add_argument("--url-column", metavar="COL", help="URL column")


def column_map(args: argparse.Namespace) -> ColumnMap:
    """The :class:`ColumnMap` of :func:`add_column_arguments` options."""
    return ColumnMap(id=args.id_column, title=args.title_column, text=args.text_column, url=args.url_column)


# ================================================================================================ the registry
_REGISTRY: dict[str, type[SourceBase]] = {}
_loaded = False


class SourceRegistryError(ValueError):
    """A source class that cannot be registered (no ``kind`` literal, or a kind taken by another class)."""


def kind_of(cls: type[SourceBase]) -> str:
    """The ``kind`` discriminator value of a source config class (its ``kind: Literal[...]`` field default)."""
    f = cls.model_fields.get("kind")
    if f is None or not isinstance(f.default, str):
        raise SourceRegistryError(
            f"{cls.__module__}.{cls.__qualname__}: a source needs a field kind: Literal['...']"
        )
    return f.default


def register(cls: type[SourceBase]) -> type[SourceBase]:
    """Register a source class under its ``kind`` (idempotent for the same class); usable as a decorator.

    Register before :mod:`st_workflow.config.ingest` is imported (an entry point does that), or call
    :func:`st_workflow.config.ingest.rebuild_source_union` afterwards so configs accept the new kind.
    """
    if not (isinstance(cls, type) and issubclass(cls, SourceBase)):
        raise SourceRegistryError(f"{cls!r} is not a SourceBase subclass")
    kind = kind_of(cls)
    have = _REGISTRY.get(kind)
    if have is not None and have is not cls:
        raise SourceRegistryError(
            f"source kind {kind!r} is already registered by {have.__module__}.{have.__qualname__}; "
            f"cannot register {cls.__module__}.{cls.__qualname__}"
        )
    _REGISTRY[kind] = cls
    return cls


def _load_ref(ref: str) -> type[SourceBase]:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def load() -> dict[str, type[SourceBase]]:
    """Register the built-ins and every ``st_workflow.sources`` entry point (once); returns ``{kind: class}``.

    A third-party entry point that fails to load is logged and skipped (a broken plug-in must not break configs
    that do not use it); a built-in that fails to load raises.
    """
    global _loaded
    if _loaded:
        return dict(_REGISTRY)
    for ref in BUILTINS.values():
        register(_load_ref(ref))
    builtin_refs = set(BUILTINS.values())
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.value.replace(" ", "") in builtin_refs:
            continue
        try:
            cls = ep.load()
            register(cls)
        except Exception as e:  # a plug-in's own bug: report it, keep the others
            _log.warning(
                "ingest source entry point %s = %s could not be registered: %s", ep.name, ep.value, e
            )
    _loaded = True
    return dict(_REGISTRY)


def source_classes() -> dict[str, type[SourceBase]]:
    """``{kind: class}`` of every registered source."""
    return load()


def source_class(kind: str) -> type[SourceBase] | None:
    """The class registered for ``kind`` (None when no source of that kind is installed)."""
    return load().get(kind)


def source_kinds() -> list[str]:
    """Registered kinds, built-ins first in their documented order."""
    reg = load()
    return [k for k in BUILTINS if k in reg] + sorted(k for k in reg if k not in BUILTINS)
