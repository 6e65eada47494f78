"""Benchmark: training samples/s of our path vs a plain sentence-transformers script vs the original's padding.

Same model, same pairs, same batch size, max length, loss (MNRL), no-duplicate batches, optimizer and step count;
each variant runs in its own child process of this script (one process tree, run one after the other so they never
share the CPU):

* ``plain``: the sentence-transformers script a user would write (``Dataset`` of texts,
  ``BatchSamplers.NO_DUPLICATES``, the default collator that tokenizes every batch);
* ``ours-<dtype>[-nogroup]``: ``st_workflow.training.train_stage`` with the pre-tokenized Arrow cache (built
  before, timed apart), dynamic padding, length-grouped batches unless ``-nogroup`` (the real worker, launched as in
  the pipeline), under ``training.dtype`` ``fp32`` or ``auto`` (bf16 autocast on CPUs with native bf16 units), so
  each effect is measured apart; ``ours`` alone is ``ours-auto``;
* ``original``: the original workflow's approach, pre-tokenized and every sequence padded to ``max_seq_length``.

Samples/s is measured after the first optimizer step (steps 2..N x batch size / their wall time, from the same
callback in all three variants); the overall figure (all steps / wall time of ``trainer.train()``) is reported too.
Model loading and imports are excluded in all three. The data are the demo's natural pairs from the bundled records (arXiv title -> abstract, CMR title ->
abstract, PDS title -> description), shuffled with a fixed seed.

    python benchmarks/training_throughput.py                  # MiniLM, 640 pairs, batch 32, max length 128, all variants
    python benchmarks/training_throughput.py --steps 6 --model "tiny-bert:hidden=64,layers=2" --out /tmp/t.json

Goals: ``ours-auto`` >= 1.8x plain (issue 13; plain sentence-transformers trains in fp32 unless told otherwise);
``ours-fp32`` >= 1.2x plain (issue 5); the ratio of every variant to ``plain`` and ``original`` is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import machine, write_report

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "st_workflow" / "data" / "samples"


def demo_pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Natural pairs from the bundled real records, the demo's mix, shuffled with ``seed``."""
    from st_workflow.schemas import normalize_whitespace

    rows: list[dict[str, str]] = []

    def add(title: object, text: object) -> None:
        if isinstance(title, str) and isinstance(text, str) and title.strip() and text.strip():
            rows.append({"anchor": normalize_whitespace(title), "positive": normalize_whitespace(text)})

    for name in (
        "arxiv-metadata-oai-snapshot.head60.jsonl",
        "arxiv-browse.abs_converted.physics_astro.519.jsonl",
    ):
        for line in (SAMPLES / "arxiv" / name).read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            add(r.get("title"), r.get("abstract"))
    cmr = SAMPLES / "cmr" / "collections.umm_json.nasa-cmr-inventory.dedup1433.trimmed.jsonl"
    for line in cmr.read_text(encoding="utf-8").splitlines():
        umm = json.loads(line).get("umm", {})
        add(umm.get("EntryTitle"), umm.get("Abstract"))
    pds = SAMPLES / "pds" / "context-pds4.product_context.1651.extracted.jsonl"
    for line in pds.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        add(r.get("title"), r.get("description"))
    seen: set[tuple[str, str]] = set()
    unique = [
        r
        for r in rows
        if (r["anchor"], r["positive"]) not in seen and not seen.add((r["anchor"], r["positive"]))
    ]
    random.Random(seed).shuffle(unique)
    return unique[:n]


# ---------------------------------------------------------------------------------------------- child variants
def _child_plain_or_original(args: argparse.Namespace) -> dict:
    """The plain sentence-transformers script (``plain``) or the original's max-length padding (``original``)."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    from st_workflow.models import resolve_model
    from st_workflow.training.collator import PreTokenizedCollator

    pairs = json.loads(Path(args.pairs).read_text(encoding="utf-8"))
    torch.manual_seed(0)
    model = SentenceTransformer(resolve_model(args.model, args.cache), device="cpu")
    model.max_seq_length = args.max_len
    collator = None
    if args.variant == "plain":
        ds = Dataset.from_list(pairs)
    else:
        rows = []
        for r in pairs:
            rows.append(
                {
                    f"{c}_input_ids": model.preprocess([r[c]])["input_ids"][0].tolist()
                    for c in ("anchor", "positive")
                }
            )
        ds = Dataset.from_list(rows)
        collator = PreTokenizedCollator(
            pad_token_id=int(model.tokenizer.pad_token_id or 0), pad_to_multiple_of=args.max_len
        )
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(Path(args.workdir) / f"out-{args.variant}"),
        per_device_train_batch_size=args.batch,
        learning_rate=2e-5,
        warmup_steps=0.1,
        max_steps=args.steps,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="no",
        report_to="none",
        logging_steps=max(1, args.steps // 4),
        use_cpu=True,
        seed=42,
        disable_tqdm=True,
        remove_unused_columns=args.variant == "plain",
    )
    from st_workflow.training.trainer import ProgressCallback

    timer = ProgressCallback(args.batch, printer=lambda line: None)
    trainer = SentenceTransformerTrainer(
        model=model,
        args=targs,
        train_dataset=ds,
        loss=MultipleNegativesRankingLoss(model),
        data_collator=collator,
        callbacks=[timer],
    )
    t0 = time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - t0
    return {
        "steps": trainer.state.global_step,
        "train_seconds": wall,
        "train_loss": out.training_loss,
        "steady_samples_per_second": timer.steady_samples_per_second(),
    }


def write_pairs_stage(pairs: list[dict[str, str]], directory: Path, source: str):
    """Write ``pairs`` (anchor/positive) as a ``pairs`` stage (parquet + manifest) the train stage reads."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from st_workflow.manifest import Manifest
    from st_workflow.schemas import PAIR_SCHEMA

    directory.mkdir(parents=True, exist_ok=True)
    rows = [
        {**r, "negative": None, "type": "title-description", "source": source, "synthesized": False,
         "doc_id": str(i), "model": None, "prompt_version": None}
        for i, r in enumerate(pairs)
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA), directory / "pairs.parquet")
    pm = Manifest.build(stage="pairs", directory=directory, files={"pairs": ("pairs.parquet", len(rows))})
    pm.write()
    return pm


def _child_ours(args: argparse.Namespace) -> dict:
    """Our path: the pre-tokenize stage (timed apart), then the train stage's real worker process."""

    from st_workflow.config import load_config
    from st_workflow.training import pretokenize_stage, train_stage

    pairs = json.loads(Path(args.pairs).read_text(encoding="utf-8"))
    pm = write_pairs_stage(pairs, Path(args.workdir) / "pairs", source="bench")
    cfg = load_config(
        None,
        [
            "run_name=bench",
            f"runs_dir={Path(args.workdir) / 'runs'}",
            f"cache_dir={args.cache}",
            f"training.base_model={args.model}",
            f"training.max_seq_length={args.max_len}",
            f"training.batch_size={args.batch}",
            "training.learning_rate=2e-5",
            f"training.max_steps={args.steps}",
            f"training.logging_steps={max(1, args.steps // 4)}",
            "training.sampler.strategy=proportional",
            f"training.sampler.group_by_length={'false' if args.variant.endswith('-nogroup') else 'true'}",
            f"training.dtype={'float32' if '-fp32' in args.variant else 'auto'}",
            "training.checkpoints.resume_from=null",
            "wandb.mode=disabled",
        ],
    )
    t0 = time.perf_counter()
    pretok = pretokenize_stage(cfg, pm)
    pretok_seconds = time.perf_counter() - t0
    m = train_stage(cfg, pm, pretok, log_sink=lambda line: None)
    return {
        "steps": m.metrics["global_step"],
        "train_seconds": m.metrics["train_seconds"],
        "train_loss": m.metrics["train_loss"],
        "steady_samples_per_second": m.metrics["steady_samples_per_second"],
        "pretokenize_seconds": round(pretok_seconds, 2),
        "precision": m.metrics.get("precision"),
    }


def _run_child(variant: str, common: list[str]) -> dict:
    out = Path(tempfile.mkstemp(suffix=f"-{variant}.json")[1])
    cmd = [sys.executable, __file__, "--child", variant, "--child-out", str(out), *common]
    env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1), "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(cmd, check=True, env=env)
    return json.loads(out.read_text(encoding="utf-8"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    p.add_argument("--pairs-count", type=int, default=640)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument(
        "--variants", default="plain,ours-fp32-nogroup,ours-fp32,ours-auto-nogroup,ours-auto,original"
    )
    p.add_argument(
        "--repeats", type=int, default=2, help="interleaved repetitions; the best of each is reported"
    )
    p.add_argument("--cache", default=str(REPO / ".cache" / "st-workflow"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "training_throughput.json"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--pairs", default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.path.insert(0, str(REPO))
    if args.child:
        args.variant = args.child
        res = _child_ours(args) if args.child.startswith("ours") else _child_plain_or_original(args)
        Path(args.child_out).write_text(json.dumps(res), encoding="utf-8")
        return

    work = Path(tempfile.mkdtemp(prefix="stw-bench-"))
    pairs = demo_pairs(args.pairs_count)
    pairs_file = work / "pairs.json"
    pairs_file.write_text(json.dumps(pairs), encoding="utf-8")
    common = [
        "--model", args.model, "--batch", str(args.batch), "--max-len", str(args.max_len), "--steps",
        str(args.steps), "--cache", args.cache, "--pairs", str(pairs_file),
    ]  # fmt: skip
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {v: [] for v in args.variants.split(",")}
    for rep in range(args.repeats):
        for variant in runs:  # interleaved, so a burst of load on the shared machine hits every variant alike
            print(f"== {variant} (run {rep + 1}/{args.repeats})", flush=True)
            workdir = work / f"{variant}-{rep}"  # a fresh run directory, so no stage is ever reused
            r = _run_child(variant, [*common, "--workdir", str(workdir)])
            r["samples_per_second"] = round(r["steps"] * args.batch / r["train_seconds"], 3)
            r["steady_samples_per_second"] = round(r["steady_samples_per_second"], 3)
            runs[variant].append(r)
            print(
                f"   {r['steady_samples_per_second']:.2f} samples/s after the first step, "
                f"{r['samples_per_second']:.2f} overall ({r['steps']} steps in {r['train_seconds']:.1f} s)",
                flush=True,
            )
    # Best of the repeats: on a shared machine, other processes only ever slow a run down.
    results = {
        v: max(rs, key=lambda r: r["steady_samples_per_second"]) | {"runs": rs} for v, rs in runs.items()
    }
    summary = {
        "benchmark": "training_throughput",
        "model": args.model,
        "pairs": len(pairs),
        "batch_size": args.batch,
        "max_seq_length": args.max_len,
        "steps": args.steps,
        "repeats": args.repeats,
        "machine": machine(
            loadavg_before=[round(x, 2) for x in load_before],
            loadavg_after=[round(x, 2) for x in os.getloadavg()],
        ),
        "results": results,
    }
    for ours in [v for v in results if v.startswith("ours")]:
        for other in ("plain", "original"):
            if other in results:
                summary[f"ratio_{ours}_vs_{other}"] = round(
                    results[ours]["steady_samples_per_second"] / results[other]["steady_samples_per_second"],
                    3,
                )
                summary[f"ratio_{ours}_vs_{other}_overall"] = round(
                    results[ours]["samples_per_second"] / results[other]["samples_per_second"], 3
                )
    write_report(args.out, summary)
    print(json.dumps({k: v for k, v in summary.items() if k.startswith("ratio")}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
