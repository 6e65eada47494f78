"""Weights & Biases: mode resolution, run ids that survive resumes, configs without secrets, model artifacts.

* ``wandb.mode: auto`` is online when an API key resolves (environment or Prefect block), else offline; offline
  runs land in ``<run dir>/wandb/wandb/offline-run-*`` and are uploaded later with
  ``wandb sync <run dir>/wandb/wandb/offline-run-*``; ``disabled`` writes nothing.
* The run id is ``wandb.run_id`` or derived from the run name and the training cache key, and it is kept in the
  train directory, so a resumed (or retried) training continues the same W&B run (``resume="allow"``).
* The logged config is the pipeline config with every secret reference removed; only rank 0 logs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from st_workflow.config.tracking import WandbConfig
from st_workflow.hashing import stable_hash

_SECRET_KEYS = ("api_key", "token", "secret", "password")


def resolve_mode(cfg: WandbConfig) -> str:
    """``online`` / ``offline`` / ``disabled`` after applying the ``auto`` rule."""
    if cfg.mode != "auto":
        return cfg.mode
    return "online" if cfg.api_key.resolve() is not None else "offline"


def run_id(cfg: WandbConfig, run_name: str, cache_key: str, train_dir: Path) -> str:
    """The W&B run id: configured, else the one this train directory already used, else a derived one."""
    if cfg.run_id:
        return cfg.run_id
    p = train_dir / "wandb_run_id.txt"
    if p.is_file():
        stored = p.read_text(encoding="utf-8").strip()
        if stored:
            return stored
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in run_name)[:40]
    return f"{safe}-{stable_hash({'run': run_name, 'key': cache_key}, 8)}"


def scrub(obj: Any) -> Any:
    """Drop every key that names a secret (``api_key``, ``token``...), recursively."""
    if isinstance(obj, dict):
        return {k: scrub(v) for k, v in obj.items() if not any(s in str(k).lower() for s in _SECRET_KEYS)}
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    return obj


def wandb_env(cfg: WandbConfig, mode: str, wandb_dir: Path, run_id_: str) -> dict[str, str]:
    """Environment for the training processes (the key, when online, comes from the resolved secret)."""
    env = {
        "WANDB_MODE": mode,
        "WANDB_DIR": str(wandb_dir),
        "WANDB_PROJECT": cfg.project,
        "WANDB_RUN_ID": run_id_,
        "WANDB_RESUME": "allow",
        "WANDB_LOG_MODEL": "false",
        "WANDB_SILENT": "true",
        "WANDB_WATCH": "false",
        "WANDB_DISABLE_CODE": "true",
    }
    if cfg.entity:
        env["WANDB_ENTITY"] = cfg.entity
    if mode == "online":
        key = cfg.api_key.resolve()
        if key is not None:
            env["WANDB_API_KEY"] = key.get_secret_value()
    return env


def init_run(
    cfg: WandbConfig, *, mode: str, run_id_: str, wandb_dir: Path, name: str, config: dict[str, Any]
) -> Any:
    """Start (or resume) the W&B run on rank 0; returns ``None`` when disabled."""
    if mode == "disabled":
        return None
    import wandb

    wandb_dir.mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        id=run_id_,
        resume="allow",
        dir=str(wandb_dir),
        mode=mode,
        name=name,
        group=cfg.group or name,
        tags=list(cfg.tags) or None,
        notes=cfg.notes,
        config=scrub(config),
        settings=wandb.Settings(console="off", silent=True),
    )


def log_model_artifact(run: Any, model_dir: Path, metadata: dict[str, Any]) -> str | None:
    """Log ``model_dir`` as artifact ``model-<run id>`` (type ``model``); returns its name."""
    if run is None:
        return None
    import wandb

    art = wandb.Artifact(name=f"model-{run.id}", type="model", metadata=scrub(metadata))
    art.add_dir(str(model_dir))
    run.log_artifact(art)
    return art.name


def finish(run: Any) -> None:
    """Close the run (flushes offline files)."""
    if run is not None:
        run.finish()


def offline_dirs(wandb_dir: Path) -> list[Path]:
    """Offline run directories to pass to ``wandb sync``."""
    return sorted((wandb_dir / "wandb").glob("offline-run-*")) if wandb_dir.exists() else []


def sync_hint(wandb_dir: Path) -> str | None:
    """The command that uploads this run's offline data, or ``None`` when there is none."""
    dirs = offline_dirs(wandb_dir)
    if not dirs:
        return None
    return "wandb sync " + " ".join(str(d) for d in dirs[-1:])


__all__ = [
    "finish",
    "init_run",
    "log_model_artifact",
    "offline_dirs",
    "resolve_mode",
    "run_id",
    "scrub",
    "sync_hint",
    "wandb_env",
]
