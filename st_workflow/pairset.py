"""The ``pairs`` stage: one training pairs dataset from the natural and the gated synthetic pairs.

It is the last line of defence before training: it re-checks the schema, removes exact duplicate
(anchor, positive) pairs across sources and drops every pair that leaks into a configured benchmark (the held-out
in-domain benchmark and local benchmarks alike) by :mod:`st_workflow.leakage`'s rule, counting each removal per
benchmark. When the rules leave no pair at all, the stage fails at once, naming each benchmark, its count and the
option that sets its strictness.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from st_workflow import atomic
from st_workflow.config import PipelineConfig
from st_workflow.hashing import code_version, stable_hash
from st_workflow.leakage import BenchmarkGuard, LeakageTarget, benchmarks_hash, check_all_not_dropped
from st_workflow.log import get_logger
from st_workflow.manifest import Manifest, reusable
from st_workflow.near_duplicates import NearDuplicateRule
from st_workflow.schemas import PAIR_SCHEMA, normalize_for_match, schema_dict

STAGE = "pairs"


def read_pairs(m: Manifest) -> pa.Table:
    """The ``pairs`` file of a pairs-producing stage's manifest, in :data:`PAIR_SCHEMA` (its columns, its order).

    Raises:
        ValueError: the file lacks a column (naming the stage, the file and the columns).
    """
    table = pq.read_table(m.path("pairs"))
    missing = [f.name for f in PAIR_SCHEMA if f.name not in table.column_names]
    if missing:
        raise ValueError(f"pairs from stage {m.stage!r} ({m.path('pairs')}) lack columns {missing}")
    return table.select(PAIR_SCHEMA.names).cast(PAIR_SCHEMA)


def assemble_pairs(
    cfg: PipelineConfig,
    pair_manifests: list[Manifest],
    benchmarks: list[LeakageTarget | dict[str, str] | str | Path],
) -> Manifest:
    """Concatenate, de-duplicate and leakage-check pair sets into ``<run>/pairs/pairs.parquet``.

    Args:
        benchmarks: the benchmarks to guard (:func:`st_workflow.leakage.leakage_targets`); a bare directory is
            guarded with the default ``answers`` rule.

    Raises:
        LeakageError: the leakage rules dropped every pair.
    """
    out_dir = cfg.stage_dir(STAGE)
    manifests = [m for m in pair_manifests if m is not None]
    targets = [LeakageTarget.coerce(b) for b in benchmarks]
    key = stable_hash(
        {
            "stage": STAGE,
            "inputs": [m.content_hash for m in manifests],
            "benchmarks": benchmarks_hash(targets),
            "config": cfg.section_hash("pairs"),
            "code": code_version("pairset", "leakage", "near_duplicates"),
        }
    )
    if hit := reusable(out_dir, key):
        return hit

    log = get_logger()
    tables = [read_pairs(m) for m in manifests]
    table = pa.concat_tables(tables) if tables else PAIR_SCHEMA.empty_table()
    n_in = table.num_rows

    # Exact duplicates across sources (normalised anchor + positive); keep the first occurrence.
    seen: set[tuple[str, str]] = set()
    keep_dup = []
    for a, p in zip(table.column("anchor").to_pylist(), table.column("positive").to_pylist(), strict=True):
        k = (normalize_for_match(a), normalize_for_match(p))
        keep_dup.append(k not in seen)
        seen.add(k)
    table = table.filter(pa.array(keep_dup, type=pa.bool_()))
    n_dupes = n_in - table.num_rows

    guard = BenchmarkGuard(targets, NearDuplicateRule.from_config(cfg.pairs.near_duplicates))
    leaked_by: dict[str, int] = {t.name: 0 for t in targets if t.mode != "none"}
    leak_mask = []
    for a, p, n in zip(
        table.column("anchor").to_pylist(),
        table.column("positive").to_pylist(),
        table.column("negative").to_pylist(),
        strict=True,
    ):
        leak = guard.check(a, p, n) if guard else None
        if leak is not None:
            leaked_by[leak.benchmark] += 1
        leak_mask.append(leak is not None)
    n_leaked = sum(leak_mask)
    if n_leaked:
        log.warning(
            "pairs: dropped %d pairs that leak into a benchmark (%s)",
            n_leaked,
            ", ".join(f"{k} {v}" for k, v in leaked_by.items() if v),
        )
    check_all_not_dropped(n_in - n_dupes - n_leaked, leaked_by, targets, "pairs")
    table = table.filter(pc.invert(pa.array(leak_mask, type=pa.bool_())))

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(out_dir / "pairs.parquet") as tmp:
        pq.write_table(table, tmp)
    counts: dict[str, int] = {
        "input": n_in,
        "pairs": table.num_rows,
        "dropped_duplicates": n_dupes,
        "dropped_leaked": n_leaked,
        **{f"dropped_leaked:{k}": v for k, v in leaked_by.items()},
    }
    for col in ("type", "source"):
        vc = pc.value_counts(table.column(col)).to_pylist() if table.num_rows else []
        for item in vc:
            counts[f"{col}:{item['values']}"] = item["counts"]
    counts["synthesized"] = int(pc.sum(table.column("synthesized")).as_py() or 0) if table.num_rows else 0
    m = Manifest.build(
        stage=STAGE,
        directory=out_dir,
        files={"pairs": ("pairs.parquet", table.num_rows)},
        counts=counts,
        schema=schema_dict(PAIR_SCHEMA),
        config_hash=cfg.section_hash("pairs"),
        code_version=code_version("pairset", "leakage", "near_duplicates"),
        metrics={"guarded": guard.describe()},
        cache_key=key,
        upstream=manifests,
    )
    m.write()
    log.info(
        "pairs: %d pairs (%d duplicates and %d leaked dropped of %d)", table.num_rows, n_dupes, n_leaked, n_in
    )
    return m
