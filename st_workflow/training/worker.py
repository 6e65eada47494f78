"""The training process: ``python -m st_workflow.training.worker --job-file FILE``, alone or under torchrun.

``torchrun --nproc_per_node=N -m st_workflow.training.worker --job-file FILE`` starts N of these; each memory-maps
the pre-tokenized sources, builds the model in fp32 (master weights stay fp32; bf16/fp16 is autocast on GPU only),
and trains with :class:`~st_workflow.training.trainer.PipelineTrainer`. Rank 0 alone talks to W&B, saves the final
model (with ``lineage.json`` and the model card) atomically and writes ``result.json``.

The job file (:class:`TrainJob`, written by :func:`st_workflow.training.stage.train_stage`) carries the resolved
config and paths, so the worker needs no flags torchrun could mistake for its own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from st_workflow.training._pdeathsig import set_pdeathsig


class SourceSpec(BaseModel):
    """One training source as the worker sees it."""

    name: str
    directory: str
    mode: str
    columns: list[str]
    rows: int
    kind: str = ""
    weight: float = 1.0
    replay: bool = False
    loss: dict[str, Any] = Field(default_factory=dict)
    dropped: dict[str, int] = Field(default_factory=dict)


class TrainJob(BaseModel):
    """Everything one training launch needs (JSON, no secrets)."""

    config: dict[str, Any]
    sources: list[SourceSpec]
    model_path: str
    train_dir: str
    checkpoints_dir: str
    model_dir: str
    result_file: str
    trace_dir: str | None = None
    resume_from: str | None = None
    cache_key: str = ""
    wandb_mode: str = "disabled"
    wandb_run_id: str = ""
    wandb_dir: str = ""
    lineage: list[dict[str, Any]] = Field(default_factory=list)
    eval_benchmarks: dict[str, str] = Field(default_factory=dict)
    teacher_store: str | None = None
    """Directory of precomputed teacher embeddings (mining stage) for the distillation term, when compatible."""


def _dist_env() -> tuple[int, int, int]:
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def finished_checkpoint(checkpoint: str | None) -> bool:
    """Whether ``checkpoint`` was written at its run's last optimizer step (its ``trainer_state.json`` says so).

    Example:
        >>> finished_checkpoint(None)
        False
    """
    if not checkpoint:
        return False
    try:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    max_steps = state.get("max_steps") or 0
    return max_steps > 0 and int(state.get("global_step") or 0) >= int(max_steps)


def resolve_precision(choice: str, use_cuda: bool) -> str:
    """What ``training.dtype`` means on this device: ``fp32``, ``bf16`` or ``fp16`` autocast.

    ``auto`` is bf16 on GPUs that support it (else fp16) and on CPUs with native bf16 units (``avx512_bf16``,
    ``amx_bf16``: about 2x the fp32 step rate there), fp32 on other CPUs. fp16 on a CPU falls back to fp32.

    Example:
        >>> resolve_precision("float32", use_cuda=False)
        'fp32'
    """
    import torch

    choice = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(choice, choice)
    from st_workflow.models.dtype import cpu_has_fast_bf16

    if use_cuda:
        if choice == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return choice
    if choice == "auto":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32" if choice == "fp16" else choice


def teacher_targets(store: str | None, indexes: list[Any]) -> dict[str, Any] | None:
    """Per source a ``(rows, columns, dim)`` fp16 array of the teacher's embeddings, looked up by text hash in the
    mining stage's store; None when there is no store or it misses a text (the teacher then runs online)."""
    if not store:
        return None
    import numpy as np

    from st_workflow.training.mining import load_teacher_store

    hashes, emb = load_teacher_store(store)
    out: dict[str, Any] = {}
    for idx in indexes:
        h = np.asarray(idx.hashes)
        pos = np.searchsorted(hashes, h)
        pos = np.minimum(pos, len(hashes) - 1)
        if not len(hashes) or not np.array_equal(hashes[pos], h):
            return None
        out[idx.name] = emb[pos]
    return out


def format_eta(seconds: float) -> str:
    """A short duration for a progress description.

    Example:
        >>> format_eta(42), format_eta(185), format_eta(3725)
        ('42s', '3m05s', '1h02m')
    """
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def stage_progress_callback(samples_per_step: int) -> Any:
    """A callback that reports optimizer steps done/total, samples/s and the ETA as the ``training`` stage.

    Rank 0 adds it; the snapshots go out as marked stdout lines (:class:`~st_workflow.progress_pipe.LineSink`) at
    the rate :class:`~st_workflow.progress.StageProgress` allows, and the launcher in the parent turns them into
    the Prefect progress artifact and the terminal bar.
    """
    from transformers import TrainerCallback

    from st_workflow import progress
    from st_workflow.progress_pipe import LineSink

    class StageProgressCallback(TrainerCallback):
        def __init__(self) -> None:
            self.bar: progress.StageProgress | None = None
            self.t0 = 0.0
            self.step0 = 0

        def _detail(self, state: Any) -> str:
            dt = time.perf_counter() - self.t0
            steps = state.global_step - self.step0
            if dt <= 0 or steps <= 0:
                return "starting"
            rate = steps / dt
            left = max(0, state.max_steps - state.global_step)
            return f"{rate * samples_per_step:.1f} samples/s, ETA {format_eta(left / rate)}"

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not state.is_world_process_zero:
                return
            self.t0, self.step0 = time.perf_counter(), state.global_step
            with progress.sinks(LineSink(keys={"training"})):
                self.bar = progress.StageProgress("training", "Training", total=state.max_steps, unit="steps")
            self.bar.update(state.global_step, detail="starting")

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.bar is not None:
                self.bar.update(state.global_step, detail=self._detail(state))

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.bar is not None:
                self.bar.update(state.global_step, detail=self._detail(state).split(", ETA")[0])
                self.bar.done()
                self.bar = None

    return StageProgressCallback()


def _evaluators(job: TrainJob, cfg: Any) -> list[Any]:
    """In-training retrieval evaluators (``training.evaluation``), built on ``st_workflow.evaluation``."""
    ev = cfg.training.evaluation
    if not ev.steps or not job.eval_benchmarks:
        return []
    from st_workflow.evaluation import BenchmarkIREvaluator, load_local

    names = ev.benchmarks or sorted(job.eval_benchmarks)
    missing = [n for n in names if n not in job.eval_benchmarks]
    if missing:
        raise ValueError(
            f"training.evaluation.benchmarks: {missing} not handed to the train stage; have {sorted(job.eval_benchmarks)}"
        )

    def split_of(d: str) -> str:
        return ev.split if (Path(d) / "qrels" / f"{ev.split}.tsv").is_file() else "test"

    return [
        BenchmarkIREvaluator(
            load_local(
                job.eval_benchmarks[n],
                name=n,
                split=split_of(job.eval_benchmarks[n]),
                max_queries=ev.max_queries,
                seed=cfg.seed,
            ),
            ks=list(ev.ks),
            name=n,
            batch_size=ev.batch_size,
        )
        for n in names
    ]


def run(job: TrainJob) -> dict[str, Any] | None:
    """Train as one rank of the job; returns the result on rank 0."""
    import torch
    import transformers
    from datasets import Dataset, DatasetDict
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainingArguments

    from st_workflow import atomic
    from st_workflow.config import PipelineConfig
    from st_workflow.config.training import LossConfig
    from st_workflow.training import card, tracking
    from st_workflow.training.binarization import BetaAnnealCallback, add_binarization
    from st_workflow.training.collator import OnTheFlyCollator, PreTokenizedCollator
    from st_workflow.training.losses import DistillationLoss, build_loss, load_teacher, loss_name
    from st_workflow.training.samplers import SourceIndex, batches_per_epoch
    from st_workflow.training.trainer import PipelineTrainer, ProgressCallback

    cfg = PipelineConfig.model_validate(job.config)
    t = cfg.training
    rank, world, local_rank = _dist_env()

    def say(msg: str) -> None:
        print(f"[rank {rank}] {msg}" if world > 1 else msg, flush=True)

    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    use_cuda = t.device == "cuda" or (t.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
    device = f"cuda:{local_rank}" if use_cuda else "cpu"
    precision = resolve_precision(t.dtype, use_cuda)
    backend = t.launch.backend if t.launch.backend != "auto" else ("nccl" if use_cuda else "gloo")
    transformers.set_seed(cfg.seed)

    # fp32 master weights whatever dtype the checkpoint was saved in (the original trained bf16 weights).
    model = SentenceTransformer(job.model_path, device=device, model_kwargs={"dtype": torch.float32})
    # Training truncates at training.max_seq_length (cheaper); the saved model keeps the base model's own length,
    # so it reads as much of a document at inference as the base model did (and evaluations compare like for
    # like: MTEB encodes with the model's max_seq_length).
    inference_max_length = model.max_seq_length
    model.max_seq_length = t.max_seq_length
    if t.binarization.enabled:
        b = t.binarization
        model = add_binarization(model, b.estimator, b.beta_start, b.beta_end)
    model.model_card_data.model_name = t.model_name or f"{cfg.run_name} (st-workflow)"
    model.model_card_data.add_tags(["st-workflow"])
    model.model_card_data.set_language("en")
    if not Path(t.base_model).exists() and "/" in t.base_model:
        model.model_card_data.base_model = t.base_model

    datasets = DatasetDict(
        {s.name: Dataset.from_file(str(Path(s.directory) / "data.arrow")) for s in job.sources}
    )
    card_datasets = DatasetDict()
    for s in job.sources:
        text_key = json.loads((Path(s.directory) / "info.json").read_text(encoding="utf-8")).get("text_key")
        text_file = Path(s.directory).parent / f"text-{text_key}" / "data.arrow"
        if text_file.is_file():
            texts = Dataset.from_file(str(text_file))
            card_datasets[s.name] = texts.select(range(min(len(texts), 1000)))
    indexes = [SourceIndex.load(s.directory, s.name, s.weight, s.replay) for s in job.sources]
    info0 = json.loads((Path(job.sources[0].directory) / "info.json").read_text(encoding="utf-8"))
    if all(s.mode == "tokens" for s in job.sources):
        collator: Any = PreTokenizedCollator(
            pad_token_id=int(info0.get("pad_token_id") or 0),
            token_type_ids=bool(info0.get("token_type_ids")),
            padding_side=info0.get("padding_side") or "right",
            pad_to_multiple_of=8 if use_cuda else None,
        )
    else:
        collator = OnTheFlyCollator(preprocess_fn=model.preprocess)
    guides: dict[str, Any] = {}
    losses = {
        s.name: build_loss(
            model, LossConfig.model_validate(s.loss), guides=guides, cache_dir=str(cfg.cache_path)
        )
        for s in job.sources
    }
    if t.distillation.weight > 0:
        targets = (
            teacher_targets(job.teacher_store, indexes)
            if isinstance(collator, PreTokenizedCollator)
            else None
        )
        teacher = None
        if targets is None:
            teacher = load_teacher(
                t.distillation.teacher or job.model_path, device=device, cache_dir=str(cfg.cache_path)
            )
            teacher.max_seq_length = t.max_seq_length
        else:
            collator.teacher = targets
        say(
            "distillation towards "
            + ("the mining stage's embeddings of the base model" if targets else "the frozen teacher, online")
        )
        losses = {
            name: DistillationLoss(loss, teacher, t.distillation.weight) for name, loss in losses.items()
        }

    evaluators = _evaluators(job, cfg)
    report_to: Any = ["wandb"] if job.wandb_mode != "disabled" else "none"
    args = SentenceTransformerTrainingArguments(
        output_dir=job.checkpoints_dir,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if evaluators else "no",
        eval_steps=t.evaluation.steps if evaluators else None,
        per_device_eval_batch_size=t.evaluation.batch_size,
        save_strategy="steps" if t.checkpoints.save_steps else "no",
        save_steps=t.checkpoints.save_steps or 500,
        save_total_limit=t.checkpoints.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not use_cuda,
        ddp_backend=backend if world > 1 else None,
        report_to=report_to,
        run_name=cfg.run_name,
        dataloader_num_workers=t.dataloader_num_workers,
        remove_unused_columns=False,
        disable_tqdm=True,
        log_level="warning",
        log_level_replica="error",
    )
    run_ = None
    if rank == 0 and job.wandb_mode != "disabled":
        run_ = tracking.init_run(
            cfg.wandb,
            mode=job.wandb_mode,
            run_id_=job.wandb_run_id,
            wandb_dir=Path(job.wandb_dir),
            name=cfg.run_name,
            config={
                "pipeline": cfg.model_dump(mode="json"),
                "world_size": world,
                "precision": precision,
                "sources": [s.model_dump() for s in job.sources],
            },
        )
    samples_per_step = t.batch_size * t.gradient_accumulation_steps * world
    progress = ProgressCallback(samples_per_step, printer=say)
    callbacks: list[Any] = [progress]
    if rank == 0:
        callbacks.append(stage_progress_callback(samples_per_step))
    if t.binarization.enabled and t.binarization.estimator == "tanh":
        callbacks.append(BetaAnnealCallback(model))
    trainer = PipelineTrainer(
        model=model,
        args=args,
        train_dataset=datasets,
        loss=losses,
        data_collator=collator,
        evaluator=evaluators or None,
        callbacks=callbacks,
        source_indexes=indexes,
        sampler_cfg=t.sampler,
        scheduler_cfg=t.scheduler,
        trace_dir=Path(job.trace_dir) if job.trace_dir else None,
        card_datasets=card_datasets if len(card_datasets) == len(job.sources) else None,
        inference_max_seq_length=inference_max_length,
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our ProgressCallback prints one line per log instead
    say(
        f"training {len(job.sources)} source(s) on {device} x{world} ({precision}, {backend if world > 1 else 'single'}),"
        f" batch {t.batch_size}/device, {'pre-tokenized' if job.sources[0].mode == 'tokens' else 'on-the-fly'} inputs"
        + (f", resuming from {job.resume_from}" if job.resume_from else "")
    )
    t0 = time.perf_counter()
    if finished_checkpoint(job.resume_from):
        # Hugging Face's loop checks ``should_training_stop`` only after a step, so resuming a checkpoint taken at
        # the last step would train one step too many. That checkpoint already is the trained model.
        from transformers.trainer_callback import TrainerState
        from transformers.trainer_utils import TrainOutput

        trainer._load_from_checkpoint(job.resume_from)
        trainer.state = TrainerState.load_from_json(str(Path(job.resume_from) / "trainer_state.json"))
        logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        output = TrainOutput(trainer.state.global_step, sum(logged) / len(logged) if logged else 0.0, {})
        progress.t0, progress.step0 = t0, trainer.state.global_step  # this run trained no step
        if rank == 0:
            from st_workflow import progress as stage_progress
            from st_workflow.progress_pipe import LineSink

            with stage_progress.sinks(LineSink(keys={"training"})):
                stage_progress.reused("training", "Training", "the resumed checkpoint is at the last step")
        say(
            f"checkpoint {job.resume_from} is at the last step ({trainer.state.global_step}): nothing left to train"
        )
    else:
        output = trainer.train(resume_from_checkpoint=job.resume_from)
    wall = time.perf_counter() - t0
    state = trainer.state
    if rank != 0:
        return None

    counts = batches_per_epoch(
        [len(i) for i in indexes],
        [i.weight for i in indexes],
        t.sampler.strategy,
        t.batch_size * world,
        t.sampler.temperature,
        replay=[i.replay for i in indexes],
        replay_share=t.sampler.replay_share,
    )
    losses_logged = [h["loss"] for h in state.log_history if "loss" in h]
    result: dict[str, Any] = {
        "global_step": state.global_step,
        "max_steps": state.max_steps,
        "epoch": state.epoch,
        "train_loss": output.training_loss,
        "first_loss": losses_logged[0] if losses_logged else None,
        "final_loss": losses_logged[-1] if losses_logged else None,
        "samples_per_second": round(progress.samples_per_second(state), 3),
        "steady_samples_per_second": round(progress.steady_samples_per_second() or 0.0, 3),
        "train_seconds": round(wall, 2),
        "world_size": world,
        "precision": precision,
        "batch_size": t.batch_size,
        "global_batch_size": samples_per_step,
        "resumed_from": job.resume_from,
        "batches_per_epoch": {s.name: c for s, c in zip(job.sources, counts, strict=True)},
        "replay_share": round(
            sum(c for s, c in zip(job.sources, counts, strict=True) if s.replay) / max(1, sum(counts)), 4
        ),
        "log_history": state.log_history,
    }
    evals = [h for h in state.log_history if any(k.startswith("eval_") for k in h)]
    if evals:
        result["last_eval"] = {k: v for k, v in evals[-1].items() if isinstance(v, int | float)}
    source_rows = [
        {
            **s.model_dump(include={"name", "kind", "rows", "dropped", "weight", "replay"}),
            "loss": loss_name(LossConfig.model_validate(s.loss)),
            "batches_per_epoch": c,
        }
        for s, c in zip(job.sources, counts, strict=True)
    ]
    hyper = {
        "base_model": t.base_model,
        "max_seq_length": t.max_seq_length,
        "batch_size (per device)": t.batch_size,
        "processes": world,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "learning_rate": t.learning_rate,
        "weight_decay": t.weight_decay,
        "scheduler": t.scheduler.type,
        "warmup": t.scheduler.warmup_steps
        if t.scheduler.warmup_steps is not None
        else f"{t.scheduler.warmup_ratio:.0%}",
        "optimizer steps": state.global_step,
        "epochs": t.epochs if t.max_steps is None else f"max_steps={t.max_steps}",
        "sampler": f"{t.sampler.strategy} (no duplicates: {t.sampler.no_duplicates}, length grouping: "
        f"{t.sampler.group_by_length})",
        "precision": precision,
        "replay share of batches": f"{result['replay_share']:.1%}",
        "seed": cfg.seed,
        "binarization": t.binarization.estimator if t.binarization.enabled else "off",
        "distillation": f"weight {t.distillation.weight:g} towards {t.distillation.teacher or 'the base model'}"
        if t.distillation.weight > 0
        else "off",
        "replay share": t.sampler.replay_share if t.sampler.replay_share is not None else "by strategy",
    }
    metrics = {
        k: result[k]
        for k in ("final_loss", "train_loss", "samples_per_second", "global_step", "train_seconds")
    }
    wandb_dir = Path(job.wandb_dir) if job.wandb_dir else None
    if inference_max_length:
        model.max_seq_length = inference_max_length
    with atomic.atomic_dir(job.model_dir) as tmp:
        model.save(str(tmp))
        atomic.write_json(tmp / "lineage.json", job.lineage)
        card.append_section(
            tmp,
            card.pipeline_section(
                run_name=cfg.run_name,
                description=cfg.description,
                sources=source_rows,
                hyperparameters=hyper,
                metrics=metrics,
                lineage=job.lineage,
                binary=t.binarization.enabled,
            ),
        )
    say(f"saved the final model to {job.model_dir}")
    if run_ is not None:
        run_.summary.update({f"final/{k}": v for k, v in metrics.items()})
        if cfg.wandb.log_model:
            result["wandb_artifact"] = tracking.log_model_artifact(
                run_, Path(job.model_dir), {"run_name": cfg.run_name, **metrics}
            )
        tracking.finish(run_)
    if job.wandb_mode == "offline" and wandb_dir is not None:
        result["wandb_sync"] = tracking.sync_hint(wandb_dir)
        if result["wandb_sync"]:
            say(f"W&B ran offline; upload with: {result['wandb_sync']}")
    result["wandb_mode"] = job.wandb_mode
    result["wandb_run_id"] = job.wandb_run_id if job.wandb_mode != "disabled" else None
    atomic.write_json(job.result_file, result)
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m st_workflow.training.worker``."""
    set_pdeathsig()  # die with the torchrun agent (or the launcher) rather than linger as an orphan
    parser = argparse.ArgumentParser(prog="python -m st_workflow.training.worker")
    parser.add_argument("--job-file", required=True, help="TrainJob JSON written by train_stage")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    job = TrainJob.model_validate_json(Path(args.job_file).read_text(encoding="utf-8"))
    import torch.distributed as dist

    run(job)
    if dist.is_available() and dist.is_initialized():
        # Leave together: rank 0 saves the model while the others wait here, then all tear down the group.
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
