"""Configuration of experiment tracking (Weights & Biases).

Offline runs (the default without an API key) are written under ``<run dir>/wandb/wandb/offline-run-*`` and can be
uploaded later with ``wandb sync <run dir>/wandb/wandb/offline-run-*`` (or ``wandb sync --sync-all`` from that
directory) once a key is available.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from st_workflow.config.base import SecretRef, StrictModel


class WandbConfig(StrictModel):
    """W&B logging: online with a key, offline by default, or disabled."""

    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    """``auto``: online when an API key is available, else offline (sync later with ``wandb sync``)."""
    project: str = "st-workflow"
    """W&B project."""
    entity: str | None = None
    """W&B entity (team or user)."""
    run_id: str | None = None
    """Resume this W&B run id (``resume="allow"``); unset: derived from the run name and the training cache key, so
    a resumed training run continues the same W&B run."""
    group: str | None = None
    """W&B group (e.g. a sweep or a stage); unset: the run name."""
    tags: list[str] = Field(default_factory=list)
    """W&B tags."""
    notes: str | None = None
    """Free text attached to the W&B run."""
    log_model: bool = False
    """Log the final model as a W&B artifact (``model-<run id>``)."""
    dir: str | None = None
    """Where W&B writes; unset: ``<run dir>/wandb``."""
    api_key: SecretRef = Field(default_factory=lambda: SecretRef(env="WANDB_API_KEY"))
    """API key source (never logged)."""
