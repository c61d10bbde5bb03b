"""`pictor` command line: a thin dispatcher over the library.

Each command lives in its own module under `pictor.cli` and exposes `register(subparsers)`,
which adds its parser and sets `func` to a function `(args) -> int`. Command modules import
heavy libraries (torch, transformers) inside their functions, so `pictor --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pictor import __version__

# Listed explicitly (no discovery by globals()): adding a command means adding its module here.
COMMAND_MODULES = ("data", "train", "generate", "explain", "eval", "clip", "serve",
                   "databricks")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pictor",
        description="Text-to-image diffusion: data, training, sampling, evaluation, serving.",
    )
    parser.add_argument("--version", action="version", version=f"pictor {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"pictor.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
