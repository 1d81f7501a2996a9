"""``nasnet search`` (run or resume an architecture search), ``nasnet show``, ``nasnet export``
and ``nasnet report`` (read an experiment's store)."""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from nasnet.cli import UserError
from nasnet.executors import executor_names
from nasnet.search import (
    SearchConfig,
    SearchError,
    SearchStats,
    describe_cell,
    leaderboard,
    mean_top,
    resolve_config,
    rewards_in_finish_order,
    run_search,
)
from nasnet.store import Store, StoreError, TrialRecord
from nasnet.strategies import STRATEGIES

#: ``nasnet search`` options: flag -> (SearchConfig field, type, help).
OPTIONS: dict[str, tuple[str, type, str]] = {
    "--strategy": ("strategy", str, f"search strategy: {', '.join(STRATEGIES)}"),
    "--dataset": ("dataset", str, "child dataset: digits, cifar10:PATH, folder:PATH, synthetic"),
    "--budget": ("budget", int, "number of finished (done) children to reach"),
    "--workers": ("workers", int, "children trained at once"),
    "--seed": ("seed", int, "experiment seed (strategy and child seeds derive from it)"),
    "--blocks": ("blocks", int, "B, blocks per cell"),
    "--child-cells": ("child_cells", int, "N, normal cells per stage of each child"),
    "--child-filters": ("child_filters", int, "F, filters of each child's first stage"),
    "--child-epochs": ("child_epochs", int, "training epochs per child"),
    "--child-batch-size": (
        "child_batch_size",
        int,
        "child training batch size (default: nasnet train's)",
    ),
    "--child-lr": ("child_lr", float, "child initial learning rate (default: nasnet train's)"),
    "--image-size": ("image_size", int, "resize child images to this side (default: as stored)"),
    "--evaluator": ("evaluator", str, "train (real child training) or toy (instant test reward)"),
    "--executor": ("executor", str, "local (spawned worker processes), inprocess or ray"),
    "--threads": ("threads", int, "torch threads per worker process (local executor)"),
    "--max-failures": (
        "max_failures",
        int,
        "stop after this many failed children (default: 2 x budget)",
    ),
    "--controller-lr": (
        "controller_lr",
        float,
        "controller Adam lr (default: ppo 0.00035, reinforce 0.0006)",
    ),
    "--controller-batch": ("controller_batch", int, "results per controller update (default: 20)"),
    "--ppo-epochs": ("ppo_epochs", int, "PPO passes over each batch (default: 4)"),
    "--entropy-weight": (
        "entropy_weight",
        float,
        "controller entropy bonus weight (default: 1e-5)",
    ),
    "--population": ("population", int, "evolution population size P (default: 100)"),
    "--sample-size": ("sample_size", int, "evolution tournament sample size S (default: 25)"),
    "--mult-adds-target": (
        "mult_adds_target",
        float,
        "cost-aware reward: mult-add budget M (default: off)",
    ),
    "--cost-weight": ("cost_weight", float, "cost-aware reward exponent w (0: off)"),
    "--ray-address": (
        "ray_address",
        str,
        "ray executor: auto or HOST:PORT of a running cluster (default: start a local one)",
    ),
    "--cpus-per-child": ("cpus_per_child", float, "ray executor: CPUs each child asks for"),
    "--gpus-per-child": (
        "gpus_per_child",
        float,
        "ray executor: GPUs each child asks for (0.25: four children share a GPU)",
    ),
    "--max-retries": (
        "max_retries",
        int,
        "ray executor: retries of a child whose worker process or node died (default: 3)",
    ),
    "--toy-delay": ("toy_delay", float, "toy evaluator: seconds of sleep per child"),
    "--toy-fail-rate": ("toy_fail_rate", float, "toy evaluator: fraction of children that raise"),
    "--toy-crash-rate": ("toy_crash_rate", float, "toy: fraction whose worker process dies"),
    "--toy-noise": ("toy_noise", float, "toy evaluator: reward noise amplitude"),
    "--toy-target-seed": ("toy_target_seed", int, "toy evaluator: seed of the hidden optimum"),
}

CHOICES = {
    "strategy": tuple(STRATEGIES),
    "evaluator": ("train", "toy"),
    "executor": executor_names(),
}


def register(subparsers: Any) -> None:
    """Add ``search``, ``show``, ``export`` and ``report`` to the ``nasnet`` command."""
    _register_search(subparsers)
    p = subparsers.add_parser("show", help="leaderboard and status of a search")
    p.add_argument("dir", help="experiment directory (nasnet search --out)")
    p.add_argument("--top", type=int, default=10, help="cells listed (default: 10)")
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


def _register_search(subparsers: Any) -> None:
    d = SearchConfig()
    p = subparsers.add_parser(
        "search",
        help="search for cells (resumable)",
        description="Search the NASNet space: a strategy proposes cells, workers train them, "
        "results go to DIR/experiment.db. Rerunning with the same --out resumes the search; "
        "options not given keep their saved values.",
    )
    for flag, (name, kind, text) in OPTIONS.items():
        metavar = {int: "N", float: "X"}.get(kind, "NAME")
        default = getattr(d, name)
        text = text if default is None else f"{text} (default: {default})"
        p.add_argument(flag, type=kind, dest=name, metavar=metavar, choices=CHOICES.get(name),
                       help=text)  # fmt: skip
    p.add_argument("--no-reuse", dest="reuse", action="store_const", const=False, default=None,
                   help="train cells again even if an equivalent one was trained")  # fmt: skip
    p.add_argument("--out", required=True, help="experiment directory (resumed if it exists)")
    p.add_argument("--quiet", action="store_true", help="no live display")
    p.set_defaults(func=run_search_command)


# --------------------------------------------------------------------------- nasnet search


def run_search_command(args: argparse.Namespace) -> int:
    names = {name for name, _, _ in OPTIONS.values()} | {"reuse"}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    try:
        saved = Store.open(args.out).config() if Store.exists(args.out) else None
        config = resolve_config(saved, given)
    except (StoreError, SearchError) as err:
        raise UserError(str(err)) from None
    if config.evaluator == "train":
        _check_dataset(config)
    console = Console()
    display = SearchDisplay(config, args.out, console, live=console.is_terminal and not args.quiet)
    try:
        with display:
            stats = run_search(args.out, config, on_event=display.event)
    except (StoreError, SearchError) as err:
        raise UserError(str(err)) from None
    best = "none" if stats.best_reward is None else f"{stats.best_reward:.4f}"
    console.print(
        f"search {'resumed and ' if saved else ''}finished: {stats.finished} children done, "
        f"{stats.failed} failed; best reward {best} (trial {stats.best_trial}). "
        f"See: nasnet show {args.out}"
    )
    return 0


def _check_dataset(config: SearchConfig) -> None:
    from nasnet.data import DatasetError, load_dataset

    try:
        load_dataset(config.dataset, config.image_size)
    except (DatasetError, OSError, ValueError) as err:
        raise UserError(f"--dataset: {err}") from None


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


def _open(directory: str) -> Store:
    try:
        return Store.open(directory, readonly=True)
    except StoreError as err:
        raise UserError(str(err)) from None


def _entry(rank: int, trial: TrialRecord) -> dict[str, Any]:
    return {
        "rank": rank,
        "id": trial.id,
        "hash": trial.hash,
        "reward": trial.reward,
        "val_accuracy": trial.metrics.get("val_accuracy"),
        "test_accuracy": trial.metrics.get("test_accuracy"),
        "params": trial.params,
        "mult_adds": trial.mult_adds,
        "genotype": trial.genotype.to_dict(),
    }


def summarize(directory: str, top: int = 10) -> dict[str, Any]:
    """The object ``nasnet show --json`` prints."""
    store = _open(directory)
    try:
        config, trials, counts = store.config(), store.trials(), store.counts()
    finally:
        store.close()
    ranked = leaderboard(trials, top)
    best = ranked[0] if ranked else None
    return {
        "directory": directory,
        "strategy": config.get("strategy"),
        "budget": config.get("budget"),
        "finished": counts["done"],
        "failed": counts["failed"],
        "running": counts["running"],
        "queued": counts["queued"],
        "best_reward": best.reward if best else None,
        "best_trial": best.id if best else None,
        "mean_top10": mean_top(rewards_in_finish_order(trials), 10),
        "config": config,
        "leaderboard": [_entry(rank, t) for rank, t in enumerate(ranked, 1)],
        "trials": [t.summary() for t in trials],
    }


def run_show(args: argparse.Namespace) -> int:
    from nasnet.transfer import is_transfer_dir, read_transfer, transfers_of

    if is_transfer_dir(args.dir):
        return _show_transfer(args, read_transfer(args.dir))
    summary = summarize(args.dir, args.top)
    summary["transfers"] = transfers_of(args.dir)
    if args.draw and summary["leaderboard"]:
        _draw_best(summary["leaderboard"][0], args.draw)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    console = Console()
    table = Table(title=f"{args.dir}: best cells ({summary['strategy']})")
    for name in ("rank", "trial", "hash", "reward", "val acc", "params", "mult-adds"):
        table.add_column(name, justify="right", no_wrap=True)
    lines = []
    for entry in summary["leaderboard"]:
        genotype = _genotype(entry)
        table.add_row(
            str(entry["rank"]), str(entry["id"]), entry["hash"][:8], _num(entry["reward"]),
            _num(entry["val_accuracy"]), _int(entry["params"]), _int(entry["mult_adds"]),
        )  # fmt: skip
        lines.append(f"{entry['rank']:>3}. normal    {describe_cell(genotype.normal)}")
        lines.append(f"     reduction {describe_cell(genotype.reduction)}")
    console.print(table)
    if lines:
        console.print(
            "cells: op(input state), + add, | concat; states 0 = h_i, 1 = h_i-1, 2+ blocks"
        )
        console.print("\n".join(lines), highlight=False, soft_wrap=True)
    console.print(
        f"finished {summary['finished']} / {summary['budget']}, failed {summary['failed']}, "
        f"running {summary['running']}, queued {summary['queued']}; "
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
        _transfer_table(Console(), args.dir, transfer)
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
            run["status"] if run["status"] == "done" else f"failed: {run['reason']}", run["run"],
        )  # fmt: skip
    console.print(table)
    console.print("lineage: from " + ", ".join(dict.fromkeys(origins)), soft_wrap=True)


def _draw_best(entry: dict[str, Any], path: str) -> None:
    from nasnet.draw import FORMATS, draw_genotype
    from nasnet.space import Genotype

    if not path.lower().endswith(FORMATS):
        raise UserError(f"--draw {path}: unsupported image format; use {', '.join(FORMATS)}")
    draw_genotype(Genotype.from_dict(entry["genotype"]), path, f"best cell {entry['hash'][:8]}")


def _genotype(entry: dict[str, Any]) -> Any:
    from nasnet.space import Genotype

    return Genotype.from_dict(entry["genotype"])


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def run_export(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise UserError("--top: must be at least 1")
    entries = summarize(args.dir, args.top)["leaderboard"]
    if not entries:
        raise UserError(f"{args.dir}: no finished children to export yet")
    _write_text(args.output, json.dumps(entries, indent=2) + "\n")
    if args.split:
        os.makedirs(args.split, exist_ok=True)
        for entry in entries:
            name = f"rank{entry['rank']}-{entry['hash'][:8]}.json"
            _write_text(os.path.join(args.split, name), json.dumps(entry, indent=2) + "\n")
    print(f"wrote {len(entries)} cell(s) to {args.output}")
    return 0


def _write_text(path: str, text: str) -> None:
    try:
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as err:
        raise UserError(f"{path}: cannot write ({err.strerror})") from None


# --------------------------------------------------------------------------- report


def run_report(args: argparse.Namespace) -> int:
    suffix = os.path.splitext(args.output)[1].lower()
    if suffix not in (".png", ".html"):
        raise UserError(f"-o: {args.output} must end in .png or .html")
    if args.window < 1:
        raise UserError("--window: must be at least 1")
    runs = [_run_data(directory) for directory in args.dirs]
    png = plot_runs(runs, args.window)
    if suffix == ".png":
        try:
            with open(args.output, "wb") as fh:
                fh.write(png)
        except OSError as err:
            raise UserError(f"{args.output}: cannot write ({err.strerror})") from None
    else:
        _write_text(args.output, report_html(runs, png))
    print(f"wrote {args.output}")
    return 0


def _run_data(directory: str) -> dict[str, Any]:
    store = _open(directory)
    try:
        config, trials, counts = store.config(), store.trials(), store.counts()
    finally:
        store.close()
    label = os.path.basename(os.path.normpath(directory)) or directory
    return {
        "directory": directory,
        "label": f"{label} ({config.get('strategy')})",
        "strategy": config.get("strategy"),
        "rewards": rewards_in_finish_order(trials),
        "failed": counts["failed"],
        "best": next(iter(leaderboard(trials, 1)), None),
    }


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def best_so_far(values: list[float]) -> list[float]:
    out: list[float] = []
    for value in values:
        out.append(value if not out else max(out[-1], value))
    return out


def plot_runs(runs: list[dict[str, Any]], window: int) -> bytes:
    """PNG bytes: best-so-far (solid) and moving-average (dashed) reward per experiment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        rewards = run["rewards"]
        if not rewards:
            continue
        x = list(range(1, len(rewards) + 1))
        color = colors[i % len(colors)]
        ax.plot(x, best_so_far(rewards), color=color, label=f"{run['label']} best so far")
        ax.plot(x, moving_average(rewards, window), color=color, linestyle="--",
                label=f"{run['label']} mean of last {window}")  # fmt: skip
    ax.set_xlabel("number of children finished")
    ax.set_ylabel("reward (validation accuracy)")
    ax.set_title("Search progress")
    ax.grid(alpha=0.3)
    if any(run["rewards"] for run in runs):
        ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def report_html(runs: list[dict[str, Any]], png: bytes) -> str:
    """A small self-contained page: the plot (base64 PNG) and a table per experiment."""
    rows = []
    for run in runs:
        rewards = run["rewards"]
        cells = [
            html.escape(run["directory"]), html.escape(str(run["strategy"])), str(len(rewards)),
            str(run["failed"]), _num(max(rewards) if rewards else None),
            _num(mean_top(rewards, 5)), _num(mean_top(rewards, 10)),
            _num(sum(rewards) / len(rewards) if rewards else None),
        ]  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = ("experiment", "strategy", "finished", "failed", "best", "mean top-5", "mean top-10",
            "mean")  # fmt: skip
    image = base64.b64encode(png).decode("ascii")
    cells = "".join(_best_cell_html(run) for run in runs if run.get("best") is not None)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>nasnet search report</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>\n"
        "<h1>nasnet search report</h1>\n"
        f"<img alt='reward against children' src='data:image/png;base64,{image}'>\n"
        "<table><tr>"
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr>\n"
        + "\n".join(rows)
        + "\n</table>\n"
        + cells
        + "</body></html>\n"
    )


def _best_cell_html(run: dict[str, Any]) -> str:
    """The best cell pair of one experiment as an inline SVG diagram."""
    from nasnet.draw import genotype_svg

    best = run["best"]
    title = f"trial {best.id}, reward {best.reward:.4f}, hash {best.hash[:8]}"
    return (
        f"<h2>{html.escape(run['label'])}: best cell</h2>\n"
        f"<div>{genotype_svg(best.genotype, title)}</div>\n"
    )
