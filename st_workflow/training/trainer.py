"""``PipelineTrainer``: sentence-transformers' trainer with our sampler, schedules, tracing and checkpoint markers.

It subclasses :class:`~sentence_transformers.SentenceTransformerTrainer` and only overrides its documented extension
points (``get_multi_dataset_batch_sampler``, ``create_scheduler``, ``compute_loss``), so the trainer keeps its
model card, losses-per-dataset routing, DDP wrapping, mixed precision and checkpoint/resume logic.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformerTrainer
from torch.utils.data import ConcatDataset
from transformers import TrainerCallback

from st_workflow.config.training import SamplerConfig, SchedulerConfig
from st_workflow.training.collator import ROW_INDEX
from st_workflow.training.samplers import MultiSourceBatchSampler, SourceIndex
from st_workflow.training.schedules import build_scheduler

COMPLETE_MARKER = ".complete"


class PipelineTrainer(SentenceTransformerTrainer):
    """The trainer of :mod:`st_workflow.training.worker`.

    Args:
        source_indexes: one :class:`SourceIndex` per source, in the order of the ``train_dataset`` dict.
        sampler_cfg: multi-source sampling options.
        scheduler_cfg: learning-rate schedule.
        trace_dir: when set, every trained batch's ``(step, source, rows)`` is appended to ``rank<r>.jsonl`` there.
        card_datasets: text datasets (same source names) that the model card describes; the training datasets
            may hold token ids, which the card's statistics and widget examples cannot read.
        inference_max_seq_length: the ``max_seq_length`` saved checkpoints carry (the base model's own), while
            training truncates at the shorter training length.
    """

    def __init__(
        self,
        *args: Any,
        source_indexes: list[SourceIndex],
        sampler_cfg: SamplerConfig,
        scheduler_cfg: SchedulerConfig,
        trace_dir: Path | None = None,
        card_datasets: Any = None,
        inference_max_seq_length: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.card_datasets = card_datasets
        self.inference_max_seq_length = inference_max_seq_length
        self.source_indexes = source_indexes
        self.sampler_cfg = sampler_cfg
        self.scheduler_cfg = scheduler_cfg
        self.trace_dir = trace_dir
        self.batch_sampler_: MultiSourceBatchSampler | None = None
        super().__init__(*args, **kwargs)
        self.add_callback(SamplerEpochCallback(self))
        self.add_callback(CheckpointMarkerCallback())

    def add_model_card_callback(self, default_args_dict: dict[str, Any]) -> None:
        if self.card_datasets is None:
            return super().add_model_card_callback(default_args_dict)
        real, self.train_dataset = self.train_dataset, self.card_datasets
        try:
            super().add_model_card_callback(default_args_dict)
        finally:
            self.train_dataset = real

    def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
        """Checkpoints keep the model's inference length (training truncates shorter), like the final model."""
        trained, keep = self.model.max_seq_length, self.inference_max_seq_length
        if keep:
            self.model.max_seq_length = keep
        try:
            super()._save(output_dir, state_dict)
        finally:
            self.model.max_seq_length = trained

    def get_multi_dataset_batch_sampler(
        self,
        dataset: ConcatDataset,
        batch_samplers: list,
        generator: torch.Generator | None = None,
        seed: int | None = 0,
    ) -> MultiSourceBatchSampler:
        s = self.sampler_cfg
        self.batch_sampler_ = MultiSourceBatchSampler(
            dataset,
            self.source_indexes,
            batch_size=self.args.per_device_train_batch_size,
            world_size=max(1, self.args.world_size),
            strategy=s.strategy,
            temperature=s.temperature,
            no_duplicates=s.no_duplicates,
            group_by_length=s.group_by_length,
            length_window=s.length_window,
            seed=self.args.seed if seed is None else seed,
            replay_share=s.replay_share,
        )
        return self.batch_sampler_

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> Any:
        if self.lr_scheduler is None:
            self.lr_scheduler = build_scheduler(
                self.scheduler_cfg, optimizer or self.optimizer, num_training_steps, self.args.learning_rate
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> Any:
        """Under DDP, run the evaluator on every rank.

        sentence-transformers runs evaluators on rank 0 while the other ranks serve its ``encode`` calls;
        ``st_workflow.evaluation``'s evaluators are collective instead (each rank encodes its shard, then they
        all-gather), so all ranks must call them: rank 0 alone would wait for the others forever.
        """
        if self.evaluator is None or self.args.world_size <= 1:
            return super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
        from transformers import Trainer

        output = Trainer.evaluation_loop(
            self, dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
        )
        metrics = self.evaluator(
            self.model, output_path=None, epoch=self.state.epoch, steps=self.state.global_step
        )
        if not isinstance(metrics, dict):
            metrics = {"evaluator": metrics}
        for key, value in metrics.items():
            name = key if key.startswith(f"{metric_key_prefix}_") else f"{metric_key_prefix}_{key}"
            output.metrics[name] = value
        return output

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        rows = inputs.pop(ROW_INDEX, None)
        if self.trace_dir is not None and rows is not None and self.model.training:
            self._trace(rows, inputs.get("dataset_name"))
        return super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )

    def _trace(self, rows: torch.Tensor, source: str | None) -> None:
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        rec = {"step": self.state.global_step, "source": source, "rows": rows.tolist()}
        with open(self.trace_dir / f"rank{self.args.process_index}.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")


class SamplerEpochCallback(TrainerCallback):
    """Give the sampler the right epoch on every path, resume into a later epoch included.

    After ``skip_first_batches`` under DDP the sampler sits behind two wrappers that Hugging Face does not reach
    with ``set_epoch``; the epoch is a function of the restored global step, so setting it here is exact.
    """

    def __init__(self, trainer: PipelineTrainer) -> None:
        self.trainer = trainer
        self.epoch = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.epoch = math.floor(state.epoch or 0.0)

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer.batch_sampler_ is not None:
            self.trainer.batch_sampler_.set_epoch(self.epoch)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.epoch += 1


class CheckpointMarkerCallback(TrainerCallback):
    """Mark a checkpoint complete once every rank has written its part (resume only picks complete ones)."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                (ckpt / COMPLETE_MARKER).write_text(
                    json.dumps({"step": state.global_step, "time": time.time()})
                )


class ProgressCallback(TrainerCallback):
    """One plain log line per logging step (the Prefect task log shows them), with samples/s of this run."""

    def __init__(self, samples_per_step: int, printer: Any = print) -> None:
        self.samples_per_step = samples_per_step
        self.printer = printer
        self.t0 = 0.0
        self.step0 = 0
        self.history: list[dict[str, Any]] = []
        self.step_ends: list[float] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.t0 = time.perf_counter()
        self.step0 = state.global_step
        if state.is_world_process_zero:
            self.printer(f"training: {state.max_steps} optimizer steps, resuming at step {state.global_step}")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step_ends.append(time.perf_counter())

    def samples_per_second(self, state: Any) -> float:
        """Samples per second of this run so far, start-up of the loop included."""
        dt = time.perf_counter() - self.t0
        return (state.global_step - self.step0) * self.samples_per_step / dt if dt > 0 else 0.0

    def steady_samples_per_second(self) -> float | None:
        """Samples per second after the first step (data-loader start, first-batch allocation excluded)."""
        if len(self.step_ends) < 2:
            return None
        return (len(self.step_ends) - 1) * self.samples_per_step / (self.step_ends[-1] - self.step_ends[0])

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        rec = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, int | float)}}
        rec["samples_per_second"] = round(self.samples_per_second(state), 3)
        self.history.append(rec)
        self.printer(
            f"step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f} "
            f"lr {logs.get('learning_rate', float('nan')):.3g} {rec['samples_per_second']:.2f} samples/s"
        )
