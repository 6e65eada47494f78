"""Stage ``train``: launch the training process group and turn its output into a manifest.

``train_stage`` is what the Prefect task and ``st-workflow train`` call. It reuses a finished run with the same cache
key (training + W&B config, upstream content hashes, base-model content, ``code_version("training")``), resumes
from checkpoints written under the same key (``training.checkpoints.resume_from: auto``), writes the job file,
runs one process or torchrun in a process group it owns (:mod:`st_workflow.training.launcher`), and returns the
manifest with role ``model`` (the final sentence-transformers model with ``lineage.json`` and its card) and role
``checkpoints`` when any were kept.

Each configuration keeps its checkpoints in ``checkpoints/<key[:16]>/`` (``save_total_limit`` applies there), so
changing the config and changing it back resumes rather than retrains, and no run deletes another configuration's
checkpoints. The stage holds the stage lock (:func:`st_workflow.locks.stage_lock`) from the reuse check to the
manifest: two runs sharing a run directory (the ``train`` and ``pipeline`` deployments) train one after the other,
and the second reuses the first's model when their keys match.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from st_workflow import atomic, progress
from st_workflow.config import PipelineConfig
from st_workflow.fingerprints import model_fingerprint, model_hash
from st_workflow.hashing import code_version, stable_hash
from st_workflow.lineage import collect_lineage
from st_workflow.locks import stage_lock
from st_workflow.log import get_logger
from st_workflow.manifest import Manifest, reusable
from st_workflow.training.launcher import TrainingFailed, build_command, launch_env, run_process_group
from st_workflow.training.pretokenize import pretokenize_stage, read_sources
from st_workflow.training.trainer import COMPLETE_MARKER
from st_workflow.training.worker import SourceSpec, TrainJob

STAGE = "train"
_CKPT = re.compile(r"^checkpoint-(\d+)$")
KEY_DIR_LEN = 16
"""Characters of the cache key that name a configuration's checkpoint directory."""


def train_key(
    cfg: PipelineConfig, pairs_manifest: Manifest | None, pretok_manifest: Manifest, model_fp: str
) -> str:
    """Cache key of the stage (options that cannot change the model, such as timeouts, are left out)."""
    training = cfg.training.model_dump(
        mode="json",
        exclude={
            "launch": {"timeout_s", "kill_grace_s", "extra_args", "lock_timeout_s", "env_passthrough"},
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
            "precision": resolve_precision(t.dtype, use_cuda),
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


def key_checkpoint_dir(train_dir: Path, key: str) -> Path:
    """Where the configuration with cache key ``key`` writes its checkpoints."""
    return train_dir / "checkpoints" / key[:KEY_DIR_LEN]


def migrate_flat_checkpoints(root: Path) -> None:
    """Move checkpoints of the old flat layout (``checkpoints/checkpoint-N`` + ``.cache_key``) into their key's
    directory, so that upgrading keeps them instead of losing them on the next fresh start."""
    flat = [p for p in root.glob("checkpoint-*") if p.is_dir()] if root.is_dir() else []
    if not flat:
        return
    key_file = root / ".cache_key"
    old_key = key_file.read_text(encoding="utf-8").strip() if key_file.is_file() else ""
    target = root / (old_key[:KEY_DIR_LEN] if old_key else "unknown-key")
    target.mkdir(parents=True, exist_ok=True)
    for p in flat:
        if not (target / p.name).exists():
            os.replace(p, target / p.name)
    if old_key:
        os.replace(key_file, target / ".cache_key")


def checkpoint_sets(root: Path) -> dict[str, list[Path]]:
    """Complete checkpoints of every configuration under ``root`` (``checkpoints/``), by key directory name."""
    if not root.is_dir():
        return {}
    sets = {d.name: complete_checkpoints(d) for d in sorted(root.iterdir()) if d.is_dir()}
    return {k: v for k, v in sets.items() if v}


def resolve_resume(resume_from: str | None, root: Path, key: str) -> Path | None:
    """The checkpoint to resume from (see ``training.checkpoints.resume_from``), or ``None`` to start fresh.

    ``root`` is ``<train dir>/checkpoints``, holding one directory per configuration.

    Raises:
        FileNotFoundError: a named checkpoint does not exist or is incomplete.
    """
    if resume_from is None:
        return None
    if resume_from == "auto":
        own = root / key[:KEY_DIR_LEN]
        key_file = own / ".cache_key"
        same_key = key_file.is_file() and key_file.read_text(encoding="utf-8").strip() == key
        done = complete_checkpoints(own) if same_key else []
        return done[-1] if done else None
    if resume_from == "latest":
        done = [c for cs in checkpoint_sets(root).values() for c in cs]
        if not done:
            get_logger().warning(
                "resume_from=latest but %s holds no complete checkpoint; starting fresh", root
            )
            return None
        return max(
            done, key=lambda c: ((c / "trainer_state.json").stat().st_mtime, int(c.name.split("-")[1]))
        )
    p = Path(resume_from).expanduser().resolve()
    if not (p / "trainer_state.json").is_file():
        raise FileNotFoundError(f"training.checkpoints.resume_from: {p} is not a complete checkpoint")
    return p


def _lock_owner(cfg: PipelineConfig) -> str:
    """What this training is, for a run that has to wait for it: the run, and the Prefect flow run if any."""
    owner = f"train stage of run {cfg.run_name!r}"
    if "prefect" in sys.modules:  # only look when Prefect is in use: the CLI trains without it
        try:
            from prefect.context import FlowRunContext

            ctx = FlowRunContext.get()
        except Exception:  # a name for a log line is never worth a failure
            ctx = None
        if ctx is not None and ctx.flow_run is not None:
            owner += f", Prefect flow run {ctx.flow_run.name!r} ({ctx.flow_run.id})"
    return owner + (f", {Path(sys.argv[0]).name} {' '.join(sys.argv[1:2])}".rstrip() if sys.argv[:1] else "")


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

    log = get_logger()
    sink = log_sink or log.info
    if pretok_manifest is None:
        pretok_manifest = pretokenize_stage(cfg, pairs_manifest)
    out = cfg.stage_dir(STAGE)
    model_path = resolve_model(cfg.training.base_model, cfg.cache_path)
    key = train_key(cfg, pairs_manifest, pretok_manifest, model_fingerprint(model_path))
    hit = reusable(out, key)
    if hit is not None:
        log.info("train: reusing %s (cache key %s)", hit.path("model"), key[:12])
        progress.reused("training", "Training")
        return hit
    # Multi-node: the nodes of one job may share this directory (network storage) and must not wait for each
    # other (they meet in the rendezvous), so each host takes its own lock; single-node takes the stage's.
    multi_node = str(cfg.training.launch.nnodes) != "1"
    lock_dir = out / ".node-locks" / socket.gethostname() if multi_node else out
    with stage_lock(
        lock_dir,
        timeout_s=cfg.training.launch.lock_timeout_s,
        owner=_lock_owner(cfg),
        on_wait=lambda m: sink(m),
    ):
        hit = reusable(out, key)
        if hit is not None:
            sink(f"train: the run that held the lock trained this configuration; reusing {hit.path('model')}")
            progress.reused("training", "Training")
            return hit
        return _train_locked(
            cfg, pairs_manifest, pretok_manifest, out, key, model_path, sink, should_cancel, eval_benchmarks
        )


def _checkpoint_plan(cfg: PipelineConfig, out: Path, key: str, sink: Callable[[str], None]) -> dict[str, Any]:
    """Pick the checkpoint to resume from and clear only this configuration's stale ones; say what is reused."""
    root = out / "checkpoints"
    migrate_flat_checkpoints(root)
    ckpt_dir = key_checkpoint_dir(out, key)
    resume = resolve_resume(cfg.training.checkpoints.resume_from, root, key)
    others = {k: [c.name for c in v] for k, v in checkpoint_sets(root).items() if k != ckpt_dir.name}
    reused: list[str] = []
    if resume is None:
        # Only this configuration's (partial, or unwanted by resume_from: null) checkpoints; never another's.
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        shutil.rmtree(out / "trace", ignore_errors=True)
        sink(f"checkpoints: starting fresh in {ckpt_dir}")
    else:
        if resume.resolve().parent == ckpt_dir.resolve():
            step = int(resume.name.split("-")[1])
            reused = [c.name for c in complete_checkpoints(ckpt_dir) if int(c.name.split("-")[1]) <= step]
        sink(
            f"resuming from {resume}"
            + (f" (reusing {', '.join(reused)} of this configuration)" if reused else "")
        )
    if others:
        listed = "; ".join(f"{k}: {', '.join(v)}" for k, v in others.items())
        sink(f"checkpoints of {len(others)} other configuration(s) kept in {root}: {listed}")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(ckpt_dir / ".cache_key", key)
    return {
        "dir": ckpt_dir,
        "resume": resume,
        "metrics": {
            "directory": ckpt_dir.relative_to(out).as_posix(),
            "key": ckpt_dir.name,
            "resumed_from": str(resume) if resume else None,
            "reused": reused,
            "other_configurations": others,
        },
    }


def _train_locked(
    cfg: PipelineConfig,
    pairs_manifest: Manifest | None,
    pretok_manifest: Manifest,
    out: Path,
    key: str,
    model_path: str,
    sink: Callable[[str], None],
    should_cancel: Callable[[], bool] | None,
    eval_benchmarks: Mapping[str, str | Path] | None,
) -> Manifest:
    """The part of :func:`train_stage` that runs under the stage lock: launch, then the manifest."""
    from st_workflow.training import tracking

    t = cfg.training
    out.mkdir(parents=True, exist_ok=True)
    specs = _source_specs(cfg, pretok_manifest)
    trace_dir = out / "trace"
    plan = _checkpoint_plan(cfg, out, key, sink)
    ckpt_dir, resume = plan["dir"], plan["resume"]

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
        files["checkpoints"] = plan["metrics"]["directory"]
    if t.trace_batches and trace_dir.is_dir():
        files["trace"] = "trace"
    metrics = {k: v for k, v in result.items() if k != "log_history"}
    metrics["checkpoints"] = {
        **plan["metrics"],
        "kept": [p.name for p in complete_checkpoints(ckpt_dir)],
    }
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
