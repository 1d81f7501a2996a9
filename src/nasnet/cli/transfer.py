"""``nasnet transfer SEARCH_DIR|FILE.json|NAME --top K ... --out OUT``: retrain the best cells
larger. A rerun with the same ``--out`` resumes, taking every option not given (``--top``
included) from the saved transfer."""

from __future__ import annotations

import argparse
import os

from rich.console import Console

from nasnet.cli import UserError
from nasnet.cli.train import ProgressBar, add_training_options, flag_of, training_values
from nasnet.data import DatasetError, given_spec
from nasnet.files import DirectoryError
from nasnet.lock import ExperimentLocked
from nasnet.options import OptionError
from nasnet.store import StoreError
from nasnet.train import TrainConfig
from nasnet.transfer import (
    DEFAULT_TOP,
    Source,
    TransferError,
    previous_transfer,
    run_transfer,
    sources_to_resume,
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "transfer",
        help="retrain the top cells of a search at a larger size (resumable)",
        description="Retrain the top-K cells of a search (or the cells of a genotype / export "
        "file, or a known genotype such as nasnet_a), stacked deeper and wider, on a dataset; "
        "each run records its lineage (experiment, trial id, canonical hash). Rerunning with "
        "the same --out resumes; options not given are taken from the saved transfer, else "
        "from the defaults.",
    )
    p.add_argument("source", help="a search directory, a genotype or export JSON file, or a "
                   "genotype name (nasnet_a)")  # fmt: skip
    p.add_argument("--top", type=int, help=f"how many of the best cells (default: {DEFAULT_TOP}, "
                   "or the saved transfer's)")  # fmt: skip
    add_training_options(p, leave_out=("--genotype",))
    p.add_argument("--out", required=True, help="output directory, one run per cell")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run, flag_of=flag_of, resumable=True)


def _resolve(args: argparse.Namespace) -> tuple[TrainConfig, list[Source]]:
    """Defaults, overridden by the transfer saved in ``--out``, overridden by the options."""
    try:
        previous = previous_transfer(args.out)
    except TransferError as err:
        raise UserError(str(err)) from None
    saved = (previous or {}).get("config", {})
    values = {**TrainConfig().to_dict(), **saved, **training_values(args)}
    values["dataset"] = given_spec(values["dataset"], saved.get("dataset"))
    config = TrainConfig.from_dict(values)
    config.check()
    try:
        return config, sources_to_resume(args.source, args.top, previous)
    except OptionError:
        raise  # names its flag
    except (TransferError, StoreError, ValueError) as err:
        raise UserError(str(err)) from None


def run(args: argparse.Namespace) -> int:
    if args.top is not None and args.top < 1:
        raise UserError("--top: must be at least 1")
    if os.path.realpath(args.out) == os.path.realpath(args.source):
        raise UserError(f"--out {args.out}: is the source itself; give the transfer its own folder")
    config, sources = _resolve(args)
    console = Console(stderr=True)
    current: list = [None, None]  # rank, its progress bar (one live display at a time)

    def close_bar() -> None:
        if current[1] is not None:
            current[1].__exit__(None, None, None)
        current[:] = [None, None]

    def progress(rank: int, source: Source, event: dict) -> None:
        if rank != current[0]:
            if current[0] is None:  # the first event: every check has passed
                console.print(
                    f"transfer of {len(sources)} cell(s) to {config.dataset}: N={config.cells}, "
                    f"F={config.filters}, {config.epochs} epochs -> {args.out}",
                    soft_wrap=True,
                )
            close_bar()
            trial = "" if source.trial_id is None else f" (trial {source.trial_id})"
            console.print(f"[bold]cell {rank}/{len(sources)}[/] {source.hash}{trial}")
            current[:] = [rank, ProgressBar(console, quiet=args.quiet).__enter__()]
        current[1].update(event)

    try:
        rows = run_transfer(sources, config, args.out, progress)
    except DatasetError as err:
        raise UserError(f"--dataset: {err}") from None
    except (TransferError, ExperimentLocked, DirectoryError) as err:
        raise UserError(str(err)) from None
    finally:
        close_bar()
    failed = 0
    for row in rows:
        if row["status"] == "done":
            print(f"rank {row['rank']} {row['hash']}: val {100 * row['val_accuracy']:.2f} %, "
                  f"test {100 * (row['test_accuracy'] or 0):.2f} %, {row['params']:,} params "
                  f"-> {row['run']}")  # fmt: skip
        else:
            failed += 1
            print(f"rank {row['rank']} {row['hash']}: failed: {row['reason']}")
    return 1 if failed else 0
