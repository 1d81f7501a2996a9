"""Reading a search's results: the leaderboard, summaries, reward curves, plots and the HTML
report. ``nasnet show`` / ``export`` / ``report`` and :mod:`nasnet.transfer` call these.

Search trials carry validation metrics only (the search never looks at the test split), so
nothing here reports a test accuracy for a search child.
"""

from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass
from typing import Any

from nasnet.lock import is_held
from nasnet.store import Store, TrialRecord
from nasnet.trials import TrialStatus


def leaderboard(trials: list[TrialRecord], top: int | None = None) -> list[TrialRecord]:
    """Done trials with distinct cells (canonical hash), best reward first (ties: lower id);
    a cell's entry is the trial that trained it, not one that reused its result."""
    best: dict[str, TrialRecord] = {}
    for trial in trials:
        if trial.status is not TrialStatus.DONE or trial.reward is None:
            continue
        known = best.get(trial.hash)
        if known is None or (known.reused_from is not None and trial.reused_from is None):
            best[trial.hash] = trial
    ranked = sorted(best.values(), key=lambda t: (-(t.reward or 0.0), t.id))
    return ranked if top is None else ranked[:top]


def rewards_in_finish_order(trials: list[TrialRecord]) -> list[float]:
    """Rewards of the done trials in the order they finished (told to the strategy)."""
    done = [t for t in trials if t.status is TrialStatus.DONE and t.reward is not None]
    done.sort(key=lambda t: (t.tell_seq if t.tell_seq is not None else 0, t.id))
    return [float(t.reward) for t in done]  # type: ignore[arg-type]


def mean_top(rewards: list[float], k: int) -> float | None:
    """Mean of the ``k`` best rewards (of all of them when fewer)."""
    if not rewards:
        return None
    best = sorted(rewards, reverse=True)[:k]
    return sum(best) / len(best)


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


def leaderboard_entry(rank: int, trial: TrialRecord) -> dict[str, Any]:
    """One exported cell: rank, trial, hash, reward, validation accuracy, cost, genotype."""
    return {
        "rank": rank,
        "id": trial.id,
        "hash": trial.hash,
        "reward": trial.reward,
        "val_accuracy": trial.metrics.get("val_accuracy"),
        "params": trial.params,
        "mult_adds": trial.mult_adds,
        "genotype": trial.genotype.to_dict(),  # checked: a damaged one names its trial
    }


def summarize(directory: str, top: int = 10) -> dict[str, Any]:
    """An experiment at a glance (what ``nasnet show --json`` prints)."""
    with Store.open(directory, readonly=True) as store:
        config, trials, counts = store.config(), store.trials(), store.counts()
    if counts["running"] and not is_held(directory):  # its driver was killed: they wait
        counts["queued"] += counts["running"]  # to be run again by the next session
        counts["running"] = 0
    ranked = leaderboard(trials, top)
    best = ranked[0] if ranked else None
    return {
        "directory": directory,
        "strategy": config.get("strategy"),
        "budget": config.get("budget"),
        "finished": counts["done"],
        "stopped_early": sum(bool(t.metrics.get("stopped_early")) for t in trials),
        "failed": counts["failed"],
        "running": counts["running"],
        "queued": counts["queued"],
        "best_reward": best.reward if best else None,
        "best_trial": best.id if best else None,
        "mean_top10": mean_top(rewards_in_finish_order(trials), 10),
        "config": config,
        "leaderboard": [leaderboard_entry(rank, t) for rank, t in enumerate(ranked, 1)],
        "trials": [t.summary() for t in trials],
    }


# --------------------------------------------------------------------------- report


@dataclass
class RunCurve:
    """One experiment's rewards in finish order, for plots and the report."""

    directory: str
    label: str
    strategy: str | None
    rewards: list[float]
    failed: int
    stopped_early: int
    best: TrialRecord | None


def run_curve(directory: str) -> RunCurve:
    with Store.open(directory, readonly=True) as store:
        config, trials, counts = store.config(), store.trials(), store.counts()
    name = os.path.basename(os.path.normpath(directory)) or directory
    strategy = config.get("strategy")
    stopped = sum(bool(t.metrics.get("stopped_early")) for t in trials)
    best = next(iter(leaderboard(trials, 1)), None)
    return RunCurve(directory, f"{name} ({strategy})", strategy, rewards_in_finish_order(trials),
                    counts["failed"], stopped, best)  # fmt: skip


def plot_runs(runs: list[RunCurve], window: int) -> bytes:
    """PNG bytes: best-so-far (solid) and moving-average (dashed) reward per experiment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        if not run.rewards:
            continue
        x = list(range(1, len(run.rewards) + 1))
        color = colors[i % len(colors)]
        ax.plot(x, best_so_far(run.rewards), color=color, label=f"{run.label} best so far")
        ax.plot(x, moving_average(run.rewards, window), color=color, linestyle="--",
                label=f"{run.label} mean of last {window}")  # fmt: skip
    ax.set_xlabel("number of children finished")
    ax.set_ylabel("reward")  # validation accuracy (cost-aware), or a toy or shared score
    ax.set_title("Search progress")
    ax.grid(alpha=0.3)
    if any(run.rewards for run in runs):
        ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def report_html(runs: list[RunCurve], png: bytes) -> str:
    """A small self-contained page: the plot (base64 PNG), a table per experiment and each
    experiment's best cell as an inline SVG diagram."""
    rows = []
    for run in runs:
        rewards = run.rewards
        cells = [
            html.escape(run.directory), html.escape(str(run.strategy)), str(len(rewards)),
            str(run.stopped_early), str(run.failed), _num(max(rewards) if rewards else None),
            _num(mean_top(rewards, 5)), _num(mean_top(rewards, 10)),
            _num(sum(rewards) / len(rewards) if rewards else None),
        ]  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = ("experiment", "strategy", "finished", "stopped early", "failed", "best", "mean top-5",
            "mean top-10", "mean")  # fmt: skip
    image = base64.b64encode(png).decode("ascii")
    cells = "".join(_best_cell_html(run) for run in runs if run.best is not None)
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


def _best_cell_html(run: RunCurve) -> str:
    from nasnet.draw import genotype_svg

    best = run.best
    assert best is not None
    title = f"trial {best.id}, reward {best.reward:.4f}, hash {best.hash[:8]}"
    return (
        f"<h2>{html.escape(run.label)}: best cell</h2>\n"
        f"<div>{genotype_svg(best.genotype, title)}</div>\n"
    )


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


__all__ = [
    "RunCurve",
    "best_so_far",
    "leaderboard",
    "leaderboard_entry",
    "mean_top",
    "moving_average",
    "plot_runs",
    "report_html",
    "rewards_in_finish_order",
    "run_curve",
    "summarize",
]
