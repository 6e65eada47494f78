"""Arguments shared by the sub-commands that take a config."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

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


@contextlib.contextmanager
def terminal_progress() -> Iterator[None]:
    """Show the progress of every long stage the command runs: tqdm bars on a TTY, log lines otherwise."""
    from st_workflow import progress
    from st_workflow.progress_terminal import terminal_sink

    sink = terminal_sink()
    with progress.sinks(*([sink] if sink is not None else [])):
        yield
