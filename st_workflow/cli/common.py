"""Arguments shared by the sub-commands that take a config."""

from __future__ import annotations

import argparse

from st_workflow.config import PipelineConfig, load_config
from st_workflow.runtime import apply_config_env


def add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """Add the positional ``CONFIG`` and the repeatable ``--set dotted.key=value``."""
    parser.add_argument(
        "config", metavar="CONFIG", nargs=None if required else "?", help="YAML config file (see configs/)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set training.epochs=2 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """Load the config named on the command line and apply its environment settings."""
    cfg = load_config(args.config, args.overrides)
    apply_config_env(cfg)
    return cfg
