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
    "vild.training.tower_cli",
    "vild.recipes.cli",
    "vild.evaluation.cli",
    "vild.inference.cli",
    "vild.export.cli",
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
        check_common_arguments(args)
        result = args.func(args)
    except VildError as e:
        print(f"vild {args.command}: error: {_one_line(e)}", file=sys.stderr)
        if os.environ.get("VILD_DEBUG"):
            raise
        return 1
    except KeyboardInterrupt:
        print(f"vild {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug still gets one line; VILD_DEBUG=1 shows where
        if os.environ.get("VILD_DEBUG"):
            raise
        print(f"vild {args.command}: internal error: {type(e).__name__}: {_one_line(e)} "
              "(run with VILD_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
        return 1
    return int(result or 0)


def check_common_arguments(args: argparse.Namespace) -> None:
    """Flags shared by many commands, checked before any model or data set loads."""
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise VildError(f"--threads must be at least 1, got {threads}")
    max_pixels = getattr(args, "max_pixels", None)
    if max_pixels is not None and max_pixels < 1:
        raise VildError(f"--max-pixels must be at least 1, got {max_pixels}")
    port = getattr(args, "port", None)
    if port is not None and not 1 <= port <= 65535:
        raise VildError(f"--port must be in 1..65535, got {port}")
    device = getattr(args, "device", None)
    if device is not None and str(device) != "auto":
        from vild.device import check_device

        check_device(device)


def _one_line(e: BaseException) -> str:
    from vild.errors import one_line

    return one_line(e, limit=500)


if __name__ == "__main__":
    sys.exit(main())
