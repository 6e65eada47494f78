"""``st-workflow train CONFIG [--nproc-per-node N] [--pairs FILE] [--resume CKPT] [--set k=v]``.

Mines hard negatives (``mining.enabled``), pre-tokenizes (dropping rows of ``hf``/``local``/``beir`` sources that
leak into the hold-out or a local benchmark) if needed, then trains (one process, or torchrun with N processes)
without Prefect. The pairs come from the run directory (``<run dir>/pairs/manifest.json``, written by the
pipeline) or from ``--pairs``: any Parquet / JSONL / CSV file with ``anchor`` and ``positive`` columns (a
``schemas.PAIR_SCHEMA`` file included).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from st_workflow.cli.common import add_config_args, config_from_args

if TYPE_CHECKING:
    from st_workflow.config import PipelineConfig
    from st_workflow.manifest import Manifest


def pairs_from_file(path: Path, directory: Path) -> Manifest:
    """Normalise a pairs file into a ``pairs``-stage manifest (PAIR_SCHEMA Parquet) under ``directory``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from st_workflow import atomic
    from st_workflow.config.training import LocalPairs, PairColumns, TrainSource
    from st_workflow.manifest import Manifest
    from st_workflow.schemas import PAIR_SCHEMA, schema_dict
    from st_workflow.training.sources import SourceContext, open_source

    path = path.resolve()
    if not path.is_file():
        raise FileNotFoundError(f"--pairs: file not found: {path}")
    parquet = path.suffix.lower() in (".parquet", ".pq")
    names = pq.read_schema(path).names if parquet else _first_row_keys(path)
    if parquet and set(PAIR_SCHEMA.names) <= set(names):
        table = pq.read_table(path, columns=PAIR_SCHEMA.names).cast(PAIR_SCHEMA)
    else:
        columns = PairColumns(negative="negative" if "negative" in names else None)
        src = TrainSource(name="pairs-file", data=LocalPairs(path=str(path), columns=columns))
        reader = open_source(src, SourceContext())
        rows = []
        for batch in reader.batches():
            negatives = batch.get("negative")
            for i, (anchor, positive) in enumerate(zip(batch["anchor"], batch["positive"], strict=True)):
                rows.append(
                    {
                        "anchor": anchor,
                        "positive": positive,
                        "negative": negatives[i] if negatives else None,
                        "type": "external",
                        "source": path.stem,
                        "synthesized": False,
                        "doc_id": f"{path.stem}:{len(rows)}",
                        "model": None,
                        "prompt_version": None,
                    }
                )
        kept = [r for r in rows if isinstance(r["anchor"], str) and isinstance(r["positive"], str)]
        if len(kept) < len(rows):
            print(
                f"--pairs: skipped {len(rows) - len(kept)} row(s) without anchor or positive text",
                file=sys.stderr,
            )
        table = pa.Table.from_pylist(kept, schema=PAIR_SCHEMA)
    with atomic.atomic_path(directory / "pairs.parquet") as tmp:
        pq.write_table(table, tmp)
    m = Manifest.build(
        stage="pairs",
        name="file",
        directory=directory,
        files={"pairs": ("pairs.parquet", table.num_rows)},
        counts={"pairs": table.num_rows},
        schema=schema_dict(PAIR_SCHEMA),
        cache_key=str(path),
    )
    m.write()
    return m


def _first_row_keys(path: Path) -> list[str]:
    """Column names of a JSONL (first object) or CSV/TSV (header) file."""
    with open(path, encoding="utf-8") as fh:
        first = fh.readline()
    if path.suffix.lower() in (".jsonl", ".json"):
        import json

        return list(json.loads(first)) if first.strip() else []
    return [c.strip() for c in first.split("\t" if path.suffix.lower() == ".tsv" else ",")]


def _guard_targets(cfg: PipelineConfig) -> list[dict]:
    """The benchmarks training sources must not leak into (what the flows pass): the built hold-out, when this
    run directory has one, and every local benchmark."""
    from st_workflow.leakage import leakage_targets
    from st_workflow.manifest import MANIFEST_NAME, Manifest

    holdout_dir = cfg.stage_dir("benchmark") / cfg.pairs.holdout.name
    holdout = None
    if cfg.pairs.holdout.enabled and (holdout_dir / MANIFEST_NAME).is_file():
        holdout = Manifest.read(holdout_dir)
        holdout = holdout if holdout.is_valid() else None
    return [t.as_dict() for t in leakage_targets(cfg, holdout)]


def _train(args: argparse.Namespace) -> int:
    if args.nproc_per_node:
        args.overrides.append(f"training.launch.nproc_per_node={args.nproc_per_node}")
    if args.resume:
        args.overrides.append(f"training.checkpoints.resume_from={args.resume}")
    cfg = config_from_args(args)
    from st_workflow.manifest import Manifest
    from st_workflow.training import (
        TrainingCancelled,
        TrainingFailed,
        mine_stage,
        pretokenize_stage,
        train_stage,
    )

    needs_pipeline_pairs = any(s.enabled and s.data.kind == "pipeline" for s in cfg.training.sources)
    pairs = None
    if args.pairs:
        pairs = pairs_from_file(Path(args.pairs), cfg.stage_dir("pairs-file"))
        print(f"pairs: {pairs.counts['pairs']} rows from {args.pairs}", flush=True)
    elif needs_pipeline_pairs:
        manifest = cfg.stage_dir("pairs") / "manifest.json"
        if not manifest.is_file():
            print(
                f"st-workflow train: no pairs dataset at {manifest}.\n"
                f"Run the pipeline first (`st-workflow run {args.config}`, which ingests the sources and builds the "
                "pairs), or pass --pairs FILE.parquet (any file with anchor/positive columns).",
                file=sys.stderr,
            )
            return 2
        pairs = Manifest.read(manifest)
    mined = None
    if cfg.mining.enabled and (pairs is not None or cfg.mining.sources):
        print(f"mining hard negatives with {cfg.mining.model or cfg.training.base_model}", flush=True)
        mined = mine_stage(cfg, pairs)
        totals = {
            kind: sum(v for k, v in mined.counts.items() if k.split(":")[0] == kind)
            for kind in ("negatives_mined", "negatives_fallback")
        }
        print(
            f"negatives: {totals['negatives_mined']} mined, {totals['negatives_fallback']} random fallbacks",
            flush=True,
        )
    print(f"pre-tokenizing {len(cfg.training.sources)} source(s)", flush=True)
    pretok = pretokenize_stage(cfg, pairs, mined=mined, guard_targets=_guard_targets(cfg))
    print(
        f"training {cfg.training.base_model} with {cfg.training.launch.nproc_per_node} process(es)",
        flush=True,
    )
    try:
        m = train_stage(cfg, pairs, pretok, log_sink=lambda line: print(line, flush=True))
    except TrainingFailed as e:
        print(f"st-workflow train: {e}", file=sys.stderr)
        return 1
    except TrainingCancelled as e:
        print(f"st-workflow train: {e}", file=sys.stderr)
        return 130
    metrics = m.metrics
    print(f"model: {m.path('model')}")
    print(
        f"steps {metrics.get('global_step')}, final loss {metrics.get('final_loss')}, "
        f"{metrics.get('samples_per_second')} samples/s"
    )
    if metrics.get("wandb_sync"):
        print(f"W&B offline run; upload with: {metrics['wandb_sync']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="pre-tokenize and fine-tune (one process or torchrun), without Prefect")
    add_config_args(p)
    p.add_argument(
        "--nproc-per-node", type=int, default=None, metavar="N", help="processes (torchrun when N > 1)"
    )
    p.add_argument(
        "--pairs", default=None, metavar="FILE", help="train on this pairs file instead of the run's pairs"
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="CKPT",
        help="'latest', 'auto' or a checkpoint directory to resume from",
    )
    p.set_defaults(func=_train)
