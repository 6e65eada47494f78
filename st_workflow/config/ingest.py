"""Configuration of the ingest stage: document sources and record bounds."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from st_workflow.config.base import NonNegInt, PositiveInt, SecretRef, StrictModel


class _SourceBase(StrictModel):
    name: str
    """Unique source name; also the sub-directory of the ingest stage and the ``source`` field of documents."""
    enabled: bool = True
    """Skip the source when false."""
    max_records: PositiveInt | None = None
    """Keep at most this many documents (handy for slices and smoke runs). A first or full ingest stops reading once
    it has this many. An incremental merge of a live source (CMR, PDS) keeps the documents it already has and applies
    their updates, then takes new records oldest first (by revision or harvest time) while room is left; new records
    left out are counted as ``deferred``, not ``added``, and the watermark stays at the oldest of them, so they are
    asked for again next run (and taken once the cap is raised)."""


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


class _ListingChecks(StrictModel):
    on_shortfall: Literal["warn", "fail"] = "warn"
    """What to do when a complete listing delivers fewer items than the server announced (CMR ``CMR-Hits``, PDS
    ``summary.hits``): ``warn`` logs it and marks the run incomplete (the next run lists everything again instead
    of continuing from the watermark); ``fail`` raises. Either way the manifest's ``metrics.listing`` records
    ``expected``, ``received`` and ``shortfall``."""


class ArxivApiConfig(StrictModel):
    """The arXiv export API, for papers newer than the snapshot."""

    enabled: bool = False
    """Query the API in addition to the snapshot."""
    base_url: str = "http://export.arxiv.org/api/query"
    """Export API endpoint (Atom)."""
    search_query: str = "cat:astro-ph*"
    """arXiv search query, e.g. ``cat:physics.space-ph``."""
    max_results: PositiveInt = 1000
    """Total records to fetch from the API."""
    page_size: Annotated[int, Field(gt=0, le=2000)] = 500
    """Records per request (the API allows at most 2000)."""
    min_interval_s: float = Field(default=3.0, ge=0)
    """Minimum seconds between requests (arXiv terms of use: one request every 3 s)."""
    incremental: bool = True
    """Ask newest-first (``sortBy=lastUpdatedDate``) and stop at the last successful ingest's newest entry."""
    retry: RetryConfig = Field(default_factory=RetryConfig)
    """Retry policy for 429/5xx/timeouts/truncated responses."""


class ArxivSource(_SourceBase):
    """arXiv metadata: the Kaggle ``arxiv-metadata-oai-snapshot.json`` (JSON Lines) and/or the export API."""

    kind: Literal["arxiv"] = "arxiv"
    """Discriminator: ``arxiv``."""
    snapshot: list[str] = Field(default_factory=list)
    """Snapshot files (JSON Lines, Kaggle or OAI-DC line format); ``pkg://`` paths name bundled data. Empty (with
    the API off): ``<download_dir>/arxiv-metadata-oai-snapshot.json``, downloaded from Kaggle when missing."""
    categories: list[str] = Field(default_factory=list)
    """Keep papers with a category matching one of these prefixes; empty keeps all. ``astro-ph`` matches
    ``astro-ph`` and ``astro-ph.EP``, ``physics`` matches ``physics.ao-ph`` but not ``math-ph``; a prefix ending
    in ``-`` or ``.`` (``hep-``) matches anything that starts with it."""
    kaggle_dataset: str = "Cornell-University/arxiv"
    """Kaggle dataset to download the snapshot from when it is missing and credentials exist."""
    download_dir: str = "data/raw"
    """Where a downloaded snapshot is put."""
    api: ArxivApiConfig = Field(default_factory=ArxivApiConfig)
    """Optional export-API ingest of recent papers."""


class CmrSource(_ListingChecks, _SourceBase):
    """NASA CMR collections (UMM-C) with Search-After paging, or a recorded UMM-C dump."""

    kind: Literal["cmr"] = "cmr"
    """Discriminator: ``cmr``."""
    base_url: str = "https://cmr.earthdata.nasa.gov"
    """CMR root URL; ``/search/collections.umm_json`` is appended."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Query parameters (``provider``, ``keyword``, ``cloud_hosted``, ``project``...)."""
    page_size: Annotated[int, Field(gt=0, le=2000)] = 2000
    """Items per page (CMR caps it at 2000)."""
    client_id: str = "st-workflow"
    """Sent as the ``Client-Id`` header, as CMR asks."""
    token: SecretRef = Field(default_factory=lambda: SecretRef(env="EARTHDATA_TOKEN"))
    """Optional Earthdata Login bearer token."""
    from_file: str | None = None
    """Read UMM-C items from a JSON Lines dump (or a saved response) instead of the API."""
    incremental: bool = True
    """Ask only for ``revision_date`` after the last successful ingest and merge by concept-id; collections CMR
    deleted since then (``/search/deleted-collections``) are removed from the merged set (counted as ``deleted``)."""
    incremental_overlap_s: float = Field(default=3600.0, ge=0)
    """Re-ask this many seconds before the newest ``revision-date`` already seen (CMR indexes with a lag; the
    merge by concept-id makes the overlap harmless)."""
    retry: RetryConfig = Field(default_factory=RetryConfig)
    """Retry policy for 429/5xx/timeouts."""


class PdsSource(_ListingChecks, _SourceBase):
    """NASA PDS Search API (products, collections, bundles), or a file of extracted context products."""

    kind: Literal["pds"] = "pds"
    """Discriminator: ``pds``."""
    base_url: str = "https://pds.nasa.gov/api/search/1"
    """Search API root."""
    endpoint: Literal["products", "collections", "bundles"] = "products"
    """Which class of products to page through."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Query parameters (``q``, ``keywords``...)."""
    limit: PositiveInt = 500
    """Items per page (the docs advise staying below a few thousand)."""
    sort: list[str] = Field(default_factory=lambda: ["ops:Harvest_Info.ops:harvest_date_time", "lidvid"])
    """Sort fields for ``search-after`` paging (the API requires ``sort`` with ``search-after``). ``lidvid`` is
    appended when missing: ``search-after`` skips every item that ties with the last one sent, and products
    harvested together share one harvest time, so the sort must end with a unique field."""
    incremental: bool = True
    """Ask only for products harvested since the last successful ingest (``harvest_date_time ge ...``) and
    merge by lidvid."""
    from_file: str | None = None
    """Read records from a file instead of the API: JSON Lines of Search API items or of extracted PDS4 context
    products, a saved Search API response (``{"data": [...]}``), or a PDS4 XML label (or a directory of them)."""
    retry: RetryConfig = Field(default_factory=RetryConfig)
    """Retry policy for 429/5xx/timeouts."""


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


class HfSource(_SourceBase):
    """A Hugging Face dataset by id, mapped to documents."""

    kind: Literal["hf"] = "hf"
    """Discriminator: ``hf``."""
    dataset: str
    """Dataset id on the Hub (or a local dataset directory)."""
    config: str | None = None
    """Dataset configuration name."""
    split: str = "train"
    """Split to read."""
    revision: str | None = None
    """Git revision to pin."""
    streaming: bool = True
    """Stream instead of downloading the whole dataset first."""
    columns: ColumnMap = Field(default_factory=ColumnMap)
    """Column mapping."""


class LocalSource(_SourceBase):
    """A local JSON Lines, Parquet or CSV file of documents."""

    kind: Literal["local"] = "local"
    """Discriminator: ``local``."""
    path: str
    """File path (``pkg://`` for bundled data)."""
    format: Literal["auto", "jsonl", "parquet", "csv"] = "auto"
    """File format; ``auto`` goes by the extension."""
    columns: ColumnMap = Field(default_factory=ColumnMap)
    """Column mapping."""


SourceConfig = Annotated[
    ArxivSource | CmrSource | PdsSource | HfSource | LocalSource, Field(discriminator="kind")
]


class IngestConfig(StrictModel):
    """Document sources and the bounds every record must meet."""

    sources: list[SourceConfig] = Field(default_factory=list)
    """Document sources, each with a ``kind`` (arxiv, cmr, pds, hf, local)."""
    min_title_chars: PositiveInt = 3
    """Shorter titles are quarantined."""
    min_text_chars: PositiveInt = 20
    """Shorter texts are quarantined."""
    max_text_chars: PositiveInt = 200_000
    """Longer texts are quarantined (size bound)."""
    max_record_bytes: PositiveInt = 4 * 1024 * 1024
    """Raw records (lines, API items) larger than this are quarantined before they are parsed."""
    dedup_content: bool = True
    """Quarantine a record whose normalised title and text equal an earlier record's (reason ``duplicate_content``)."""
    identity_hash_max_bytes: PositiveInt = 512 * 1024 * 1024
    """Input files up to this size are identified by their sha256 for re-use; larger ones (multi-GB snapshots) by
    name, size and modification time, which is much cheaper and changes whenever the file is replaced."""
    batch_rows: PositiveInt = 20_000
    """Documents per Parquet row group (memory stays bounded by one batch while streaming)."""
    workers: NonNegInt | None = None
    """Processes that parse big arXiv snapshots in parallel (the output is identical); unset: one per idle CPU (at
    most 4; in-process when fewer than two are idle) for snapshots over ``parallel_min_bytes``; 0 or 1: in-process."""
    parallel_min_bytes: PositiveInt = 64 * 1024 * 1024
    """Snapshots smaller than this are parsed in-process (starting workers costs about a second)."""

    def source(self, name: str) -> SourceConfig:
        """The source called ``name``."""
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(f"no ingest source named {name!r}; have {[s.name for s in self.sources]}")
