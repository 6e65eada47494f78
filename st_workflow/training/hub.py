"""Pushing the promoted model to the Hugging Face Hub (its own task, after promotion, with its own retries).

The push used to run inside the train stage, before its manifest was written: a network error retried the whole
stage (a retrain without checkpoints), and the final model was pushed even when promotion kept another one. Now
``push_task`` uploads whatever ``<run>/promoted`` points at, and a failed upload retries only the upload.

Example::

    url = push_model(cfg, cfg.run_dir / "promoted")
"""

from __future__ import annotations

from pathlib import Path

from st_workflow.config import PipelineConfig


def push_model(cfg: PipelineConfig, model_dir: Path) -> str:
    """Upload a model directory to ``training.hub.repo_id`` (token from ``training.hub.token``); returns the URL."""
    from huggingface_hub import HfApi

    hub = cfg.training.hub
    token = hub.token.resolve()
    api = HfApi(token=token.get_secret_value() if token else None)
    url = api.create_repo(hub.repo_id, private=hub.private, exist_ok=True, repo_type="model")
    api.upload_folder(folder_path=str(Path(model_dir).resolve()), repo_id=hub.repo_id, repo_type="model")
    return str(url)
