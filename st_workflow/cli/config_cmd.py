"""``st-workflow config show|validate|schema``."""

from __future__ import annotations

import argparse
import json

from st_workflow.cli.common import add_config_args, config_from_args
from st_workflow.config import PipelineConfig, dump_config


def _show(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    print(dump_config(cfg), end="")
    return 0


def _validate(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    print(
        f"{args.config}: OK (run_name={cfg.run_name}, {len(cfg.ingest.sources)} ingest sources, "
        f"{len(cfg.training.sources)} training sources, {len(cfg.evaluation.benchmarks)} benchmarks)"
    )
    return 0


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(PipelineConfig.model_json_schema(), indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show, validate or describe configuration")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    show = csub.add_parser("show", help="print the resolved config (extends + --set applied)")
    add_config_args(show)
    show.set_defaults(func=_show)
    val = csub.add_parser("validate", help="check a config file and exit non-zero on errors")
    add_config_args(val)
    val.set_defaults(func=_validate)
    schema = csub.add_parser("schema", help="print the JSON schema with every option's description")
    schema.set_defaults(func=_schema)
