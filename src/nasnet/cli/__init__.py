"""The ``nasnet`` command. Each subcommand lives in its own module of this package and
exposes ``register(subparsers)``.

Exit codes: 0 success; 1 a child or transfer run failed (training diverged); 2 a problem with
the input (bad option, unreadable file, busy experiment): one line on stderr; 130 interrupted
(Ctrl-C); 143 terminated (SIGTERM). Interrupted and terminated searches and training runs stop
cleanly and resume when run again.

The library names fields (``child.lr``); a subcommand sets ``flag_of`` to translate a field
into its flag (``--child-lr``), and :func:`main` does so for every error, here in one place.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from typing import NoReturn

#: Modules of this package that add subcommands, in the order ``--help`` lists them.
COMMAND_MODULES = ("info", "train", "search", "transfer", "export", "draw")


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def check_output_file(
    path: str, own_files: tuple[str, ...] = (), inputs: tuple[str, ...] = ()
) -> None:
    """Refuse, in one line, an output file that cannot be written, that is one of
    ``own_files`` (the input run's own files) or one of ``inputs`` (files the command reads):
    writing would destroy them."""
    if any(os.path.realpath(path) == os.path.realpath(own) for own in own_files):
        raise UserError(f"{path}: is the run's own {os.path.basename(path)}; write elsewhere")
    if any(os.path.realpath(path) == os.path.realpath(given) for given in inputs):
        raise UserError(f"{path}: is also the file this command reads; write elsewhere")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory; give a file name")
    folder = os.path.dirname(path) or "."
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{path}: {folder} is a file, not a folder")
    if not os.path.isdir(folder):
        raise UserError(f"{path}: no such folder {folder}; create it first")
    if not os.access(folder, os.W_OK):
        raise UserError(f"{path}: cannot write in {folder}")


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (a clean stop) but with its own exit status."""


class Parser(argparse.ArgumentParser):
    """Usage errors as one line pointing at ``--help`` (not the whole usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="nasnet", description="NASNet-style neural architecture search.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"nasnet.cli.{name}").register(subparsers)
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    from nasnet.options import OptionError
    from nasnet.space import GenotypeError

    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM)
    if in_main_thread:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args) or 0)
    except OptionError as err:
        flag_of = getattr(args, "flag_of", None) or _default_flag
        return _fail(args.command, f"{flag_of(err.field)}: {err.problem}")
    except (UserError, GenotypeError, FileNotFoundError) as err:
        return _fail(args.command, str(err))
    except BrokenPipeError:  # the reader went away (`nasnet show --json | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Terminated:
        print(f"nasnet {args.command}: terminated; run the same command again to resume",
              file=sys.stderr)  # fmt: skip
        return 143
    except KeyboardInterrupt:
        print(f"nasnet {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _default_flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _fail(command: str, message: str) -> int:
    print(f"nasnet {command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
