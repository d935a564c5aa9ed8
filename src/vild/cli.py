"""The `vild` command. Each stage registers its own subcommands; heavy imports wait until a
subcommand runs so that `vild --help` is instant."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from vild import __version__
from vild.errors import VildError

# (module providing `register(subparsers)`), in the order they appear in --help.
COMMAND_MODULES = (
    "vild.data.cli",
    "vild.teacher.cli",
    "vild.text.cli",
    "vild.regions.cli",
    "vild.training.cli",
    "vild.recipes.cli",
    "vild.evaluation.cli",
    "vild.inference.cli",
    "vild.service.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vild",
        description="Open-vocabulary detection by vision-and-language knowledge distillation.",
    )
    parser.add_argument("--version", action="version", version=f"vild {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):  # stage not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except VildError as e:
        print(f"vild {args.command}: error: {e}", file=sys.stderr)
        if os.environ.get("VILD_DEBUG"):
            raise
        return 1
    except KeyboardInterrupt:
        print(f"vild {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
