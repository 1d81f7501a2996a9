"""The ``nasnet`` command. Each subcommand lives in its own module of this package and
exposes ``register(subparsers)``; expected user errors become one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import importlib
import sys

#: Modules of this package that add subcommands, in the order ``--help`` lists them.
COMMAND_MODULES = ("info", "train", "search", "transfer", "export", "draw")


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nasnet", description="NASNet-style neural architecture search."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"nasnet.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from nasnet.space import GenotypeError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, GenotypeError, FileNotFoundError) as err:
        print(f"nasnet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nasnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
