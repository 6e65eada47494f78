"""Configuration of experiment tracking (Weights & Biases)."""

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
    """Resume this W&B run id (``resume="allow"``); unset: derived from the run name."""
    log_model: bool = False
    """Log the final model as a W&B artifact."""
    dir: str | None = None
    """Where W&B writes; unset: ``<run dir>/wandb``."""
    api_key: SecretRef = Field(default_factory=lambda: SecretRef(env="WANDB_API_KEY"))
    """API key source (never logged)."""
