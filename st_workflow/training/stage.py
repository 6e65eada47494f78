"""Stage ``train``: launch the training process group and turn its output into a manifest.

``train_stage`` is what the Prefect task and ``st-workflow train`` call. It reuses a finished run with the same cache
key (training + W&B config, upstream content hashes, base-model content, ``code_version("training")``), resumes
from checkpoints written under the same key (``training.checkpoints.resume_from: auto``), writes the job file,
runs one process or torchrun in a process group it owns (:mod:`st_workflow.training.launcher`), and returns the
manifest with role ``model`` (the final sentence-transformers model with ``lineage.json`` and its card) and role
``checkpoints`` when any were kept.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from st_workflow import atomic
from st_workflow.config import PipelineConfig
from st_workflow.hashing import code_version, sha256_tree, stable_hash
from st_workflow.lineage import collect_lineage
from st_workflow.log import get_logger
from st_workflow.manifest import Manifest, reusable
from st_workflow.training.launcher import TrainingFailed, build_command, launch_env, run_process_group
from st_workflow.training.pretokenize import pretokenize_stage, read_sources
from st_workflow.training.trainer import COMPLETE_MARKER
from st_workflow.training.worker import SourceSpec, TrainJob

STAGE = "train"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


@cache
def _model_fingerprint(path: str, mtime: float) -> str:
    return sha256_tree(path)


def model_fingerprint(model_path: str) -> str:
    """Content hash of a local model directory (a hub id hashes as its name)."""
    p = Path(model_path)
    if not p.is_dir():
        return stable_hash({"hub_id": model_path})
    return _model_fingerprint(str(p), max(q.stat().st_mtime for q in p.rglob("*") if q.is_file()))


def train_key(
    cfg: PipelineConfig, pairs_manifest: Manifest | None, pretok_manifest: Manifest, model_fp: str
) -> str:
    """Cache key of the stage (options that cannot change the model, such as timeouts, are left out)."""
    training = cfg.training.model_dump(
        mode="json",
        exclude={
            "launch": {"timeout_s", "kill_grace_s", "extra_args"},
            "checkpoints": {"resume_from"},
            "hub": True,
            "interpolation": True,
            "dataloader_num_workers": True,
            "logging_steps": True,
            "trace_batches": True,
        },
    )
    wandb = cfg.wandb.model_dump(mode="json", exclude={"api_key", "dir"})
    import torch

    from st_workflow.training.worker import resolve_precision

    t = cfg.training
    use_cuda = t.device == "cuda" or (t.device == "auto" and torch.cuda.is_available())
    return stable_hash(
        {
            "stage": STAGE,
            # auto means different autocasts on different hardware: the resolved one is part of the key.
            "precision": resolve_precision(t.precision, use_cuda),
            "seed": cfg.seed,
            "run_name": cfg.run_name,
            "training": training,
            "wandb": wandb,
            "pretokenize": pretok_manifest.content_hash,
            "pairs": pairs_manifest.content_hash if pairs_manifest is not None else None,
            "model": model_fp,
            "code": code_version("training"),
        }
    )


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoints that every rank finished writing, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = _CKPT.match(p.name)
        if m and p.is_dir() and (p / COMPLETE_MARKER).is_file() and (p / "trainer_state.json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def resolve_resume(resume_from: str | None, ckpt_dir: Path, key: str) -> Path | None:
    """The checkpoint to resume from (see ``training.checkpoints.resume_from``), or ``None`` to start fresh.

    Raises:
        FileNotFoundError: a named checkpoint does not exist or is incomplete.
    """
    if resume_from is None:
        return None
    key_file = ckpt_dir / ".cache_key"
    same_key = key_file.is_file() and key_file.read_text(encoding="utf-8").strip() == key
    if resume_from == "auto":
        done = complete_checkpoints(ckpt_dir) if same_key else []
        return done[-1] if done else None
    if resume_from == "latest":
        done = complete_checkpoints(ckpt_dir)
        if not done:
            get_logger().warning(
                "resume_from=latest but %s holds no complete checkpoint; starting fresh", ckpt_dir
            )
            return None
        return done[-1]
    p = Path(resume_from).expanduser().resolve()
    if not (p / "trainer_state.json").is_file():
        raise FileNotFoundError(f"training.checkpoints.resume_from: {p} is not a complete checkpoint")
    return p


def _source_specs(cfg: PipelineConfig, pretok_manifest: Manifest) -> list[SourceSpec]:
    records = {r["name"]: r for r in read_sources(pretok_manifest)}
    specs = []
    for s in cfg.training.sources:
        if not s.enabled:
            continue
        r = records.get(s.name)
        if r is None:
            raise ValueError(
                f"training source {s.name!r} is not in the pre-tokenize manifest {pretok_manifest.manifest_path}; "
                "re-run the pretokenize stage with this config"
            )
        specs.append(
            SourceSpec(
                name=s.name,
                directory=r["directory"],
                mode=r["mode"],
                columns=r["columns"],
                rows=r["rows"],
                kind=r["kind"],
                weight=s.weight,
                replay=s.replay,
                loss=(s.loss or cfg.training.loss).model_dump(mode="json"),
                dropped=r.get("dropped") or {},
            )
        )
    return specs


def teacher_store(cfg: PipelineConfig, pretok_manifest: Manifest) -> str | None:
    """The mining stage's embeddings, when they are what the distillation teacher would compute: the same model
    weights at the training length. None otherwise (the teacher then runs online)."""
    from st_workflow.evaluation.embeddings import model_hash
    from st_workflow.models import resolve_model

    t = cfg.training
    info = pretok_manifest.metrics.get("teacher")
    if t.distillation.weight <= 0 or not info or not Path(info.get("path", "")).is_dir():
        return None
    name = t.distillation.teacher or t.base_model
    if info.get("max_seq_length") != t.max_seq_length:
        return None
    if info.get("weights") != model_hash(name, resolve_model(name, cfg.cache_path)):
        return None
    return str(info["path"])


def train_stage(
    cfg: PipelineConfig,
    pairs_manifest: Manifest | None,
    pretok_manifest: Manifest | None,
    *,
    log_sink: Callable[[str], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    eval_benchmarks: Mapping[str, str | Path] | None = None,
) -> Manifest:
    """Stage ``train`` (see the module docstring).

    Args:
        pairs_manifest: the ``pairs`` stage manifest (``None`` when no source reads pipeline pairs).
        pretok_manifest: the ``pretokenize`` manifest; built here when ``None``.
        log_sink: receives every output line of the training processes (default: this package's logger).
        should_cancel: polled about five times a second; when it returns true the process group is stopped and
            :class:`~st_workflow.training.launcher.TrainingCancelled` is raised.
        eval_benchmarks: BEIR directories by name (e.g. the hold-out benchmark) for in-training retrieval
            evaluation every ``training.evaluation.steps`` steps; metrics land in the log history and in W&B.

    Raises:
        TrainingFailed: the training process exited non-zero (the message has its last output lines).
        TrainingCancelled / TrainingTimeout: stopped on request, by a signal or by ``launch.timeout_s``.
    """
    from st_workflow.models import resolve_model
    from st_workflow.training import tracking

    log = get_logger()
    sink = log_sink or log.info
    if pretok_manifest is None:
        pretok_manifest = pretokenize_stage(cfg, pairs_manifest)
    t = cfg.training
    out = cfg.stage_dir(STAGE)
    model_path = resolve_model(t.base_model, cfg.cache_path)
    key = train_key(cfg, pairs_manifest, pretok_manifest, model_fingerprint(model_path))
    hit = reusable(out, key)
    if hit is not None:
        log.info("train: reusing %s (cache key %s)", hit.path("model"), key[:12])
        return hit

    out.mkdir(parents=True, exist_ok=True)
    specs = _source_specs(cfg, pretok_manifest)
    ckpt_dir = out / "checkpoints"
    trace_dir = out / "trace"
    resume = resolve_resume(t.checkpoints.resume_from, ckpt_dir, key)
    if resume is None:
        for d in (ckpt_dir, trace_dir):
            shutil.rmtree(d, ignore_errors=True)
    else:
        sink(f"resuming from {resume}")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(ckpt_dir / ".cache_key", key)

    mode = tracking.resolve_mode(cfg.wandb)
    if resume is None:
        # A fresh start is a new W&B run; only a resumed training continues the stored one.
        (out / "wandb_run_id.txt").unlink(missing_ok=True)
    run_id = tracking.run_id(cfg.wandb, cfg.run_name, key, out)
    wandb_dir = Path(cfg.wandb.dir).resolve() if cfg.wandb.dir else cfg.run_dir / "wandb"
    if mode != "disabled":
        atomic.write_text(out / "wandb_run_id.txt", run_id)
    result_file = out / "result.json"
    result_file.unlink(missing_ok=True)
    upstream = [m for m in (pretok_manifest, pairs_manifest) if m is not None]
    job = TrainJob(
        config=cfg.model_dump(mode="json"),
        sources=specs,
        model_path=model_path,
        train_dir=str(out),
        checkpoints_dir=str(ckpt_dir),
        model_dir=str(out / "model"),
        result_file=str(result_file),
        trace_dir=str(trace_dir) if t.trace_batches else None,
        resume_from=str(resume) if resume else None,
        cache_key=key,
        wandb_mode=mode,
        wandb_run_id=run_id,
        wandb_dir=str(wandb_dir),
        lineage=collect_lineage(upstream),
        eval_benchmarks={k: str(Path(v).resolve()) for k, v in (eval_benchmarks or {}).items()},
    )
    job.teacher_store = teacher_store(cfg, pretok_manifest)
    job_file = atomic.write_text(out / "job.json", job.model_dump_json(indent=2))
    cmd = build_command(t.launch, job_file, run_name=cfg.run_name)
    env = launch_env(t.launch, tracking.wandb_env(cfg.wandb, mode, wandb_dir, run_id))
    sink("launching: " + " ".join(cmd))
    rc, tail = run_process_group(
        cmd,
        env=env,
        log_sink=sink,
        should_cancel=should_cancel,
        timeout_s=t.launch.timeout_s,
        kill_grace_s=t.launch.kill_grace_s,
    )
    if rc != 0:
        raise TrainingFailed(rc, tail)
    if not result_file.is_file() and (t.launch.node_rank or 0) > 0:
        # Multi-node: the node holding global rank 0 writes the model; this node only took part.
        return Manifest(
            stage=STAGE,
            directory=str(out),
            metrics={"node_rank": t.launch.node_rank, "model_written_by": "the node of global rank 0"},
            config_hash=cfg.section_hash("training", "wandb"),
            code_version=code_version("training"),
            cache_key=f"{key}:node{t.launch.node_rank}",
            upstream=[m.ref() for m in upstream],
        )
    if not result_file.is_file():
        raise TrainingFailed(rc, tail)
    result: dict[str, Any] = json.loads(result_file.read_text(encoding="utf-8"))
    files: dict[str, Any] = {"model": "model", "result": "result.json"}
    if any(ckpt_dir.glob("checkpoint-*")):
        files["checkpoints"] = "checkpoints"
    if t.trace_batches and trace_dir.is_dir():
        files["trace"] = "trace"
    metrics = {k: v for k, v in result.items() if k != "log_history"}
    manifest = Manifest.build(
        stage=STAGE,
        directory=out,
        files=files,
        counts={
            "steps": int(result["global_step"]),
            "samples": int(result["global_step"]) * int(result["global_batch_size"]),
            **{f"rows:{s.name}": s.rows for s in specs},
        },
        metrics=metrics,
        config_hash=cfg.section_hash("training", "wandb"),
        code_version=code_version("training"),
        cache_key=key,
        upstream=upstream,
    )
    manifest.write()
    return manifest
