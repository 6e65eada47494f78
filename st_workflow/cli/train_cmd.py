"""``st-workflow train CONFIG [--nproc-per-node N] [--pairs FILE] [--resume CKPT] [--set k=v]``.

Mines hard negatives (``mining.enabled``), pre-tokenizes (dropping rows of ``hf``/``local``/``beir`` sources that
leak into the hold-out or a local benchmark) if needed, then trains (one process, or torchrun with N processes)
without Prefect. The pairs come from the run directory (``<run dir>/pairs/manifest.json``) or from ``--pairs``:
any Parquet / JSONL / CSV file with ``anchor`` and ``positive`` columns (a ``schemas.PAIR_SCHEMA`` file included).

Like ``make``, the command builds what it needs upstream: when the run has no (intact) pairs dataset it first runs
the ``stage2-data`` flow (ingest -> hold-out benchmark -> natural pairs -> LLM stages -> pairs) on Prefect (the
ephemeral local API unless ``PREFECT_API_URL`` is set), whose cached tasks reuse every stage that is up to date,
and prints what each stage did. ``--no-build`` fails instead.
"""

from __future__ import annotations

import argparse
import os
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


def _existing_pairs(cfg: PipelineConfig) -> Manifest | None:
    """The run's pairs dataset when it is there and intact (outputs match the manifest)."""
    from st_workflow.manifest import MANIFEST_NAME, Manifest

    path = cfg.stage_dir("pairs") / MANIFEST_NAME
    if not path.is_file():
        return None
    m = Manifest.read(path)
    return m if m.is_valid() else None


def build_upstream(config: str, overrides: list[str], cfg: PipelineConfig) -> Manifest:
    """Run the ``stage2-data`` flow (its cached tasks reuse what is up to date) and return the pairs manifest,
    printing what each stage did."""
    where = os.environ.get("PREFECT_API_URL") or "Prefect's ephemeral local API"
    print(
        f"no pairs dataset at {cfg.stage_dir('pairs')}: building it with the stage2-data flow (ingest -> hold-out "
        f"benchmark -> natural pairs -> LLM stages -> pairs) on {where}, reusing what is up to date",
        flush=True,
    )
    ex = cfg.generation.execution
    if cfg.generation.endpoint.configured:
        from st_workflow.deployments import ensure_llm_concurrency_limit

        ensure_llm_concurrency_limit(ex.prefect_concurrency_limit, ex.concurrency)
    from st_workflow.flows.stage2_data import stage2_data_flow

    data = stage2_data_flow(config_path=config, overrides=list(overrides))
    for rec in data["stages"]:
        counts = ", ".join(f"{k} {v}" for k, v in list((rec.get("counts") or {}).items())[:4])
        note = rec.get("note") or ""
        detail = "; ".join(x for x in (counts, note) if x)
        print(f"  {rec['stage']}: {rec['status']}" + (f" ({detail})" if detail else ""), flush=True)
    return data["pairs"]


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
    if args.dtype:
        args.overrides.append(f"training.dtype={args.dtype}")
    if args.resume:
        args.overrides.append(f"training.checkpoints.resume_from={args.resume}")
    cfg = config_from_args(args)
    from st_workflow.locks import StageLocked
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
        pairs = _existing_pairs(cfg)
        if pairs is None and args.no_build:
            print(
                f"st-workflow train: no pairs dataset at {cfg.stage_dir('pairs')} and --no-build was given.\n"
                f"Build it with `st-workflow run --flow stage2-data {args.config}` (or drop --no-build), or pass "
                "--pairs FILE.parquet (any file with anchor/positive columns).",
                file=sys.stderr,
            )
            return 2
        if pairs is None:
            pairs = build_upstream(args.config, args.overrides, cfg)
        else:
            print(f"pairs: reusing {pairs.path('pairs')} ({pairs.counts.get('pairs', '?')} rows)", flush=True)
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
    except StageLocked as e:
        print(
            f"st-workflow train: {e}\nWait for it, or raise training.launch.lock_timeout_s "
            "(unset waits until it ends).",
            file=sys.stderr,
        )
        return 3
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
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default=None,
        help="autocast dtype (default: the config's; 'auto': bf16 where the CPU or GPU computes it natively)",
    )
    p.add_argument(
        "--pairs", default=None, metavar="FILE", help="train on this pairs file instead of the run's pairs"
    )
    p.add_argument(
        "--no-build",
        action="store_true",
        help="fail when the run has no pairs dataset instead of building it (the stage2-data flow)",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="CKPT",
        help="'latest', 'auto' or a checkpoint directory to resume from",
    )
    p.set_defaults(func=_train)
