"""Search quality, measured honestly: proxy curves, retrained test accuracy and proxy fidelity.

Protocol (every strategy gets the same budget of real children and the same seeds):

1. **Searches.** Each strategy x seed runs ``nasnet search`` with real child training on the
   proxy task (default: digits, N=1, F=8, 2 epochs; reward = validation accuracy on the
   180-image validation split). Reported: the best-so-far and mean top-10 proxy reward against
   children finished (``--report`` writes the HTML page of ``nasnet report`` for every run),
   children per hour, and wall time.
2. **Retrained quality.** The top-k distinct cells of each search (``leaderboard``) are trained
   again from scratch at the transfer size (default N=2, F=12, 20 epochs, the ``nasnet train``
   defaults) with fresh seeds, derived from the cell's hash and never the search's, and scored
   on the **test** split, which no search ever sees. Reported per strategy: the test accuracy
   of the best-found cell (rank 1 by proxy reward) and the mean over the top-k. This is the
   number that counts: picking the maximum of many noisy 180-image validation scores inflates
   the winners' proxy rewards (winner's curse), so a strategy's top-10 proxy reward partly
   measures how many lucky draws it made, not how good its cells are.
3. **Proxy fidelity.** Over ``--fidelity-cells`` distinct cells (``pooled``: drawn uniformly at
   random from every cell the searches trained, with the proxy reward the search measured;
   ``random``: drawn uniformly from the search space and given one proxy run with a fresh
   seed), Kendall's tau-b and Spearman's rho between the proxy reward and the retrained test
   accuracy, with 95 % bootstrap intervals over cells. **Proxy noise:** the first
   ``--noise-cells`` of them get ``--noise-seeds`` proxy runs with fresh seeds each; the pooled
   within-cell standard deviation is compared with the standard deviation of proxy rewards
   between the fidelity cells (ratio; ``1 - ratio**2`` estimates the share of the proxy's
   variance that is due to the cell at all). Proxy re-runs use the child recipe without the
   evaluator's options (no early stopping).

Every per-search number is given as mean +- 95 % interval over seeds (Student t). Results go
to ``--json``; a Markdown table for the README is printed. With ``--out DIR`` the searches and
the retraining results (``DIR/jobs.jsonl``) are kept, and running the same command again
resumes where it stopped.

    python bench/search_quality.py --quick                      # under 10 minutes on 2 cores
    python bench/search_quality.py --budget 200 --seeds 3 --out runs/bench --json q.json \\
        --report q.html --strategy-option ppo:lr=0.005 --strategy-option ppo:batch_size=10
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from nasnet.data import load_dataset
from nasnet.executors import make_executor
from nasnet.files import json_safe
from nasnet.options import OptionError
from nasnet.results import (
    best_so_far,
    leaderboard,
    mean_top,
    plot_runs,
    report_html,
    rewards_in_finish_order,
    run_curve,
)
from nasnet.search import run_search
from nasnet.search_config import SearchConfig
from nasnet.space import SearchSpace
from nasnet.store import Store
from nasnet.train import TrainConfig, train
from nasnet.trials import TrialOutcome, TrialStatus

STRATEGIES = ("ppo", "random", "evolution")

#: Settings of the full benchmark; ``--quick`` replaces them with :data:`QUICK`.
FULL: dict[str, Any] = {
    "budget": 200, "seeds": 3, "child_cells": 1, "child_filters": 8, "child_epochs": 2,
    "retrain_cells": 2, "retrain_filters": 12, "retrain_epochs": 20, "top_k": 5,
    "fidelity_cells": 30, "noise_cells": 5, "noise_seeds": 3, "image_size": None,
}  # fmt: skip
QUICK: dict[str, Any] = {
    "budget": 6, "seeds": 3, "child_cells": 1, "child_filters": 4, "child_epochs": 1,
    "retrain_cells": 1, "retrain_filters": 8, "retrain_epochs": 3, "top_k": 3,
    "fidelity_cells": 10, "noise_cells": 3, "noise_seeds": 3, "image_size": 8,
}  # fmt: skip
#: Strategy options of ``--quick`` (6 children): controller updates and an evolving population
#: at all; ``--strategy-option`` overrides them. The full run uses the library's defaults.
QUICK_STRATEGY_OPTIONS: dict[str, dict[str, Any]] = {
    "ppo": {"lr": 0.005, "batch_size": 3},
    "reinforce": {"lr": 0.005, "batch_size": 3},
    "evolution": {"population": 4, "sample_size": 2},
}


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Interval:
    """A mean with the half-width of its confidence interval (NaN when n < 2)."""

    mean: float
    half: float
    n: int

    def __str__(self) -> str:
        return self.format(3)

    def format(self, digits: int) -> str:
        if math.isnan(self.mean):
            return "-"
        if math.isnan(self.half):
            return f"{self.mean:.{digits}f} (n={self.n})"
        return f"{self.mean:.{digits}f} ± {self.half:.{digits}f}"


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean +- the Student-t confidence half-width ``t * s / sqrt(n)`` of ``values``."""
    n = len(values)
    if n == 0:
        return Interval(math.nan, math.nan, 0)
    mean = statistics.fmean(values)
    if n < 2:
        return Interval(mean, math.nan, n)
    t = float(stats.t.ppf(0.5 + confidence / 2, n - 1))
    return Interval(mean, t * statistics.stdev(values) / math.sqrt(n), n)


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either variable handled); NaN when one side is constant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.kendalltau(x, y).statistic)


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson correlation of the average ranks (ties share their mean rank);
    NaN when one side is constant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(x, y).statistic)


def bootstrap_interval(
    x: Sequence[float],
    y: Sequence[float],
    statistic: Callable[[Sequence[float], Sequence[float]], float],
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """95 % percentile bootstrap interval of ``statistic(x, y)``, resampling (x, y) pairs."""
    rng = np.random.default_rng(seed)
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    values = []
    for _ in range(resamples):
        pick = rng.integers(0, len(xs), len(xs))
        value = statistic(xs[pick], ys[pick])
        if not math.isnan(value):
            values.append(value)
    if not values:
        return math.nan, math.nan
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def noise_summary(replicates: Sequence[Sequence[float]], between: Sequence[float]) -> dict:
    """Pooled within-cell std (same cell, different seeds) against the std between cells."""
    variances = [statistics.variance(r) for r in replicates if len(r) > 1]
    within = math.sqrt(statistics.fmean(variances)) if variances else math.nan
    spread = statistics.stdev(between) if len(between) > 1 else math.nan
    ratio = within / spread if spread > 0 else math.nan
    return {
        "within_std": within,
        "between_std": spread,
        "ratio": ratio,
        "cell_share": 1 - ratio**2 if not math.isnan(ratio) else math.nan,
    }


def mean_top_curve(rewards: Sequence[float], k: int) -> list[float]:
    """The mean of the best ``k`` rewards so far after each child."""
    return [float(mean_top(list(rewards[: i + 1]), k) or 0.0) for i in range(len(rewards))]


def mean_curve(curves: Sequence[Sequence[float]]) -> list[float]:
    """Pointwise mean of curves over their common length."""
    length = min((len(c) for c in curves), default=0)
    return [statistics.fmean(c[i] for c in curves) for i in range(length)]


# --------------------------------------------------------------------------- options


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny children, a few minutes")
    p.add_argument("--strategies", default=",".join(STRATEGIES),
                   help="comma-separated; STRATEGY+stop adds early stopping (--stop-quantile) "
                   "to that strategy, e.g. random,random+stop")  # fmt: skip
    p.add_argument("--stop-quantile", type=float, default=0.5,
                   help="early stopping quantile of the +stop arms (default 0.5: the median "
                   "stopping rule)")  # fmt: skip
    p.add_argument("--seeds", type=int, help="search seeds 0..N-1 (full 3, quick 3)")
    p.add_argument("--budget", type=int, help="children per search (full 200, quick 8)")
    p.add_argument("--workers", type=int, default=2, help="children / retrains at once")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--device", default="cpu", help="child and retraining device (cpu, cuda)")
    p.add_argument("--image-size", type=int, help="proxy and retraining images (quick: 8, the "
                   "digits' own size; full: the dataset's default, 16 for digits)")  # fmt: skip
    for name in ("child_cells", "child_filters", "child_epochs", "retrain_cells",
                 "retrain_filters", "retrain_epochs"):  # fmt: skip
        p.add_argument("--" + name.replace("_", "-"), type=int)
    p.add_argument("--retrain-seeds", type=int, default=1, help="fresh seeds per retrained cell")
    p.add_argument("--top-k", type=int, help="cells retrained per search (full 5, quick 3)")
    p.add_argument("--top", type=int, default=10, help="proxy mean top-K (default 10)")
    p.add_argument("--fidelity-cells", type=int, help="cells for the rank correlations")
    p.add_argument("--fidelity-source", choices=("pooled", "random"), default="pooled")
    p.add_argument("--noise-cells", type=int, help="cells whose proxy is re-run")
    p.add_argument("--noise-seeds", type=int, help="proxy runs per noise cell")
    p.add_argument("--strategy-option", action="append", default=[], metavar="S:NAME=VALUE",
                   help="an option of strategy S, e.g. ppo:lr=0.005 (repeatable)")  # fmt: skip
    p.add_argument("--evaluator-option", action="append", default=[], metavar="NAME=VALUE",
                   help="a train-evaluator option for every search (repeatable)")  # fmt: skip
    p.add_argument("--out", help="keep searches and retraining here; rerun to resume")
    p.add_argument("--json", help="write every number to this JSON file")
    p.add_argument("--report", help="write the HTML report (curves of every search) here")
    args = p.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    try:
        args.strategy_options = strategy_options(args.strategy_option, args.strategies, args.quick)
        args.evaluator_options = dict(split_option(o) for o in args.evaluator_option)
    except ValueError as err:
        p.error(str(err))
    return args


def split_option(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def arm_strategy(arm: str) -> str:
    """The strategy of an arm (``random+stop`` -> ``random``)."""
    return arm.split("+", 1)[0]


def strategy_options(texts: list[str], arms: list[str], quick: bool) -> dict[str, dict]:
    """Per-strategy options: ``--quick``'s defaults, then ``S:NAME=VALUE`` overrides."""
    base = QUICK_STRATEGY_OPTIONS if quick else {}
    strategies = sorted({arm_strategy(a) for a in arms})
    options = {s: dict(base.get(s, {})) for s in strategies}
    for text in texts:
        strategy, sep, rest = text.partition(":")
        if not sep or strategy not in options:
            raise ValueError(f"--strategy-option {text!r}: expected S:NAME=VALUE with S one of "
                             f"{', '.join(strategies)}")  # fmt: skip
        name, value = split_option(rest)
        options[strategy][name] = value
    return options


def child_config(args: argparse.Namespace, seed: int = 0) -> TrainConfig:
    """The proxy task: how a search child is trained (never on the test split)."""
    return TrainConfig(dataset=args.dataset, cells=args.child_cells, filters=args.child_filters,
                       epochs=args.child_epochs, image_size=args.image_size, device=args.device,
                       threads=1, seed=seed, eval_test=False)  # fmt: skip


def retrain_config(args: argparse.Namespace, seed: int) -> TrainConfig:
    """The transfer size: a found cell trained from scratch and scored on the test split."""
    return TrainConfig(dataset=args.dataset, cells=args.retrain_cells,
                       filters=args.retrain_filters, epochs=args.retrain_epochs,
                       image_size=args.image_size, device=args.device, threads=1, seed=seed,
                       eval_test=True)  # fmt: skip


def search_config(args: argparse.Namespace, arm: str, seed: int) -> SearchConfig:
    """One arm's search: plain arms train every child to the end (unless
    ``--evaluator-option stop_quantile=...`` says otherwise), ``+stop`` arms stop hopeless
    children at ``--stop-quantile``."""
    strategy, _, variant = arm.partition("+")
    if variant not in ("", "stop"):
        raise OptionError("strategies", f"unknown arm variant {variant!r} in {arm!r}; "
                          "the one variant is STRATEGY+stop")  # fmt: skip
    evaluator_options = {"stop_quantile": None, **args.evaluator_options}
    if variant == "stop":
        evaluator_options["stop_quantile"] = args.stop_quantile
    return SearchConfig(
        strategy=strategy, strategy_options=args.strategy_options[strategy], evaluator="train",
        evaluator_options=evaluator_options, executor="local", workers=args.workers,
        budget=args.budget, seed=seed, child=child_config(args),
    )  # fmt: skip


def fresh_seed(purpose: str, cell_hash: str, index: int) -> int:
    """A seed derived from the cell and a purpose, independent of every search seed."""
    digest = hashlib.sha256(f"bench-{purpose}:{cell_hash}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


# --------------------------------------------------------------------------- searches


@dataclass
class Cell:
    """A distinct cell (canonical hash) with its proxy reward as the search measured it."""

    hash: str
    genotype_json: str
    proxy: float


@dataclass
class SearchRun:
    strategy: str
    seed: int
    directory: str
    seconds: float
    rewards: list[float]
    ranked: list[Cell]
    stopped_early: int
    failed: int
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.strategy}-seed{self.seed}"


def run_searches(args: argparse.Namespace, root: str, cache: JobCache) -> list[SearchRun]:
    runs = []
    for strategy in args.strategies:
        for seed in range(args.seeds):
            runs.append(run_one_search(args, root, cache, strategy, seed))
    return runs


def run_one_search(args, root: str, cache: JobCache, strategy: str, seed: int) -> SearchRun:
    """Run (or resume, or reuse when finished) one search; its wall time is cached."""
    config = search_config(args, strategy, seed)
    directory = os.path.join(root, f"{strategy}-seed{seed}")
    seconds = timed_once(cache, f"search:{strategy}:{seed}:{digest(config.to_dict())}",
                         lambda: run_search(directory, config))  # fmt: skip
    with Store.open(directory, readonly=True) as store:
        trials = store.trials()
        saved_options = dict(store.config().get("strategy_options", {}))
    ranked = ranked_cells(trials)
    run = SearchRun(strategy, seed, directory, seconds,
                    rewards_in_finish_order(trials), ranked,
                    sum(1 for t in trials if t.metrics.get("stopped_early")),
                    sum(1 for t in trials if t.status is TrialStatus.FAILED),
                    saved_options)  # fmt: skip
    print(f"  {run.name}: {len(run.rewards)} children in {run.seconds:.0f} s, best proxy "
          f"{max(run.rewards, default=math.nan):.3f}", flush=True)  # fmt: skip
    return run


def ranked_cells(trials: list, top: int | None = None) -> list[Cell]:
    """The distinct cells of ``trials``, best first as ``nasnet show`` ranks them (``top``: the
    first ``top`` only)."""
    return [Cell(t.hash, t.genotype_json, float(t.reward or 0.0)) for t in leaderboard(trials, top)]


def timed_once(cache: JobCache, key: str, run: Callable[[], Any]) -> float:
    """Wall seconds of ``run()``, run only if ``key`` is not in the cache yet (a rerun with
    ``--out`` reuses the finished work and its measured time)."""

    def timed() -> dict:
        started = time.perf_counter()
        run()
        return {"seconds": time.perf_counter() - started}

    return cache.once(key, timed)["seconds"]


def digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- training jobs


@dataclass(frozen=True)
class Job:
    """One training run outside the searches: a retrain (test split) or a proxy re-run."""

    kind: str  # "retrain" or "proxy"
    cell_hash: str
    genotype_json: str
    config: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.cell_hash}:{digest(self.config)}"


class JobCache:
    """Finished jobs and search timings, one JSON line each (``DIR/jobs.jsonl``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.results: dict[str, dict] = {}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        entry = json.loads(line)
                        self.results[entry["key"]] = entry["result"]

    def get(self, key: str) -> dict | None:
        return self.results.get(key)

    def put(self, key: str, result: dict) -> None:
        self.results[key] = result
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"key": key, "result": result}) + "\n")

    def once(self, key: str, compute: Callable[[], dict]) -> dict:
        """The cached result of ``key``, computed (and stored) only the first time."""
        if self.get(key) is None:
            self.put(key, compute())
        return self.results[key]


_DATA: dict[tuple[str, int | None], Any] = {}


def run_job(task: tuple[str, dict[str, Any]]) -> TrialOutcome:
    """Train one job in a worker process (the dataset is loaded once per process)."""
    genotype_json, config = task
    cfg = TrainConfig.from_dict(config)
    key = (cfg.dataset, cfg.image_size)
    if key not in _DATA:
        _DATA[key] = load_dataset(cfg.dataset, cfg.image_size)
    result = train(json.loads(genotype_json), cfg, dataset=_DATA[key])
    keep = ("val_accuracy", "test_accuracy", "seconds", "params")
    metrics = {name: result.get(name) for name in keep}
    if result.get("status") != "done":
        return TrialOutcome.failed(result.get("reason") or "training failed", metrics)
    return TrialOutcome.done(result.get("val_accuracy"), metrics)


def run_jobs(jobs: list[Job], workers: int, cache: JobCache) -> None:
    """Train the jobs not in the cache on nasnet's local executor: ``workers`` spawned
    processes with one torch thread each; a run whose process dies fails alone."""
    todo = list({job.key: job for job in jobs if cache.get(job.key) is None}.values())
    todo.sort(key=lambda job: job.kind != "retrain")  # long runs first
    print(f"  {len(todo)} training runs ({len(jobs) - len(todo)} cached or repeated)", flush=True)
    if not todo:
        return
    with make_executor("local", workers, fn=run_job) as executor:
        for index, job in enumerate(todo):
            executor.submit(index, (job.genotype_json, job.config))
        for done in range(1, len(todo) + 1):
            result = None
            while result is None:
                result = executor.next_result(timeout=1.0)
            cache.put(todo[result.trial_id].key, job_record(result.outcome))
            if done % 10 == 0 or done == len(todo):
                print(f"    {done}/{len(todo)} done", flush=True)


def job_record(outcome: TrialOutcome) -> dict[str, Any]:
    if outcome.ok:
        return {"status": "done", **outcome.metrics}
    print(f"    a training run failed: {outcome.error}", flush=True)
    return {"status": "failed", "reason": outcome.error, **outcome.metrics}


def retrain_jobs(args: argparse.Namespace, cell: Cell) -> list[Job]:
    return [Job("retrain", cell.hash, cell.genotype_json,
                retrain_config(args, fresh_seed("retrain", cell.hash, i)).to_dict())
            for i in range(args.retrain_seeds)]  # fmt: skip


def proxy_jobs(args: argparse.Namespace, cell: Cell, count: int, purpose: str) -> list[Job]:
    return [Job("proxy", cell.hash, cell.genotype_json,
                child_config(args, fresh_seed(purpose, cell.hash, i)).to_dict())
            for i in range(count)]  # fmt: skip


def job_values(jobs: list[Job], cache: JobCache, metric: str) -> list[float]:
    """The metric of each finished job (failed runs are left out)."""
    results = [cache.get(job.key) or {} for job in jobs]
    return [float(r[metric]) for r in results if r.get("status") == "done" and r.get(metric)
            is not None]  # fmt: skip


def retrained_test(args, cell: Cell, cache: JobCache) -> float | None:
    """A cell's retrained test accuracy, averaged over its fresh seeds."""
    values = job_values(retrain_jobs(args, cell), cache, "test_accuracy")
    return statistics.fmean(values) if values else None


# --------------------------------------------------------------------------- cell selection


def pooled_cells(runs: list[SearchRun]) -> list[Cell]:
    """Every distinct cell the searches trained; a cell found twice keeps the first reward."""
    pool: dict[str, Cell] = {}
    for run in runs:
        for cell in run.ranked:
            pool.setdefault(cell.hash, cell)
    return sorted(pool.values(), key=lambda c: c.hash)


def fidelity_cells(args: argparse.Namespace, runs: list[SearchRun]) -> list[Cell]:
    """``--fidelity-cells`` cells drawn uniformly from the pool or from the search space
    (a random cell's proxy reward is filled in from its proxy run, see :func:`with_proxy`)."""
    rng = random.Random(f"bench-fidelity:{args.fidelity_source}")
    if args.fidelity_source == "pooled":
        pool = pooled_cells(runs)
        return rng.sample(pool, min(args.fidelity_cells, len(pool)))
    space, cells = SearchSpace(), {}
    while len(cells) < args.fidelity_cells:
        genotype = space.sample(rng)
        cells.setdefault(genotype.canonical_hash(), genotype.to_json())
    return [Cell(h, g, math.nan) for h, g in cells.items()]


def with_proxy(args, cells: list[Cell], cache: JobCache) -> list[Cell]:
    """Random cells get the proxy reward of their own proxy run (pooled ones keep theirs)."""
    out = []
    for cell in cells:
        if math.isnan(cell.proxy):
            values = job_values(proxy_jobs(args, cell, 1, "fidelity"), cache, "val_accuracy")
            cell = Cell(cell.hash, cell.genotype_json, values[0] if values else math.nan)
        out.append(cell)
    return out


def all_jobs(args, runs: list[SearchRun], fidelity: list[Cell]) -> list[Job]:
    jobs = [job for run in runs for cell in run.ranked[: args.top_k]
            for job in retrain_jobs(args, cell)]  # fmt: skip
    for cell in fidelity:
        jobs += retrain_jobs(args, cell)
        if math.isnan(cell.proxy):
            jobs += proxy_jobs(args, cell, 1, "fidelity")
    for cell in fidelity[: args.noise_cells]:
        jobs += proxy_jobs(args, cell, args.noise_seeds, "noise")
    return jobs


# --------------------------------------------------------------------------- summaries


def search_numbers(args, run: SearchRun, cache: JobCache) -> dict[str, Any]:
    """One search's numbers: proxy curve and end values, retrained quality of its top-k."""
    top = run.ranked[: args.top_k]
    tests = [retrained_test(args, cell, cache) for cell in top]
    found = [t for t in tests if t is not None]
    return {
        "strategy": run.strategy, "seed": run.seed, "directory": run.directory,
        "strategy_options": run.options, "children": len(run.rewards),
        "stopped_early": run.stopped_early, "failed": run.failed, "seconds": run.seconds,
        "children_per_hour": 3600 * len(run.rewards) / run.seconds if run.seconds else None,
        "proxy_best": max(run.rewards, default=None),
        "proxy_mean_top": mean_top(run.rewards, args.top),
        "best_so_far": best_so_far(run.rewards),
        "mean_top_curve": mean_top_curve(run.rewards, args.top),
        "top_cells": [{"rank": i, "hash": c.hash, "proxy": c.proxy, "test_accuracy": t}
                      for i, (c, t) in enumerate(zip(top, tests, strict=True), 1)],
        "test_best_found": tests[0] if tests else None,
        "test_mean_top_k": statistics.fmean(found) if found else None,
    }  # fmt: skip


SUMMARY_FIELDS = ("proxy_best", "proxy_mean_top", "test_best_found", "test_mean_top_k",
                  "children_per_hour", "seconds")  # fmt: skip


def strategy_summary(numbers: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean +- 95 % t interval over seeds of every per-search number, and the mean curves."""
    out: dict[str, Any] = {"searches": len(numbers)}
    for name in SUMMARY_FIELDS:
        out[name] = asdict(t_interval([n[name] for n in numbers if n[name] is not None]))
    out["best_so_far"] = mean_curve([n["best_so_far"] for n in numbers])
    out["mean_top_curve"] = mean_curve([n["mean_top_curve"] for n in numbers])
    return out


def fidelity_numbers(args, cells: list[Cell], cache: JobCache) -> dict[str, Any]:
    """Rank correlations between proxy reward and retrained test accuracy, and proxy noise."""
    scored = [(c, retrained_test(args, c, cache)) for c in cells]
    pairs = [(c, t) for c, t in scored if t is not None and not math.isnan(c.proxy)]
    proxy, test = [c.proxy for c, _ in pairs], [t for _, t in pairs]
    replicates = [job_values(proxy_jobs(args, c, args.noise_seeds, "noise"), cache,
                             "val_accuracy") for c in cells[: args.noise_cells]]  # fmt: skip
    enough = len(pairs) >= 3
    return {
        "source": args.fidelity_source, "cells": len(pairs),
        "kendall_tau": kendall_tau(proxy, test) if enough else math.nan,
        "kendall_tau_95": bootstrap_interval(proxy, test, kendall_tau) if enough else None,
        "spearman_rho": spearman_rho(proxy, test) if enough else math.nan,
        "spearman_rho_95": bootstrap_interval(proxy, test, spearman_rho) if enough else None,
        "pairs": [{"hash": c.hash, "proxy": c.proxy, "test_accuracy": t} for c, t in pairs],
        "noise": {"cells": len(replicates), "seeds": args.noise_seeds, "replicates": replicates,
                  **noise_summary(replicates, proxy)},
    }  # fmt: skip


# --------------------------------------------------------------------------- output


def interval(data: dict[str, Any], scale: float = 1.0, digits: int = 3) -> str:
    return Interval(data["mean"] * scale, data["half"] * scale, data["n"]).format(digits)


def markdown(args, summary: dict[str, dict], fidelity: dict[str, Any]) -> str:
    """The README's tables: strategies, proxy curve checkpoints, fidelity and noise."""
    k, top = args.top_k, args.top
    lines = [
        f"| strategy | searches | proxy best | proxy mean top-{top} | test acc. of best-found "
        f"cell | test acc. mean top-{k} | children/h | minutes per search |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['searches']} | {interval(s['proxy_best'])} | "
                     f"{interval(s['proxy_mean_top'])} | {interval(s['test_best_found'])} | "
                     f"{interval(s['test_mean_top_k'])} | "
                     f"{interval(s['children_per_hour'], digits=0)} | "
                     f"{interval(s['seconds'], 1 / 60, digits=1)} |")  # fmt: skip
    lines += ["", *curve_table(summary, top), "", *fidelity_table(fidelity)]
    return "\n".join(lines)


def curve_table(summary: dict[str, dict], top: int) -> list[str]:
    length = min((len(s["mean_top_curve"]) for s in summary.values()), default=0)
    marks = sorted({max(1, round(length * q)) for q in (0.25, 0.5, 0.75, 1.0)}) if length else []
    head = " | ".join(f"{m} children" for m in marks)
    lines = [f"| proxy mean top-{top} / best so far (mean over seeds) | {head} |",
             "|---|" + "---|" * len(marks)]  # fmt: skip
    for name, s in summary.items():
        cells = " | ".join(f"{s['mean_top_curve'][m - 1]:.3f} / {s['best_so_far'][m - 1]:.3f}"
                           for m in marks)  # fmt: skip
        lines.append(f"| {name} | {cells} |")
    return lines


def fidelity_table(f: dict[str, Any]) -> list[str]:
    n = f["noise"]

    def ci(pair: tuple[float, float] | None) -> str:
        return "" if pair is None else f" [{pair[0]:.2f}, {pair[1]:.2f}]"

    return [
        "| proxy fidelity | value |", "|---|---|",
        f"| cells ({f['source']}) | {f['cells']} |",
        f"| Kendall tau-b, proxy vs retrained test [95 % bootstrap] | "
        f"{f['kendall_tau']:.3f}{ci(f['kendall_tau_95'])} |",
        f"| Spearman rho [95 % bootstrap] | {f['spearman_rho']:.3f}{ci(f['spearman_rho_95'])} |",
        f"| proxy noise: same cell, {n['seeds']} seeds (std, {n['cells']} cells) | "
        f"{n['within_std']:.4f} |",
        f"| proxy spread between cells (std) | {n['between_std']:.4f} |",
        f"| noise / spread ratio (share of variance due to the cell) | {n['ratio']:.2f} "
        f"({n['cell_share']:.2f}) |",
    ]  # fmt: skip


def write_report(path: str, runs: list[SearchRun], table: str) -> None:
    """``nasnet report``'s page for every search, with the benchmark's tables appended."""
    curves = [run_curve(run.directory) for run in runs]
    page = report_html(curves, plot_runs(curves, window=max(5, len(runs[0].rewards) // 10)))
    extra = f"<h2>Benchmark summary</h2>\n<pre>{html.escape(table)}</pre>\n</body>"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page.replace("</body>", extra, 1))


def machine() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version,
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}  # fmt: skip


# --------------------------------------------------------------------------- main


def check_configs(args: argparse.Namespace) -> None:
    """Every search's options are checked before anything trains (one line, exit 2)."""
    try:
        for strategy in args.strategies:
            search_config(args, strategy, 0).check()
    except OptionError as err:
        sys.exit(f"search_quality: {err}")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    check_configs(args)
    started = time.perf_counter()
    root = args.out or tempfile.mkdtemp(prefix="search-quality-")
    os.makedirs(root, exist_ok=True)
    cache = JobCache(os.path.join(root, "jobs.jsonl"))
    print(f"searches ({len(args.strategies)} strategies x {args.seeds} seeds, budget "
          f"{args.budget}) in {root}", flush=True)  # fmt: skip
    runs = run_searches(args, root, cache)
    search_seconds = time.perf_counter() - started
    print("retraining and proxy re-runs", flush=True)
    chosen = fidelity_cells(args, runs)
    jobs = all_jobs(args, runs, chosen)
    run_jobs(jobs, args.workers, cache)
    numbers = [search_numbers(args, run, cache) for run in runs]
    summary = {s: strategy_summary([n for n in numbers if n["strategy"] == s])
               for s in args.strategies}  # fmt: skip
    fidelity = fidelity_numbers(args, with_proxy(args, chosen, cache), cache)
    table = markdown(args, summary, fidelity)
    wall = time.perf_counter() - started
    print(f"\n{describe(args)}; {failures(runs, jobs, cache)}; wall time {wall / 60:.1f} min "
          f"({search_seconds / 60:.1f} searching); experiments in {root}\n\n{table}")  # fmt: skip
    if args.report:
        write_report(args.report, runs, table)
    if args.json:
        result = {"settings": settings(args), "machine": machine(), "wall_seconds": wall,
                  "search_seconds": search_seconds, "failures": failures(runs, jobs, cache),
                  "strategies": summary, "searches": numbers,
                  "fidelity": fidelity}  # fmt: skip
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(json_safe(result), fh, indent=1)


def failures(runs: list[SearchRun], jobs: list[Job], cache: JobCache) -> str:
    failed_jobs = {j.key for j in jobs if (cache.get(j.key) or {}).get("status") != "done"}
    return (f"{sum(r.failed for r in runs)} failed and {sum(r.stopped_early for r in runs)} "
            f"stopped-early search children, {len(failed_jobs)} failed training runs")  # fmt: skip


def describe(args: argparse.Namespace) -> str:
    size = f"{args.image_size}x{args.image_size}" if args.image_size else "default size"
    return (f"{args.dataset} at {size}, {args.budget} children per search; proxy "
            f"N={args.child_cells} F={args.child_filters} {args.child_epochs} epoch(s); retrained "
            f"N={args.retrain_cells} F={args.retrain_filters} {args.retrain_epochs} epochs x "
            f"{args.retrain_seeds} seed(s), top-{args.top_k}")  # fmt: skip


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in ("strategy_option", "evaluator_option")}


if __name__ == "__main__":
    main()
