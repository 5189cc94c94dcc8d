"""The ``batmobile-nn`` command line; the subcommands live in ``batmobile_nn/commands/``."""

import argparse
import importlib
from typing import List, Optional

from .commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batmobile-nn", description="Fast equivariant potentials (MACE).")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"batmobile_nn.commands.{name}").register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
