"""The ``st-workflow`` command line.

Sub-commands live one per module in this package; each module exposes ``register(subparsers)``. They are
discovered at start-up, so adding a command means adding a module.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from st_workflow import __version__
from st_workflow.runtime import apply_base_env


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every discovered sub-command."""
    parser = argparse.ArgumentParser(
        prog="st-workflow",
        description="Turn scientific content into a domain sentence-embedding retriever.",
    )
    parser.add_argument("--version", action="version", version=f"st-workflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "common":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    apply_base_env()
    from st_workflow.config import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    from st_workflow.cli.common import terminal_progress

    try:
        with terminal_progress():
            rc = args.func(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
