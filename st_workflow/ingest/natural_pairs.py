"""Natural pairs: arXiv title -> abstract, CMR/PDS title -> structured description, minus the held-out benchmark.

Held-out documents (whole near-duplicate families) are excluded by id, and any pair that leaks into the hold-out
benchmark by :mod:`st_workflow.leakage`'s rule (a query, or a document judged relevant to one; near-duplicates
included) is dropped too. Then the written file is CHECKED: it is read back and every pair is compared against the
benchmark files on disk and the held-out ids; a violation raises :class:`LeakageError` naming the pair, and nothing
is committed. A rule that leaves no pair at all fails the stage, naming the benchmark, the count and the option.

Output ``<run>/pairs-natural/pairs.parquet`` has exactly :data:`st_workflow.schemas.PAIR_SCHEMA` (``synthesized``
false, ``doc_id`` the document id, ``source`` the ingest source name). Counts: ``pairs``, ``type:<type>``,
``source:<source>``, ``dropped:<reason>`` (``heldout``, ``leaked``, ``short_anchor``, ``short_positive``,
``duplicate``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from st_workflow import atomic
from st_workflow.config.root import PipelineConfig
from st_workflow.hashing import code_version, combine_hashes, sha256_text, stable_hash
from st_workflow.ingest.documents import collapse
from st_workflow.ingest.holdout import (
    eligible,
    near_duplicate_rule,
    read_heldout,
    selected_manifests,
    source_kind,
)
from st_workflow.ingest.logs import logger as get_logger
from st_workflow.ingest.structured import natural_pair
from st_workflow.leakage import (
    BenchmarkGuard,
    LeakageError,
    LeakageTarget,
    check_all_not_dropped,
    leakage_targets,
)
from st_workflow.manifest import MANIFEST_NAME, Manifest, reusable
from st_workflow.schemas import PAIR_SCHEMA, normalize_for_match, schema_dict

STAGE = "pairs-natural"
PAIRS = "pairs.parquet"
_BATCH = 20_000


__all__ = ["LeakageError", "build_natural_pairs", "check_no_leakage"]


def _holdout_target(cfg: PipelineConfig, holdout: Manifest | None) -> LeakageTarget | None:
    if holdout is None:
        return None
    return next(t for t in leakage_targets(cfg, holdout) if t.directory == holdout.directory)


def build_natural_pairs(
    cfg: PipelineConfig, doc_manifests: list[Manifest], holdout: Manifest | None
) -> Manifest:
    """Build ``<run>/pairs-natural/pairs.parquet`` from the ingested documents, excluding the hold-out.

    Raises:
        LeakageError: when the written pairs contain a held-out query or corpus text, or a held-out document.
    """
    pc = cfg.pairs
    manifests = selected_manifests(cfg, doc_manifests)
    out_dir = cfg.stage_dir(STAGE)
    target = _holdout_target(cfg, holdout)
    config_hash = stable_hash(
        {
            "natural": pc.natural.model_dump(mode="json"),
            "min_anchor_chars": pc.min_anchor_chars,
            "min_positive_chars": pc.min_positive_chars,
            "near_duplicates": pc.near_duplicates.model_dump(mode="json"),
            "leakage": target.mode if target else None,
        }
    )
    # The check reads through leakage.py and near_duplicates.py.
    code = code_version("ingest", "leakage", "near_duplicates", "beir", "schemas")
    key = combine_hashes(
        [
            STAGE,
            config_hash,
            holdout.content_hash if holdout else "no-holdout",
            *(m.content_hash for m in manifests),
            code,
        ]
    )
    if (hit := reusable(out_dir, key)) is not None:
        get_logger().info(
            "natural pairs: documents, hold-out and config unchanged, re-using %s", hit.manifest_path
        )
        return hit

    log = get_logger()
    heldout_ids = {(r["source"], r["id"]) for r in read_heldout(holdout)} if holdout else set()
    guard = BenchmarkGuard([target] if target else [], near_duplicate_rule(cfg))
    counts: Counter[str] = Counter()
    with atomic.atomic_dir(out_dir) as tmp:
        writer = pq.ParquetWriter(tmp / PAIRS, PAIR_SCHEMA, compression="zstd")
        try:
            cols: dict[str, list] = {name: [] for name in PAIR_SCHEMA.names}
            seen: set[bytes] = set()
            for m in manifests if pc.natural.enabled else []:
                kind = source_kind(m, cfg)
                for batch in pq.ParquetFile(m.path("documents")).iter_batches(batch_size=_BATCH):
                    for row in batch.to_pylist():
                        reason = _add(cols, row, m.name, kind, cfg, heldout_ids, guard, seen)
                        counts[f"dropped:{reason}" if reason else "pairs"] += 1
                        if len(cols["anchor"]) >= _BATCH:
                            writer.write_table(pa.Table.from_pydict(cols, schema=PAIR_SCHEMA))
                            for v in cols.values():
                                v.clear()
            writer.write_table(pa.Table.from_pydict(cols, schema=PAIR_SCHEMA))
        finally:
            writer.close()
        counts.setdefault("pairs", 0)
        if target is not None:
            check_all_not_dropped(
                counts["pairs"], {target.name: counts["dropped:leaked"]}, [target], "natural pairs"
            )
        per = check_no_leakage(tmp / PAIRS, holdout, guard)
        counts.update(per)
        m = Manifest.build(
            stage=STAGE,
            directory=tmp,
            files={"pairs": (PAIRS, counts["pairs"])},
            counts=dict(sorted(counts.items())),
            schema=schema_dict(PAIR_SCHEMA),
            metrics={"leakage_checked": holdout is not None, "sources": [m.name for m in manifests]},
            config_hash=config_hash,
            code_version=code,
            cache_key=key,
            upstream=[*manifests, *([holdout] if holdout else [])],
        )
        m.directory = str(out_dir)
        m.write(tmp / MANIFEST_NAME)
    dropped = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("dropped:")}
    log.info(
        "natural pairs: %d pairs (%s); dropped %s -> %s",
        counts["pairs"],
        ", ".join(f"{k} {v}" for k, v in counts.items() if k.startswith("type:")),
        dropped or "none",
        out_dir,
    )
    return m


def _add(
    cols: dict[str, list],
    row: dict,
    source: str,
    kind: str,
    cfg: PipelineConfig,
    heldout_ids: set[tuple[str, str]],
    guard: BenchmarkGuard,
    seen: set[bytes],
) -> str | None:
    """Append the natural pair of one document, or return why it was dropped."""
    if (source, row["id"]) in heldout_ids:
        return "heldout"
    ptype, anchor, positive = natural_pair(row, kind, cfg.pairs.natural)
    if reason := eligible(cfg, anchor, positive):
        return reason
    if guard and guard.check(anchor, positive) is not None:
        return "leaked"
    if cfg.pairs.natural.dedup:
        key = bytes.fromhex(
            sha256_text(normalize_for_match(anchor) + "\n" + normalize_for_match(positive))[:32]
        )
        if key in seen:
            return "duplicate"
        seen.add(key)
    cols["anchor"].append(collapse(anchor))
    cols["positive"].append(positive)
    cols["negative"].append(None)
    cols["type"].append(ptype)
    cols["source"].append(source)
    cols["synthesized"].append(False)
    cols["doc_id"].append(row["id"])
    cols["model"].append(None)
    cols["prompt_version"].append(None)
    return None


def check_no_leakage(
    pairs_path: str | Path, holdout: Manifest | None, guard: BenchmarkGuard | None = None
) -> Counter[str]:
    """Read a pairs file back and prove it holds no held-out document and no leak; returns counts by type and source.

    Every pair is checked with ``guard`` (:class:`st_workflow.leakage.BenchmarkGuard` over the benchmark as written
    on disk) and every ``(source, doc_id)`` against ``heldout.jsonl``.

    Raises:
        LeakageError: naming the first offending pair (row number, doc_id, source, which field, the text).
    """
    counts: Counter[str] = Counter()
    heldout_ids = {(r["source"], r["id"]) for r in read_heldout(holdout)} if holdout else set()
    if holdout is not None and guard is None:
        guard = BenchmarkGuard([holdout.directory])
    n = 0
    for batch in pq.ParquetFile(pairs_path).iter_batches(batch_size=_BATCH):
        for row in batch.to_pylist():
            n += 1
            counts[f"type:{row['type']}"] += 1
            counts[f"source:{row['source']}"] += 1
            if holdout is None:
                continue
            where = f"pair {n} (doc_id={row['doc_id']!r}, source={row['source']!r})"
            if (row["source"], row["doc_id"]) in heldout_ids:
                raise LeakageError(f"{where} comes from a held-out document of benchmark {holdout.name!r}")
            if guard and (leak := guard.check(row["anchor"], row["positive"], row["negative"])) is not None:
                raise LeakageError(f"{where}: " + leak.describe(row[leak.field]) + f" ({holdout.directory})")
    return counts
