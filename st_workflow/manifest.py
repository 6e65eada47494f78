"""Stage manifests: the small typed records that tasks pass to each other instead of data.

A manifest names the files a stage wrote (relative to the manifest's own directory), their sha256, row counts and
schema, plus the config hash, code version and cache key that produced them and the manifests it consumed. Its
``content_hash`` covers only content, so two runs that wrote identical outputs have identical manifests, and a
downstream cache key built from it is deterministic (unlike hashing a pickled DataFrame).

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "rows.jsonl").write_text('{"a": 1}\\n')
    >>> m = Manifest.build(stage="demo", directory=d, files={"rows": ("rows.jsonl", 1)}, config_hash="c",
    ...                    code_version="v", cache_key="k")
    >>> m.write().name
    'manifest.json'
    >>> Manifest.read(d).files["rows"].rows
    1
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from st_workflow import atomic
from st_workflow.hashing import combine_hashes, sha256_file, sha256_tree, stable_hash

MANIFEST_NAME = "manifest.json"


class StaleArtifactError(RuntimeError):
    """A manifest names a file that is missing or whose size changed since it was written."""


class FileEntry(BaseModel):
    """One output of a stage: a file or a directory tree."""

    model_config = ConfigDict(extra="forbid")

    path: str
    """Path relative to the manifest's directory (POSIX separators)."""
    sha256: str
    """sha256 of the file bytes (for a directory: of its sorted relative paths and file hashes)."""
    bytes: int
    """Size in bytes (for a directory: total of its files); checked cheaply on reuse."""
    rows: int | None = None
    """Row count for tabular files (Parquet, JSONL, TSV), when meaningful."""
    is_dir: bool = False
    """True when the entry is a directory tree (e.g. a saved model)."""


class UpstreamRef(BaseModel):
    """A pointer to a manifest this stage consumed, with the content hash it had at the time."""

    model_config = ConfigDict(extra="forbid")

    stage: str
    name: str
    path: str
    """Absolute path of the upstream manifest.json."""
    content_hash: str


class Manifest(BaseModel):
    """What one stage produced. Small, JSON-serialisable and content-addressed."""

    stage: str
    """Stage that wrote it (``ingest``, ``pairs``, ``train``...)."""
    name: str = ""
    """Sub-name inside the stage (a source name, a benchmark name); empty for whole-stage manifests."""
    directory: str = ""
    """Absolute directory of the manifest; file paths are relative to it. Not part of ``content_hash``."""
    files: dict[str, FileEntry] = Field(default_factory=dict)
    """Outputs keyed by role (``documents``, ``quarantine``, ``model``...)."""
    counts: dict[str, int] = Field(default_factory=dict)
    """Row counts and other tallies (kept, quarantined, duplicates, pairs...)."""
    schema_: dict[str, str] = Field(default_factory=dict, alias="schema")
    """Column name -> type of the main tabular output."""
    metrics: dict[str, Any] = Field(default_factory=dict)
    """Stage metrics (losses, IR metrics, costs) that reports pick up."""
    config_hash: str = ""
    """Hash of the config section that drove the stage."""
    code_version: str = ""
    """Package version plus a hash of the stage's source code."""
    cache_key: str = ""
    """Key under which the stage is reused: config hash + upstream content hashes + code version."""
    upstream: list[UpstreamRef] = Field(default_factory=list)
    """Manifests consumed, for lineage."""
    incomplete: dict[str, str] = Field(default_factory=dict)
    """What this output lacks and why, when the stage could not finish everything it was asked for (a benchmark
    skipped because the Hub was unreachable, a baseline that could not be loaded, documents whose LLM calls
    failed, a budget reached): item -> reason. Non-empty means :attr:`is_complete` is false."""
    created_at: str = Field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    """UTC time of writing (not hashed)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        *,
        stage: str,
        directory: str | Path,
        files: dict[str, tuple[str, int | None] | str],
        name: str = "",
        counts: dict[str, int] | None = None,
        schema: dict[str, str] | None = None,
        metrics: dict[str, Any] | None = None,
        config_hash: str = "",
        code_version: str = "",
        cache_key: str = "",
        upstream: list[Manifest] | None = None,
        incomplete: dict[str, str] | None = None,
    ) -> Manifest:
        """Hash the named outputs (paths relative to ``directory``) and assemble a manifest."""
        directory = Path(directory).resolve()
        entries: dict[str, FileEntry] = {}
        for role, spec in files.items():
            rel, rows = (spec, None) if isinstance(spec, str) else spec
            p = directory / rel
            if not p.exists():
                raise FileNotFoundError(f"manifest for stage {stage!r}: output {role!r} missing at {p}")
            if p.is_dir():
                size = sum(q.stat().st_size for q in p.rglob("*") if q.is_file())
                entries[role] = FileEntry(
                    path=Path(rel).as_posix(), sha256=sha256_tree(p), bytes=size, rows=rows, is_dir=True
                )
            else:
                entries[role] = FileEntry(
                    path=Path(rel).as_posix(), sha256=sha256_file(p), bytes=p.stat().st_size, rows=rows
                )
        return cls(
            stage=stage,
            name=name,
            directory=str(directory),
            files=entries,
            counts=counts or {},
            schema=schema or {},
            metrics=metrics or {},
            config_hash=config_hash,
            code_version=code_version,
            cache_key=cache_key,
            upstream=[m.ref() for m in upstream or []],
            incomplete=incomplete or {},
        )

    # ------------------------------------------------------------------ identity
    @property
    def is_complete(self) -> bool:
        """False for a partial output (:attr:`incomplete` non-empty, or ``metrics.complete`` false as the LLM
        stages and the hold-out write it).

        The one rule of every cache: an incomplete output is never reused, neither by a stage's own check
        (:func:`reusable`) nor by Prefect's (:class:`st_workflow.tasks.caching.ManifestCachePolicy`); the next run
        enters the stage again, and the stage's finer caches make that pay only for what is missing.
        """
        return not self.incomplete and self.metrics.get("complete") is not False

    @property
    def content_hash(self) -> str:
        """Hash of what the stage produced: file hashes, counts, schema and metrics (not paths or times)."""
        parts = [
            self.stage,
            self.name,
            stable_hash({k: v.sha256 for k, v in sorted(self.files.items())}),
            stable_hash(self.counts),
            stable_hash(self.schema_),
            stable_hash(self.metrics),
        ]
        if self.incomplete:  # only when set, so complete manifests keep the hashes they always had
            parts.append(stable_hash({"incomplete": sorted(self.incomplete)}))
        return combine_hashes(parts)

    def ref(self) -> UpstreamRef:
        """Lineage pointer to this manifest."""
        return UpstreamRef(
            stage=self.stage, name=self.name, path=str(self.manifest_path), content_hash=self.content_hash
        )

    # ------------------------------------------------------------------ paths
    @property
    def manifest_path(self) -> Path:
        return Path(self.directory) / MANIFEST_NAME

    def path(self, role: str) -> Path:
        """Absolute path of the output ``role``.

        Raises:
            KeyError: naming the role and the roles that exist.
        """
        try:
            entry = self.files[role]
        except KeyError:
            raise KeyError(
                f"stage {self.stage!r} manifest has no output {role!r}; it has {sorted(self.files)}"
            ) from None
        return Path(self.directory) / entry.path

    # ------------------------------------------------------------------ io
    def write(self, path: str | Path | None = None) -> Path:
        """Atomically write ``manifest.json`` (by default into ``directory``)."""
        target = Path(path) if path else self.manifest_path
        atomic.write_text(target, self.model_dump_json(indent=2, by_alias=True) + "\n")
        return target

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """Read a manifest from a file or from a directory holding ``manifest.json``.

        ``directory`` is re-based on where the file actually lives, so a moved run directory still resolves.
        """
        p = Path(path)
        if p.is_dir():
            p = p / MANIFEST_NAME
        m = cls.model_validate_json(p.read_text(encoding="utf-8"))
        m.directory = str(p.resolve().parent)
        return m

    def verify(self, deep: bool = False) -> None:
        """Check every output still exists with its recorded size (and hash when ``deep``).

        Raises:
            StaleArtifactError: naming the stage, role and path.
        """
        for role, entry in self.files.items():
            p = Path(self.directory) / entry.path
            if not p.exists():
                raise StaleArtifactError(f"stage {self.stage!r} output {role!r} is missing: {p}")
            if entry.is_dir:
                size = sum(q.stat().st_size for q in p.rglob("*") if q.is_file())
                digest = sha256_tree(p) if deep else entry.sha256
            else:
                size = p.stat().st_size
                digest = sha256_file(p) if deep else entry.sha256
            if size != entry.bytes or digest != entry.sha256:
                raise StaleArtifactError(
                    f"stage {self.stage!r} output {role!r} changed since it was written: {p}"
                )

    def is_valid(self, deep: bool = False) -> bool:
        """``verify`` as a boolean."""
        try:
            self.verify(deep=deep)
        except StaleArtifactError:
            return False
        return True


def reusable(directory: str | Path, cache_key: str) -> Manifest | None:
    """Return the manifest in ``directory`` if it was written under ``cache_key``, is complete
    (:attr:`Manifest.is_complete`) and its outputs are intact.

    This is the stage-level idempotence check: a stage calls it first and returns the old manifest on a hit.
    """
    p = Path(directory) / MANIFEST_NAME
    if not p.exists():
        return None
    try:
        m = Manifest.read(p)
    except (ValueError, OSError):
        return None
    if not cache_key or m.cache_key != cache_key or not m.is_complete or not m.is_valid():
        return None
    return m
