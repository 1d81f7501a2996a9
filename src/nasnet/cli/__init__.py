"""The ``nasnet`` command. Each subcommand lives in its own module of this package and
exposes ``register(subparsers)``.

Exit codes: 0 success; 1 a child or transfer run failed (training diverged); 2 a problem with
the input (bad option, unreadable file, busy experiment): one line on stderr; 130 interrupted
(Ctrl-C); 143 terminated (SIGTERM); 141 the reader of stdout went away. Interrupted and
terminated searches, training runs and transfers stop cleanly, say so, and resume when the same
command is run again.

The library names fields (``child.lr``); a subcommand sets ``flag_of`` to translate a field
into its flag (``--child-lr``), and :func:`main` does so for every error, here in one place.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from rich.console import Console

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
    kind = _nasnet_file_kind(path)
    if kind:
        raise UserError(f"{path}: is the {kind}'s own {os.path.basename(path)}; write elsewhere")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory; give a file name")
    folder = os.path.dirname(path) or "."
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{path}: {folder} is a file, not a folder")
    if not os.path.isdir(folder):
        raise UserError(f"{path}: no such folder {folder}; create it first")
    if not os.access(folder, os.W_OK):
        raise UserError(f"{path}: cannot write in {folder}")


def _nasnet_file_kind(path: str) -> str | None:
    """``"search"``, ``"training run"`` or ``"transfer"`` when ``path`` is one of the files
    of the nasnet folder it would be written in (overwriting it would break that folder)."""
    from nasnet.lock import LOCK_NAME, TRANSFER_LOCK_NAME
    from nasnet.store import DB_NAME
    from nasnet.train import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, RESULT_FILE, RUN_FILES
    from nasnet.transfer import LINEAGE_FILE, POINTER_FILE, TRANSFER_FILE

    folder, name = os.path.split(os.path.realpath(path))

    def has(file: str) -> bool:
        return os.path.exists(os.path.join(folder, file))

    suffixes = ("", "-wal", "-shm", "-journal")
    kinds = {
        "search": (has(DB_NAME), {*(DB_NAME + s for s in suffixes), LOCK_NAME, POINTER_FILE}),
        "training run": (
            has(CONFIG_FILE) and any(map(has, (CHECKPOINT_FILE, METRICS_FILE, RESULT_FILE))),
            {*RUN_FILES, LINEAGE_FILE},
        ),
        "transfer": (has(TRANSFER_FILE), {TRANSFER_FILE, TRANSFER_LOCK_NAME}),
    }
    return next((kind for kind, (found, files) in kinds.items() if found and name in files), None)


def write_failed(path: str, err: OSError, flag: str = "") -> UserError:
    """The one-line error for an output file ``path`` that could not be written (``err``),
    naming ``flag`` when given; a full disk says to free space."""
    from nasnet.files import WriteError

    if isinstance(err, WriteError) and err.filename == path:
        message = str(err)
    else:
        fix = "; free some disk space and run again" if err.errno == errno.ENOSPC else ""
        message = f"{path}: cannot write ({err.strerror or err}){fix}"
    return UserError(f"{flag} {message}" if flag else message)


def stdout_console() -> Console:
    """A console for tables on stdout: the terminal's width, or unlimited when the output is
    piped or redirected (rich's 80 columns would cut table cells short). A reader that goes
    away ends the command like any other write to stdout (exit 141), not rich's exit 1."""
    from rich.console import Console

    class StdoutConsole(Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError

    return StdoutConsole() if sys.stdout.isatty() else StdoutConsole(width=_PIPED_WIDTH)


#: Console width when stdout is not a terminal: wide enough that no table cell is cut.
_PIPED_WIDTH = 1000


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


#: Whether this process received SIGTERM. A library that blocks in native code can swallow the
#: handler's :class:`Terminated` and raise a plain ``KeyboardInterrupt`` instead (Ray's
#: ``ray.wait`` does: its native loop sees only that a signal handler failed), so the exit
#: status follows the signal received, not the exception's class.
_sigterm_received = False


def _terminate(signum: int, frame: object) -> None:
    global _sigterm_received
    _sigterm_received = True
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    from nasnet.options import OptionError
    from nasnet.space import GenotypeError

    try:
        args = build_parser().parse_args(argv)  # imports torch: the first seconds of a command
    except KeyboardInterrupt:
        print("nasnet: interrupted", file=sys.stderr)
        return 130
    global _sigterm_received
    _sigterm_received = False
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM)
    if in_main_thread:
        signal.signal(signal.SIGTERM, _terminate)
    shown = warnings.showwarning
    warnings.showwarning = _one_line_warnings(args.command, shown)
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
    except KeyboardInterrupt as stop:
        if isinstance(stop, Terminated) or _sigterm_received:
            print(f"nasnet {args.command}: terminated{_resume_hint(args)}", file=sys.stderr)
            return 143
        print(f"nasnet {args.command}: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _one_line_warnings(command: str, shown: Callable[..., None]) -> Callable[..., None]:
    """``warnings.showwarning`` for a command: nasnet's own warnings as one line naming the
    command (not Python's two lines of file, line and source); other packages' unchanged."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if os.path.abspath(filename).startswith(package + os.sep):
            print(f"nasnet {command}: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    return show


def _resume_hint(args: argparse.Namespace) -> str:
    """Commands that resume (``set_defaults(resumable=True)``) say how."""
    return "; run the same command again to resume" if getattr(args, "resumable", False) else ""


def _default_flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _fail(command: str, message: str) -> int:
    print(f"nasnet {command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
