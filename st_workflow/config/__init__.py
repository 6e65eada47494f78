"""Typed configuration: pydantic models loaded from YAML.

Example:
    >>> from st_workflow.config import load_config
    >>> cfg = load_config(None, ["run_name=doc"])
    >>> cfg.stage_dir("ingest").name
    'ingest'
"""

from st_workflow.config.base import SecretRef, StrictModel
from st_workflow.config.loader import ConfigError, apply_override, dump_config, load_config, load_raw
from st_workflow.config.root import PipelineConfig

__all__ = [
    "ConfigError",
    "PipelineConfig",
    "SecretRef",
    "StrictModel",
    "apply_override",
    "dump_config",
    "load_config",
    "load_raw",
]
