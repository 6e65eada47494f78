"""The ``pairs`` stage: one training pairs dataset from the natural and the gated synthetic pairs.

It is the last line of defence before training: it re-checks the schema, removes exact duplicate
(anchor, positive) pairs across sources and drops any pair whose anchor or positive equals a text of any configured
benchmark (held-out in-domain benchmark and local benchmarks alike), counting each removal.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from st_workflow import atomic
from st_workflow.config import PipelineConfig
from st_workflow.hashing import code_version, sha256_file, stable_hash
from st_workflow.leakage import BenchmarkTexts
from st_workflow.log import get_logger
from st_workflow.manifest import Manifest, reusable
from st_workflow.schemas import PAIR_SCHEMA, normalize_for_match, schema_dict

STAGE = "pairs"


def _read_pairs(m: Manifest) -> pa.Table:
    table = pq.read_table(m.path("pairs"))
    missing = [f.name for f in PAIR_SCHEMA if f.name not in table.column_names]
    if missing:
        raise ValueError(f"pairs from stage {m.stage!r} ({m.path('pairs')}) lack columns {missing}")
    return table.select(PAIR_SCHEMA.names).cast(PAIR_SCHEMA)


def assemble_pairs(
    cfg: PipelineConfig, pair_manifests: list[Manifest], benchmark_dirs: list[Path]
) -> Manifest:
    """Concatenate, de-duplicate and leakage-check pair sets into ``<run>/pairs/pairs.parquet``."""
    out_dir = cfg.stage_dir(STAGE)
    manifests = [m for m in pair_manifests if m is not None]
    bench_ids = sorted(str(Path(d).resolve()) for d in benchmark_dirs)
    bench_hash = stable_hash(
        {d: sha256_file(Path(d) / "queries.jsonl") + sha256_file(Path(d) / "corpus.jsonl") for d in bench_ids}
    )
    key = stable_hash(
        {
            "stage": STAGE,
            "inputs": [m.content_hash for m in manifests],
            "benchmarks": bench_hash,
            "config": cfg.section_hash("pairs"),
            "code": code_version("pairset", "leakage"),
        }
    )
    if hit := reusable(out_dir, key):
        return hit

    log = get_logger()
    tables = [_read_pairs(m) for m in manifests]
    table = pa.concat_tables(tables) if tables else PAIR_SCHEMA.empty_table()
    n_in = table.num_rows

    # Exact duplicates across sources (normalised anchor + positive); keep the first occurrence.
    seen: set[tuple[str, str]] = set()
    keep_dup = []
    for a, p in zip(table.column("anchor").to_pylist(), table.column("positive").to_pylist(), strict=True):
        k = (normalize_for_match(a), normalize_for_match(p))
        keep_dup.append(k not in seen)
        seen.add(k)
    table = table.filter(pa.array(keep_dup))
    n_dupes = n_in - table.num_rows

    texts = BenchmarkTexts.from_dirs(bench_ids)
    leak_mask = [
        texts.leaks(a) or texts.leaks(p)
        for a, p in zip(table.column("anchor").to_pylist(), table.column("positive").to_pylist(), strict=True)
    ]
    n_leaked = sum(leak_mask)
    if n_leaked:
        log.warning(
            "pairs: dropped %d pairs whose text appears in a benchmark (%s)", n_leaked, ", ".join(bench_ids)
        )
    table = table.filter(pc.invert(pa.array(leak_mask, type=pa.bool_())))

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(out_dir / "pairs.parquet") as tmp:
        pq.write_table(table, tmp)
    counts: dict[str, int] = {
        "input": n_in,
        "pairs": table.num_rows,
        "dropped_duplicates": n_dupes,
        "dropped_leaked": n_leaked,
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
        code_version=code_version("pairset", "leakage"),
        cache_key=key,
        upstream=manifests,
    )
    m.write()
    log.info(
        "pairs: %d pairs (%d duplicates and %d leaked dropped of %d)", table.num_rows, n_dupes, n_leaked, n_in
    )
    return m
