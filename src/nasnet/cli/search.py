"""``nasnet search`` (run or resume an architecture search), ``nasnet show``, ``nasnet export``
and ``nasnet report`` (read an experiment's store). Parsing, calling and printing only: the
search is :mod:`nasnet.search`, the analysis :mod:`nasnet.results`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from nasnet.cli import UserError, check_output_file, stdout_console, write_failed
from nasnet.cli.train import OPTIONS as TRAIN_OPTIONS
from nasnet.files import DirectoryError
from nasnet.lock import LOCK_NAME, ExperimentLocked
from nasnet.options import OptionError, coerce
from nasnet.results import plot_runs, report_html, run_curve, summarize
from nasnet.search import Search, SearchError, SearchStats, open_experiment
from nasnet.search_config import SEARCH_SET_CHILD_FIELDS, SearchConfig
from nasnet.store import DB_NAME, StoreError, TrialRecord
from nasnet.strategies import STRATEGIES
from nasnet.train import CONFIG_FILE, TrainConfig

#: Flags of the search's own fields: flag -> (field, type, help).
SEARCH_FLAGS: dict[str, tuple[str, type, str]] = {
    "--strategy": ("strategy", str, f"search strategy: {', '.join(STRATEGIES)}"),
    "--evaluator": (
        "evaluator",
        str,
        "train (real child training), shared (weight sharing) or toy (instant test reward)",
    ),
    "--executor": ("executor", str, "local (spawned worker processes), inprocess or ray"),
    "--budget": ("budget", int, "number of finished (done) children to reach"),
    "--workers": ("workers", int, "children trained at once"),
    "--seed": ("seed", int, "experiment seed (strategy and child seeds derive from it)"),
    "--blocks": ("blocks", int, "B, blocks per cell"),
    "--max-failures": (
        "max_failures",
        int,
        "stop after this many failures (default: 2 x budget)",
    ),
}

#: Shorthand flags for common options of the parts: flag -> (dotted field, type, help).
#: Every option of every part is also reachable as --PART-option NAME=VALUE.
SHORTHANDS: dict[str, tuple[str, type, str]] = {
    "--dataset": ("child.dataset", str, "child data: digits, cifar10:PATH, folder:PATH, ..."),
    "--image-size": ("child.image_size", int, "resize child images to this side"),
    "--controller-lr": ("strategy_options.lr", float, "ppo/reinforce: controller Adam lr"),
    "--controller-batch": ("strategy_options.batch_size", int, "ppo/reinforce: results per update"),
    "--strategy-settings": ("strategy_options.settings", str, "ppo/reinforce/evolution: auto "
                            "(small-budget values under 2,000 children), small or paper"),
    "--ppo-epochs": ("strategy_options.epochs", int, "ppo: passes over each batch"),
    "--entropy-weight": ("strategy_options.entropy_weight", float, "ppo/reinforce: entropy bonus"),
    "--population": ("strategy_options.population", int, "evolution: population size P"),
    "--sample-size": ("strategy_options.sample_size", int, "evolution: tournament sample S"),
    "--stop-quantile": ("evaluator_options.stop_quantile", float, "train: early stopping "
                        "quantile (new searches: 0.5; --evaluator-option stop_quantile=none: off)"),
    "--mult-adds-target": ("evaluator_options.mult_adds_target", float, "cost-aware: mult-adds M"),
    "--cost-weight": ("evaluator_options.cost_weight", float, "cost-aware reward exponent w"),
    "--toy-delay": ("evaluator_options.delay", float, "toy: seconds of sleep per child"),
    "--toy-fail-rate": ("evaluator_options.fail_rate", float, "toy: fraction of children failing"),
    "--toy-crash-rate": ("evaluator_options.crash_rate", float, "toy: fraction whose process dies"),
    "--toy-noise": ("evaluator_options.noise", float, "toy: reward noise amplitude"),
    "--toy-target-seed": ("evaluator_options.target_seed", int, "toy: seed of the hidden optimum"),
    "--threads": ("executor_options.threads", int, "torch threads per child (local, ray: 1)"),
    "--ray-address": ("executor_options.address", str, "ray: auto or HOST:PORT of a cluster"),
    "--cpus-per-child": ("executor_options.cpus_per_child", float, "ray: CPUs per child"),
    "--gpus-per-child": ("executor_options.gpus_per_child", float, "ray: GPUs per child"),
    "--max-retries": ("executor_options.max_retries", int, "ray: retries of a lost child"),
}  # fmt: skip

#: ``nasnet train`` flags that a search child takes with a ``--child-`` prefix.
CHILD_FLAGS: dict[str, tuple[str, type, str]] = {
    "--child-" + flag[2:]: (f"child.{name}", kind, text)
    for flag, (name, kind, text) in TRAIN_OPTIONS.items()
    if name not in SEARCH_SET_CHILD_FIELDS | {"dataset", "image_size", "threads"}
}

#: Generic ``--PART-option NAME=VALUE`` flags: flag -> the config field they fill.
PART_OPTION_FLAGS = {
    "--strategy-option": "strategy_options",
    "--evaluator-option": "evaluator_options",
    "--executor-option": "executor_options",
    "--child-option": "child",
}

FIELD_FLAGS = {field: flag for flags in (SEARCH_FLAGS, SHORTHANDS, CHILD_FLAGS)
               for flag, (field, _, _) in flags.items()}  # fmt: skip


def flag_of(field: str) -> str:
    """The command-line spelling of a search config field (errors name flags, not fields)."""
    if field == "reuse":
        return "--no-reuse"
    if field in FIELD_FLAGS:
        return FIELD_FLAGS[field]
    part, _, name = field.partition(".")
    for flag, target in PART_OPTION_FLAGS.items():
        if part == target and name:
            return f"{flag} {name}"
    return f"--{field.replace('_', '-')}"


#: Cells ``nasnet show`` lists for a search when ``--top`` is not given.
SHOW_TOP = 10


def register(subparsers: Any) -> None:
    """Add ``search``, ``show``, ``export`` and ``report`` to the ``nasnet`` command."""
    _register_search(subparsers)
    p = subparsers.add_parser("show", help="leaderboard and status of a search")
    p.add_argument("dir", help="experiment directory (nasnet search --out)")
    p.add_argument("--top", type=int, help=f"cells listed (default: {SHOW_TOP}; a transfer's: "
                   "all)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print a JSON object instead")
    p.add_argument("--draw", metavar="FILE", help="also draw the best cell pair (.svg/.png/.pdf)")
    p.set_defaults(func=run_show)
    p = subparsers.add_parser("export", help="write the best cells of a search as JSON")
    p.add_argument("dir", help="experiment directory")
    p.add_argument("--top", type=int, default=5, help="cells exported (default: 5)")
    p.add_argument("-o", "--output", required=True, help="JSON file (a list of entries)")
    p.add_argument(
        "--split",
        metavar="DIR",
        help="also write each entry to DIR/rankR-HASH.json (readable by --genotype)",
    )
    p.set_defaults(func=run_export)
    p = subparsers.add_parser("report", help="plot reward against children for searches")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="experiment directories")
    p.add_argument("-o", "--output", required=True, help="FILE.png or FILE.html")
    p.add_argument("--window", type=int, default=20, help="moving-average window (default: 20)")
    p.set_defaults(func=run_report)


def _parts_help() -> str:
    """Every option of every strategy, evaluator and executor, from their declarations, with
    the defaults a new search gets."""
    from nasnet.evaluators import EVALUATORS
    from nasnet.executors import EXECUTORS
    from nasnet.strategies import STRATEGIES

    lines = []
    for flag, registry in (("--strategy-option", STRATEGIES), ("--evaluator-option", EVALUATORS),
                           ("--executor-option", EXECUTORS)):  # fmt: skip
        for name, cls in registry.items():
            new_search = getattr(cls, "options_for_new_search", lambda options: options)({})
            defaults = {o: new_search.get(o, d) for o, _, d, _ in cls.Options.describe()}
            options = ", ".join(f"{o}={d}" for o, d in defaults.items()) or "none"
            lines.append(f"{flag} for {name}: {options}")
    return "\n".join(lines)


def _register_search(subparsers: Any) -> None:
    d = SearchConfig()
    p = subparsers.add_parser(
        "search",
        help="search for cells (resumable)",
        description="Search the NASNet space: a strategy proposes cells, workers train them, "
        "results go to DIR/experiment.db. Rerunning with the same --out resumes the search; "
        "options not given keep their saved values.",
        epilog=_parts_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for flag, (name, kind, text) in SEARCH_FLAGS.items():
        default = getattr(d, name)
        text = text if default is None else f"{text} (default: {default})"
        p.add_argument(flag, type=kind, dest=name, metavar=_metavar(kind), help=text)
    for flag, (field, kind, text) in {**SHORTHANDS, **CHILD_FLAGS}.items():
        p.add_argument(flag, type=kind, dest=field, metavar=_metavar(kind), help=text)
    for flag, target in PART_OPTION_FLAGS.items():
        part = target.split("_")[0]
        p.add_argument(flag, action="append", dest=target, metavar="NAME=VALUE",
                       help=f"set any option of the {part} (repeatable)")  # fmt: skip
    p.add_argument("--no-reuse", dest="reuse", action="store_const", const=False, default=None,
                   help="train cells again even if an equivalent one was trained")  # fmt: skip
    p.add_argument("--out", required=True, help="experiment directory (resumed if it exists)")
    p.add_argument("--quiet", action="store_true", help="no live display")
    p.set_defaults(func=run_search_command, flag_of=flag_of, resumable=True)


def _metavar(kind: type) -> str:
    return {int: "N", float: "X"}.get(kind, "NAME")


# --------------------------------------------------------------------------- nasnet search


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options set on the command line, nested as in :meth:`SearchConfig.to_dict`."""
    values = vars(args)
    given: dict[str, Any] = {}
    for _, (name, _, _) in SEARCH_FLAGS.items():
        if values.get(name) is not None:
            given[name] = values[name]
    if values.get("reuse") is not None:
        given["reuse"] = values["reuse"]
    for flag, target in PART_OPTION_FLAGS.items():
        for item in values.get(target) or []:
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise UserError(f"{flag}: expected NAME=VALUE, got {item!r}")
            given.setdefault(target, {})[name.strip()] = _typed(target, name.strip(), value)
    for field in (name for name in FIELD_FLAGS if "." in name):
        if values.get(field) is not None:
            part, _, name = field.partition(".")
            given.setdefault(part, {})[name] = values[field]
    return given


def _typed(target: str, name: str, value: str) -> Any:
    """Child options are typed here (TrainConfig is no Options class); the parts type theirs."""
    if target != "child":
        return value
    fields = {f.name: f for f in TrainConfig.__dataclass_fields__.values()}
    if name not in fields or name in SEARCH_SET_CHILD_FIELDS:
        raise OptionError(f"child.{name}", "not an option of a search child")
    try:
        return coerce(fields[name], value, TrainConfig)
    except OptionError as err:
        raise err.within("child") from None


def run_search_command(args: argparse.Namespace) -> int:
    train_run = os.path.exists(os.path.join(args.out, CONFIG_FILE))
    if train_run and not os.path.exists(os.path.join(args.out, DB_NAME)):
        raise UserError(f"--out {args.out}: holds a 'nasnet train' run; use a folder of its own")
    given = given_options(args)
    console = stdout_console()
    try:
        with open_experiment(args.out, given) as experiment:
            live = console.is_terminal and not args.quiet
            with SearchDisplay(experiment.config, args.out, console, live) as display:
                stats = Search(experiment, on_event=display.event).run()
    except SearchError as err:
        message = str(err)
        if err.field is not None:
            message = message.replace(err.field, flag_of(err.field))
        raise UserError(message) from None
    except (StoreError, ExperimentLocked, DirectoryError) as err:
        raise UserError(str(err)) from None
    best = "none" if stats.best_reward is None else f"{stats.best_reward:.4f}"
    console.print(
        f"search {'resumed and ' if stats.resumed else ''}finished: {stats.finished} children "
        f"done, {stats.failed} failed; best reward {best} (trial {stats.best_trial}). "
        f"See: nasnet show {args.out}",
        soft_wrap=True,
    )
    if stats.ranking_warning:
        print(f"nasnet search: warning: {stats.ranking_warning}", file=sys.stderr)
    return 0


class SearchDisplay:
    """Live status of a search (rich) or, when not on a terminal, one line per child."""

    def __init__(self, config: SearchConfig, out: str, console: Console, live: bool) -> None:
        self.config, self.out, self.console = config, out, console
        self.stats: SearchStats | None = None
        self.last = ""
        self.live = (
            Live(get_renderable=self.render, console=console, refresh_per_second=2)
            if live
            else None
        )

    def __enter__(self) -> SearchDisplay:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()

    def event(self, kind: str, stats: SearchStats, trial: TrialRecord | None) -> None:
        self.stats = stats
        if trial is not None:
            self.last = _event_line(kind, stats, trial)
            if self.live is None:
                print(self.last, flush=True)
        elif kind == "start" and self.live is None and stats.replayed:
            print(f"resumed: {stats.finished} done, {stats.replayed} events replayed", flush=True)

    def render(self) -> Table:
        stats = self.stats
        table = Table(
            title=f"nasnet search: {self.out} ({self.config.strategy})", show_header=False
        )
        table.add_column(style="bold")
        table.add_column()
        if stats is not None:
            best = (
                "-"
                if stats.best_reward is None
                else f"{stats.best_reward:.4f} (trial {stats.best_trial})"
            )
            table.add_row("finished", f"{stats.finished} / {stats.budget}")
            table.add_row("failed", str(stats.failed))
            table.add_row("running", str(stats.running))
            table.add_row("best reward", best)
            table.add_row("children / hour", f"{stats.children_per_hour:.1f}")
            table.add_row("elapsed", f"{time.time() - stats.started:.0f} s")
        table.add_row("last", self.last or "-")
        return table


def _event_line(kind: str, stats: SearchStats, trial: TrialRecord) -> str:
    head = f"[{stats.finished}/{stats.budget}] trial {trial.id} {trial.hash[:8]}"
    if kind == "failed":
        return f"{head} failed: {trial.error}"
    best = "-" if stats.best_reward is None else f"{stats.best_reward:.4f}"
    reused = f" (reused trial {trial.reused_from})" if trial.reused_from else ""
    return f"{head} reward {trial.reward:.4f}{reused}; best {best}"


# --------------------------------------------------------------------------- show / export


def _check_top(top: int) -> None:
    if top < 1:
        raise UserError(f"--top: must be at least 1, got {top}")


def _summary(directory: str, top: int) -> dict[str, Any]:
    _check_top(top)
    try:
        return summarize(directory, top)
    except StoreError as err:
        raise UserError(str(err)) from None


def run_show(args: argparse.Namespace) -> int:
    from nasnet.genotypes import cell_summary
    from nasnet.space import Genotype
    from nasnet.transfer import TransferError, is_transfer_dir, read_transfer, transfers_of

    if args.top is not None:
        _check_top(args.top)
    if is_transfer_dir(args.dir):
        try:
            transfer = read_transfer(args.dir)
        except TransferError as err:
            raise UserError(str(err)) from None
        return _show_transfer(args, {**transfer, "runs": transfer["runs"][: args.top]})
    summary = _summary(args.dir, args.top or SHOW_TOP)
    summary["transfers"] = transfers_of(args.dir)
    if args.draw and not summary["leaderboard"]:
        raise UserError(f"--draw {args.draw}: no finished children to draw yet")
    if args.draw:
        _draw_best(summary["leaderboard"][0], args.draw)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    console = stdout_console()
    table = Table(title=f"{args.dir}: best cells ({summary['strategy']})")
    for name in ("rank", "trial", "hash", "reward", "val acc", "params", "mult-adds"):
        table.add_column(name, justify="right", no_wrap=True)
    lines = []
    for entry in summary["leaderboard"]:
        genotype = Genotype.from_dict(entry["genotype"])
        table.add_row(
            str(entry["rank"]), str(entry["id"]), entry["hash"][:8], _num(entry["reward"]),
            _num(entry["val_accuracy"]), _int(entry["params"]), _int(entry["mult_adds"]),
        )  # fmt: skip
        lines.append(f"{entry['rank']:>3}. normal    {cell_summary(genotype.normal)}")
        lines.append(f"     reduction {cell_summary(genotype.reduction)}")
    console.print(table)
    if lines:
        console.print(
            "cells: op(input state), + add, | concat; states 0 = h_i, 1 = h_i-1, 2+ blocks"
        )
        console.print("\n".join(lines), highlight=False, soft_wrap=True)
    stopped = f" ({summary['stopped_early']} stopped early)" if summary["stopped_early"] else ""
    console.print(
        f"finished {summary['finished']} / {summary['budget']}{stopped}, failed "
        f"{summary['failed']}, running {summary['running']}, queued {summary['queued']}; "
        f"best reward {_num(summary['best_reward'])}"
    )
    for transfer in summary["transfers"]:
        _transfer_table(console, transfer["transfer"], transfer)
    return 0


def _show_transfer(args: argparse.Namespace, transfer: dict[str, Any]) -> int:
    if args.draw and transfer["runs"]:
        _draw_best(transfer["runs"][0], args.draw)
    if args.json:
        print(json.dumps(transfer, indent=2))
    else:
        _transfer_table(stdout_console(), args.dir, transfer)
    return 0


def _transfer_table(console: Console, directory: str, transfer: dict[str, Any]) -> None:
    """The retrained cells of a transfer, with their lineage."""
    config = transfer["config"]
    table = Table(
        title=f"{directory}: transfer to {config['dataset']}, N={config['cells']}, "
        f"F={config['filters']}, {config['epochs']} epochs"
    )
    for name in ("rank", "hash", "trial", "search reward", "val acc", "test acc", "params",
                 "status", "run"):  # fmt: skip
        table.add_column(name, no_wrap=True)
    origins = []
    for run in transfer["runs"]:
        origins.append(run["experiment"] or run["genotype_file"] or "-")
        table.add_row(
            str(run["rank"]), run["hash"][:8],
            "-" if run["trial_id"] is None else str(run["trial_id"]), _num(run["search_reward"]),
            _num(run["val_accuracy"]), _num(run["test_accuracy"]), _int(run["params"]),
            run["status"] if run["status"] != "failed" else f"failed: {run['reason']}", run["run"],
        )  # fmt: skip
    console.print(table)
    console.print("lineage: from " + ", ".join(dict.fromkeys(origins)), soft_wrap=True)


def _draw_best(entry: dict[str, Any], path: str) -> None:
    from nasnet.draw import FORMATS, draw_genotype
    from nasnet.space import Genotype

    if not path.lower().endswith(FORMATS):
        raise UserError(f"--draw {path}: unsupported image format; use {', '.join(FORMATS)}")
    check_output_file(path)
    try:
        draw_genotype(Genotype.from_dict(entry["genotype"]), path, f"best cell {entry['hash'][:8]}")
    except OSError as err:
        raise write_failed(path, err, "--draw") from None


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


#: A search directory's files (SQLite's journal files beside the database), never overwritten.
STORE_FILES = (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", f"{DB_NAME}-journal", LOCK_NAME)


def run_export(args: argparse.Namespace) -> int:
    check_output_file(args.output, tuple(os.path.join(args.dir, n) for n in STORE_FILES))
    if os.path.splitext(args.output)[1].lower() != ".json":
        raise UserError(f"-o {args.output}: the cells are written as JSON; name the file .json")
    if args.split and os.path.exists(args.split) and not os.path.isdir(args.split):
        raise UserError(f"--split {args.split}: is a file, not a folder")
    entries = _summary(args.dir, args.top)["leaderboard"]
    if not entries:
        raise UserError(f"{args.dir}: no finished children to export yet")
    _write(args.output, json.dumps(entries, indent=2) + "\n")
    if args.split:
        for entry in entries:
            name = f"rank{entry['rank']}-{entry['hash'][:8]}.json"
            _write(os.path.join(args.split, name), json.dumps(entry, indent=2) + "\n")
    print(f"wrote {len(entries)} cell(s) to {args.output}")
    return 0


def _write(path: str, data: str | bytes) -> None:
    from nasnet.files import atomic_write_bytes

    try:
        atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
    except OSError as err:
        raise write_failed(path, err) from None


# --------------------------------------------------------------------------- report


def run_report(args: argparse.Namespace) -> int:
    suffix = os.path.splitext(args.output)[1].lower()
    if suffix not in (".png", ".html"):
        raise UserError(f"-o: {args.output} must end in .png or .html")
    if args.window < 1:
        raise UserError(f"--window: must be at least 1, got {args.window}")
    check_output_file(args.output)  # as export does: no folder is created on the way
    try:
        runs = [run_curve(directory) for directory in dict.fromkeys(args.dirs)]  # once each
    except StoreError as err:
        raise UserError(str(err)) from None
    png = plot_runs(runs, args.window)
    _write(args.output, png if suffix == ".png" else report_html(runs, png))
    print(f"wrote {args.output}")
    return 0


__all__ = ["flag_of", "given_options", "register"]
