"""The ``workbench`` command: one sub-command per module in this package.

Each sub-command module has ``add_parser(subparsers)`` and ``run(args) -> int``. Errors the
workbench raises on purpose are printed as one line, without a traceback (exit status 2).
"""

from __future__ import annotations

import argparse
import sys

from ..errors import EnvironmentProblem, UserInputError

COMMANDS = ["infer", "data", "sft", "export", "convert"]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="workbench", description="InternVL Workbench: chat, fine-tune, export, evaluate.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (UserInputError, EnvironmentProblem) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
