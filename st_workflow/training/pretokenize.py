"""Pre-tokenization: every training source once into a memory-mapped Arrow cache shared by all ranks and runs.

Two cache levels under ``<cache_dir>/tokenized/``:

* ``text-<key>``: the source's cleaned text rows (``anchor``, ``positive``[, ``negative``]), keyed by the source's
  content fingerprint, its column mapping and ``max_rows``;
* ``<key>``: what training reads, keyed by that text key plus the tokenizer's content hash, ``max_seq_length``,
  the mode and the subsample. It holds ``data.arrow`` (token ids, unpadded, truncated exactly as the model's own
  ``preprocess`` truncates, or the texts when ``training.pretokenize`` is off), ``hashes.npy`` (one int64 per text,
  for duplicate-free batches without touching texts), ``lengths.npy`` (for length grouping) and ``info.json``.

The original keyed its cache by source name only, padded every row to 1024 tokens and tokenized with a different
tokenizer path than training; here a changed mapping, file, tokenizer or length is a different key, padding is
per batch, and tokenization is the model's own.

Entries are written with :func:`st_workflow.atomic.atomic_dir`, so concurrent builders and crashes never leave a
half-written entry, and they are built once in the calling process before the launch: every rank only memory-maps.

Two optional inputs change what a source's text entry holds (and so its key):

* ``mined`` (the ``mine`` stage's manifest): a source with role ``source:<name>`` there is read from that mined
  file (``anchor``, ``positive``, ``negative``) instead of its own rows; its fingerprint then covers the file's
  sha256, and ``max_rows`` (applied before mining) is not applied again. Role ``pairs`` there replaces the pipeline
  pairs for ``pipeline`` sources. A source with a ``negative`` column trains with it as a hard negative (MNRL).
  A separate argument rather than roles read off ``pairs_manifest``: the pipeline pairs and the mined sources are
  different things, and a run may mine a ``beir`` source with no pipeline pairs at all.
* ``guard_targets`` (the flows' :func:`st_workflow.flows.common.guarded_benchmarks`): every row of an ``hf``,
  ``local`` or ``beir`` source that leaks into one of those benchmarks (:class:`st_workflow.leakage.BenchmarkGuard`,
  with ``pairs.near_duplicates``' rule) is dropped and counted as ``dropped["leaked:<benchmark>"]``; a source left
  with no row fails with :class:`st_workflow.leakage.LeakageError`. ``pipeline`` sources are not checked again:
  the ``pairs`` stage (``st_workflow.pairset.assemble_pairs``) already dropped their leaking pairs by the same rule
  against the same benchmarks, and mining draws their negatives from those clean positives. A benchmark's qrels
  it does not evaluate (a ``train`` split) are training data, not answers (``LeakageTarget.qrels``).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from st_workflow import atomic, progress
from st_workflow.config import PipelineConfig
from st_workflow.config.training import TrainSource
from st_workflow.fingerprints import tokenizer_fingerprint
from st_workflow.hashing import code_version, sha256_file, stable_hash
from st_workflow.leakage import BenchmarkGuard, LeakageTarget, benchmarks_hash, check_all_not_dropped
from st_workflow.log import get_logger
from st_workflow.manifest import FileEntry, Manifest, reusable
from st_workflow.near_duplicates import NearDuplicateRule
from st_workflow.training.mining import mined_source_files
from st_workflow.training.sources import (
    MinedFile,
    SourceContext,
    SourceCounts,
    SourceReader,
    materialize,
    open_source,
)

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

FORMAT_VERSION = 2
STAGE = "pretokenize"
TITLE = "Pre-tokenizing"
DATA_FILE = "data.arrow"
SOURCES_FILE = "sources.json"
_TOKENIZE_BATCH = 1024


def text_hashes(texts: list[str]) -> np.ndarray:
    """Stable 64-bit hash per text (blake2b), as int64: equal texts get equal values in every process."""
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little", signed=True)
            for t in texts
        ],
        dtype=np.int64,
    )


def load_for_tokenizing(cfg: PipelineConfig) -> SentenceTransformer:
    """The base model on CPU with the configured max length (only its tokenizer is used)."""
    from st_workflow.models import load_model

    return load_model(
        cfg.training.base_model,
        device="cpu",
        cache_dir=cfg.cache_path,
        max_seq_length=cfg.training.max_seq_length,
    )


@dataclass
class BuiltSource:
    """One source's entry in the cache."""

    source: TrainSource
    directory: Path
    info: dict[str, Any]


def _read_info(d: Path) -> dict[str, Any] | None:
    p = d / "info.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@dataclass
class SourceGuard:
    """The leakage guard pre-tokenization applies to the ``hf``, ``local`` and ``beir`` training sources."""

    targets: list[LeakageTarget]
    """The guarded benchmarks (those whose ``leakage`` is not ``none``)."""
    rule: NearDuplicateRule
    """The near-duplicate rule (``pairs.near_duplicates``)."""
    key: str
    """Identity of the guard (benchmark contents and modes, the rule, the leakage code) for cache keys."""
    _built: BenchmarkGuard | None = field(default=None, repr=False, compare=False)

    @classmethod
    def build(cls, cfg: PipelineConfig, guard_targets: list[dict[str, Any]] | None) -> SourceGuard | None:
        """``None`` when nothing is to be guarded (no target, or every target's ``leakage`` is ``none``)."""
        targets = [LeakageTarget.coerce(t) for t in guard_targets or []]
        targets = [t for t in targets if t.mode != "none"]
        if not targets:
            return None
        rule = NearDuplicateRule.from_config(cfg.pairs.near_duplicates)
        key = stable_hash(
            {
                "benchmarks": benchmarks_hash(targets),
                "rule": {"threshold": rule.threshold, "ngram": rule.ngram},
                "code": code_version("leakage", "near_duplicates"),
            }
        )
        return cls(targets, rule, key)

    def applies(self, src: TrainSource) -> bool:
        """Whether this source's rows are checked (every kind but ``pipeline``, see the module docstring)."""
        return src.data.kind != "pipeline"

    def guard(self) -> BenchmarkGuard:
        """The benchmark indexes, built on first use (only when some entry is actually built)."""
        if self._built is None:
            self._built = BenchmarkGuard(self.targets, self.rule)
        return self._built


def leaked_counts(dropped: dict[str, int]) -> dict[str, int]:
    """Benchmark -> rows dropped as leaking into it, from a source's ``dropped`` counts.

    Example:
        >>> leaked_counts({"duplicate": 2, "leaked:scifact": 3})
        {'scifact': 3}
    """
    return {k.removeprefix("leaked:"): v for k, v in dropped.items() if k.startswith("leaked:")}


def _build_text_entry(
    src: TrainSource, reader: SourceReader, cache_root: Path, guard: SourceGuard | None = None
) -> tuple[Path, dict[str, Any]]:
    max_rows = None if reader.mined else src.max_rows
    guarded = guard is not None and guard.applies(src)
    key_parts: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "fp": reader.fingerprint,
        "columns": reader.columns,
        "max_rows": max_rows,
    }
    if guarded:
        assert guard is not None
        key_parts["guard"] = guard.key
    key = stable_hash(key_parts)
    target = cache_root / f"text-{key}"
    info = _read_info(target)
    if info is not None and (target / DATA_FILE).is_file():
        return target, info
    log = get_logger()
    with atomic.atomic_dir(target) as tmp:
        counts: SourceCounts = materialize(
            reader, tmp / DATA_FILE, max_rows=max_rows, guard=guard.guard() if guarded and guard else None
        )
        if counts.dropped:
            log.warning(
                "training source %r: dropped %s of %d rows (%s)",
                src.name,
                counts.dropped,
                counts.read,
                "; ".join(counts.examples),
            )
        info = {
            "key": key,
            "source": src.name,
            "fingerprint": reader.fingerprint,
            "columns": reader.columns,
            "read": counts.read,
            "kept": counts.kept,
            "dropped": counts.dropped,
            "dropped_examples": counts.examples,
            "details": reader.details,
            "mined": reader.mined,
            "guarded": [t.name for t in guard.targets] if guarded and guard else None,
        }
        atomic.write_json(tmp / "info.json", info)
    return target, info


def _allocate(sizes: list[int], cap: int | None) -> list[int]:
    """Split ``cap`` rows over sources in proportion to their sizes (largest remainder); no cap: all rows."""
    total = sum(sizes)
    if cap is None or total <= cap:
        return list(sizes)
    quotas = [s * cap / total for s in sizes]
    out = [math.floor(q) for q in quotas]
    for i in sorted(range(len(sizes)), key=lambda i: out[i] - quotas[i])[: cap - sum(out)]:
        out[i] += 1
    return [min(o, s) for o, s in zip(out, sizes, strict=True)]


def _tokenize(model: SentenceTransformer, texts: list[str]) -> list[list[int]]:
    feats = model.preprocess(texts)
    ids, mask = feats["input_ids"], feats["attention_mask"].bool()
    return [ids[i][mask[i]].tolist() for i in range(ids.shape[0])]


def _build_train_entry(
    src: TrainSource,
    text_dir: Path,
    text_info: dict[str, Any],
    cache_root: Path,
    *,
    pretokenize: bool,
    tok_fp: str | None,
    max_seq_length: int,
    keep: int,
    seed: int,
    model_loader: Any,
    bar: progress.StageProgress | None = None,
) -> BuiltSource:
    from datasets import Dataset

    n = int(text_info["kept"])
    key = stable_hash(
        {
            "v": FORMAT_VERSION,
            "text": text_info["key"],
            "mode": "tokens" if pretokenize else "text",
            "tokenizer": tok_fp if pretokenize else None,
            "max_seq_length": max_seq_length if pretokenize else None,
            "keep": keep if keep < n else None,
            "seed": seed if keep < n else None,
        }
    )
    target = cache_root / key
    info = _read_info(target)
    if info is not None and (target / DATA_FILE).is_file():
        if bar is not None:
            bar.advance(int(info["rows"]))
        return BuiltSource(src, target, info)
    texts = Dataset.from_file(str(text_dir / DATA_FILE))
    columns = list(text_info["columns"])
    rows = np.arange(n)
    if keep < n:
        rng = np.random.Generator(
            np.random.PCG64(np.random.SeedSequence([seed, int(text_info["key"][:8], 16)]))
        )
        rows = np.sort(rng.choice(n, size=keep, replace=False))
    model = model_loader() if pretokenize else None
    out_cols = [f"{c}_input_ids" for c in columns] if pretokenize else list(columns)
    id_type = pa.list_(pa.int32())
    schema = pa.schema(
        [pa.field(c, id_type if pretokenize else pa.string(), nullable=False) for c in out_cols]
        + [pa.field("row", pa.int64(), nullable=False)]
    )
    hashes = np.zeros((len(rows), len(columns)), dtype=np.int64)
    lengths = np.zeros(len(rows), dtype=np.int32)
    truncated = 0
    token_total = 0
    with atomic.atomic_dir(target) as tmp:
        with pa.OSFile(str(tmp / DATA_FILE), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for start in range(0, len(rows), _TOKENIZE_BATCH):
                sel = rows[start : start + _TOKENIZE_BATCH]
                chunk = (
                    texts.select(sel.tolist()) if keep < n else texts.select(range(start, start + len(sel)))
                )
                arrays = []
                for j, c in enumerate(columns):
                    col_texts = chunk[c]
                    hashes[start : start + len(sel), j] = text_hashes(col_texts)
                    if pretokenize:
                        ids = _tokenize(model, col_texts)
                        lens = np.fromiter((len(x) for x in ids), dtype=np.int32, count=len(ids))
                        truncated += int((lens >= max_seq_length).sum())
                        arrays.append(pa.array(ids, id_type))
                    else:
                        lens = np.fromiter((len(t) for t in col_texts), dtype=np.int32, count=len(col_texts))
                        arrays.append(pa.array(col_texts, pa.string()))
                    lengths[start : start + len(sel)] += lens
                    token_total += int(lens.sum())
                arrays.append(pa.array(np.arange(start, start + len(sel), dtype=np.int64)))
                writer.write_batch(pa.record_batch(arrays, schema))
                if bar is not None:
                    bar.advance(len(sel))
        np.save(tmp / "hashes.npy", hashes)
        np.save(tmp / "lengths.npy", lengths)
        info = {
            "key": key,
            "source": src.name,
            "mode": "tokens" if pretokenize else "text",
            "columns": columns,
            "rows": len(rows),
            "text_key": text_info["key"],
            "fingerprint": text_info["fingerprint"],
            "read": text_info["read"],
            "kept": text_info["kept"],
            "dropped": text_info["dropped"],
            "mined": bool(text_info.get("mined")),
            "guarded": text_info.get("guarded"),
            "subsampled_from": n if keep < n else None,
            "tokenizer": tok_fp if pretokenize else None,
            "max_seq_length": max_seq_length if pretokenize else None,
            "mean_length": round(token_total / max(1, len(rows) * len(columns)), 2),
            "truncated_texts": truncated if pretokenize else None,
            "pad_token_id": int(model.tokenizer.pad_token_id or 0) if pretokenize else None,
            "padding_side": getattr(model.tokenizer, "padding_side", "right") if pretokenize else None,
            "token_type_ids": ("token_type_ids" in getattr(model.tokenizer, "model_input_names", []))
            if pretokenize
            else None,
        }
        # The manifest points at data.arrow (never rewritten), so its size and hash stay valid for reuse checks.
        info["data_sha256"] = sha256_file(tmp / DATA_FILE)
        info["data_bytes"] = (tmp / DATA_FILE).stat().st_size
        atomic.write_json(tmp / "info.json", info)
    return BuiltSource(src, target, info)


def build_sources(
    cfg: PipelineConfig,
    pairs_path: Path | None,
    pairs_sha256: str | None = None,
    *,
    model_dir: str | None = None,
    mined: dict[str, MinedFile] | None = None,
    guard: SourceGuard | None = None,
    readers: dict[str, SourceReader] | None = None,
    bar: progress.StageProgress | None = None,
) -> list[BuiltSource]:
    """Build (or find) the cache entries of every enabled ``training.sources`` entry.

    ``mined``: source name -> its mined file (read instead of the source); ``guard``: the leakage guard of the
    non-pipeline sources (see the module docstring); ``readers``: sources already opened (with the same
    ``mined``), by name; ``bar``: advanced by the rows written (rows found in the cache count at once).

    Raises:
        LeakageError: the guard dropped every row of a source (naming it, the benchmarks, counts and option).
        ValueError: a source has no usable row.
    """
    from st_workflow.models import resolve_model

    t = cfg.training
    sources = [s for s in t.sources if s.enabled]
    if not sources:
        raise ValueError("training.sources: no enabled source")
    cache_root = cfg.cache_path / "tokenized"
    ctx = SourceContext(
        pipeline_pairs=pairs_path,
        pipeline_pairs_sha256=pairs_sha256,
        hf_cache_dir=cfg.cache_path / "hf-datasets",
        mined=dict(mined or {}),
    )
    opened = readers or {}
    texts = [
        _build_text_entry(s, opened.get(s.name) or open_source(s, ctx), cache_root, guard) for s in sources
    ]
    for s, (_, info) in zip(sources, texts, strict=True):
        check_all_not_dropped(
            int(info["kept"]),
            leaked_counts(info["dropped"]),
            guard.targets if guard is not None else [],
            f"pretokenize: training source {s.name!r}",
        )
        if info["kept"] == 0:
            raise ValueError(
                f"training source {s.name!r}: no usable rows (read {info['read']}, {info['dropped']})"
            )
    keeps = _allocate([int(i["kept"]) for _, i in texts], t.max_pairs)
    if bar is not None:
        bar.set_total(sum(min(k, int(i["kept"])) for k, (_, i) in zip(keeps, texts, strict=True)))
    model_dir = model_dir or resolve_model(t.base_model, cfg.cache_path)
    tok_fp = tokenizer_fingerprint(model_dir) if t.pretokenize else None
    model_cache: dict[str, Any] = {}

    def loader() -> Any:
        if "m" not in model_cache:
            model_cache["m"] = load_for_tokenizing(cfg)
        return model_cache["m"]

    return [
        _build_train_entry(
            s,
            d,
            info,
            cache_root,
            pretokenize=t.pretokenize,
            tok_fp=tok_fp,
            max_seq_length=t.max_seq_length,
            keep=k,
            seed=cfg.seed,
            model_loader=loader,
            bar=bar,
        )
        for s, (d, info), k in zip(sources, texts, keeps, strict=True)
    ]


def pretokenize_key(
    cfg: PipelineConfig,
    pairs_manifest: Manifest | None,
    mined: Manifest | None = None,
    guard: SourceGuard | None = None,
    fingerprints: dict[str, str] | None = None,
) -> str:
    """Cache key of the stage: the training options it reads, the pairs' and the mined files' content, the
    content fingerprints of the other sources (``fingerprints``: name -> reader fingerprint), the leakage guard
    (benchmark contents, modes, rule) and this code."""
    t = cfg.training
    return stable_hash(
        {
            "stage": STAGE,
            "seed": cfg.seed,
            "training": {
                "base_model": t.base_model,
                "max_seq_length": t.max_seq_length,
                "pretokenize": t.pretokenize,
                "max_pairs": t.max_pairs,
                "sources": [
                    s.model_dump(mode="json", include={"name", "data", "max_rows", "enabled"})
                    for s in t.sources
                ],
            },
            "pairs": pairs_manifest.content_hash if pairs_manifest is not None else None,
            "mined": mined.content_hash if mined is not None else None,
            "fingerprints": fingerprints or {},
            "guard": guard.key if guard is not None else None,
            "code": code_version("training"),
        }
    )


def pretokenize_stage(
    cfg: PipelineConfig,
    pairs_manifest: Manifest | None,
    *,
    mined: Manifest | None = None,
    guard_targets: list[dict[str, Any]] | None = None,
) -> Manifest:
    """Stage ``pretokenize``: build every training source's cache entry and describe them in a manifest.

    Roles ``source:<name>`` point at each cache entry's ``data.arrow`` (absolute paths; the entry directory holds
    ``hashes.npy``, ``lengths.npy`` and ``info.json`` beside it); role ``sources`` is ``sources.json`` in the stage
    directory, which the train stage reads; each record says whether the source's rows come from the ``mine``
    stage (``mined``) and which benchmarks it was checked against (``guarded``). Counts: ``rows``,
    ``rows:<source>``, ``dropped:<source>`` (all reasons) and ``leaked:<source>:<benchmark>``.

    Args:
        pairs_manifest: the ``pairs`` stage manifest; ``None`` when no source reads the pipeline pairs.
        mined: the ``mine`` stage manifest: its ``source:<name>`` files replace those sources' rows, its ``pairs``
            (when present) the pipeline pairs; ``None``: no mined negatives beyond what ``pairs_manifest`` holds.
        guard_targets: benchmarks (``LeakageTarget`` dicts, :func:`st_workflow.flows.common.guarded_benchmarks`)
            that ``hf``/``local``/``beir`` rows must not leak into; ``None``: no check.

    Raises:
        LeakageError: the guard dropped every row of a source.
    """
    out = cfg.stage_dir(STAGE)
    guard = SourceGuard.build(cfg, guard_targets)
    mined_files = mined_source_files(mined)
    # The pipeline pairs are covered by their manifests' content hashes; every other source is opened (its
    # fingerprint: file hashes, dataset fingerprint, mined file) so that changed data is never reused.
    ctx = SourceContext(hf_cache_dir=cfg.cache_path / "hf-datasets", mined=mined_files)
    readers = {
        s.name: open_source(s, ctx) for s in cfg.training.sources if s.enabled and s.data.kind != "pipeline"
    }
    fingerprints = {name: r.fingerprint for name, r in readers.items()}
    key = pretokenize_key(cfg, pairs_manifest, mined, guard, fingerprints)
    hit = reusable(out, key)
    if hit is not None:
        progress.reused(STAGE, TITLE)
        return hit
    pairs_path = pairs_sha = None
    pairs_from = mined if mined is not None and "pairs" in mined.files else pairs_manifest
    if pairs_from is not None:
        pairs_path = pairs_from.path("pairs")
        pairs_sha = pairs_from.files["pairs"].sha256
    with progress.stage(STAGE, TITLE, total=None, unit="rows") as bar:
        built = build_sources(
            cfg, pairs_path, pairs_sha, mined=mined_files, guard=guard, readers=readers, bar=bar
        )
    pipeline_mined = pairs_from is not None and pairs_from.stage == "mine"
    records = []
    files: dict[str, FileEntry] = {}
    counts: dict[str, int] = {}
    for b in built:
        s = b.source
        records.append(
            {
                "name": s.name,
                "directory": str(b.directory),
                "kind": s.data.kind,
                **{
                    k: b.info[k]
                    for k in ("mode", "columns", "rows", "read", "kept", "dropped", "mean_length")
                },
                "truncated_texts": b.info.get("truncated_texts"),
                "subsampled_from": b.info.get("subsampled_from"),
                "fingerprint": b.info["fingerprint"],
                "cache_key": b.info["key"],
                "mined": bool(b.info.get("mined")) or (s.data.kind == "pipeline" and pipeline_mined),
                "guarded": b.info.get("guarded"),
            }
        )
        files[f"source:{s.name}"] = FileEntry(
            path=str(b.directory / DATA_FILE),
            sha256=b.info["data_sha256"],
            bytes=b.info["data_bytes"],
            rows=b.info["rows"],
        )
        counts[f"rows:{s.name}"] = int(b.info["rows"])
        counts[f"dropped:{s.name}"] = int(sum(b.info["dropped"].values()))
        for bench, n in leaked_counts(b.info["dropped"]).items():
            counts[f"leaked:{s.name}:{bench}"] = int(n)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / SOURCES_FILE, {"sources": records})
    files["sources"] = FileEntry(
        path=SOURCES_FILE,
        sha256=sha256_file(out / SOURCES_FILE),
        bytes=(out / SOURCES_FILE).stat().st_size,
        rows=len(records),
    )
    counts["rows"] = sum(int(b.info["rows"]) for b in built)
    metrics: dict[str, Any] = {
        "mean_length": {b.source.name: b.info["mean_length"] for b in built},
        "mode": "tokens" if cfg.training.pretokenize else "text",
    }
    if mined is not None and "teacher" in mined.files:
        # The mining model's embeddings of these texts: the distillation term's targets when it is the teacher.
        metrics["teacher"] = {**mined.metrics.get("teacher", {}), "path": str(mined.path("teacher"))}
    if guard is not None:
        metrics["guarded"] = {
            "benchmarks": [{"name": t.name, "mode": t.mode, "qrels": list(t.qrels)} for t in guard.targets],
            "sources": [b.source.name for b in built if b.info.get("guarded")],
        }
    m = Manifest(
        stage=STAGE,
        directory=str(out),
        files=files,
        counts=counts,
        schema={c: "list<int32>" if cfg.training.pretokenize else "string" for c in ("anchor", "positive")},
        metrics=metrics,
        config_hash=cfg.section_hash("training"),
        code_version=code_version("training"),
        cache_key=key,
        upstream=[x.ref() for x in (pairs_manifest, mined) if x is not None],
    )
    m.write()
    return m


def read_sources(pretok_manifest: Manifest) -> list[dict[str, Any]]:
    """The per-source records written by :func:`pretokenize_stage`."""
    return json.loads(pretok_manifest.path("sources").read_text(encoding="utf-8"))["sources"]
