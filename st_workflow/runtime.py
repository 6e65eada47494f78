"""Process environment defaults, applied before heavy imports.

The defaults only fill variables the user has not set, so an explicit environment always wins.
"""

from __future__ import annotations

import os

from st_workflow.config.root import PipelineConfig

BASE_DEFAULTS = {
    "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # A loaded 2-core CI machine can take longer than Prefect's 20 s default to start the ephemeral server.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # Route our own loggers (st_workflow.*) into the Prefect run log shown in the UI.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "st_workflow",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    "DISABLE_MLFLOW_INTEGRATION": "TRUE",
}


def apply_base_env() -> None:
    """Fill the process-wide defaults (no config needed)."""
    for k, v in BASE_DEFAULTS.items():
        os.environ.setdefault(k, v)


def apply_config_env(cfg: PipelineConfig) -> None:
    """Apply what the config says about the environment (hub offline mode)."""
    apply_base_env()
    if cfg.hf_offline is not None:
        value = "1" if cfg.hf_offline else "0"
        os.environ["HF_HUB_OFFLINE"] = value
        os.environ["HF_DATASETS_OFFLINE"] = value
