"""Weight-sharing search (``--evaluator shared``) on digits: wall time to a final ranking,
architectures scored per second, ranking fidelity against standalone training, and the
supernet's size at digits and CIFAR size.

1. A weight-sharing search (``--strategy``, random by default; ``--budget`` architectures;
   the default child N=1, F=8 on digits; in process, ``--threads`` torch threads) to its
   final ranking.
2. Ranking fidelity: ``--cells`` random cells (not those the search saw) are scored with the
   search's final shared weights on the whole validation split, and trained standalone with
   the search proxy (N=1, F=8, 2 epochs on digits, seed 0); Kendall tau between the two.
3. Parameters and weight memory of the supernet at digits size (N=1, F=8, 16x16, 1 channel)
   and CIFAR size (N=2, F=16, 32x32, 3 channels), B=5, all 13 ops; and the peak resident
   memory of one training step at each size (batch 64).
4. With ``--compare-seeds K``: result quality at equal wall time. For each seed, the
   weight-sharing search above runs to its final ranking (W seconds); standalone ``ppo`` and
   ``random`` searches (default child and small-budget settings, early stopping on, 2 local
   workers: what a user gets) then run with the same seed until W seconds have passed. The
   top ``--top-k`` cells of every search are retrained from scratch with fresh seeds and scored
   on the test split, with ``bench/search_quality.py``'s protocol and job cache; the best-found
   cell's test accuracy and the top-k mean are reported as mean +- 95 % interval over seeds.

    python bench/weight_sharing.py            # budget 300, 30 cells: about 13 minutes on 2 cores
    python bench/weight_sharing.py --quick    # budget 60, 10 cells: about 7 minutes
    python bench/weight_sharing.py --budget 200 --compare-seeds 3 --out runs/ws  # 75 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import search_quality as sq
from nasnet.search import SearchStats, driver_evaluator, run_search
from nasnet.search_config import SearchConfig, default_child
from nasnet.space import SearchSpace
from nasnet.store import Store
from nasnet.strategies.base import SMALL_BUDGET_LIMIT


def shared_directory(root: str, strategy: str, seed: int) -> str:
    name = "shared" if strategy == "random" else f"shared-{strategy}"
    return os.path.join(root, f"{name}-seed{seed}")


def weight_sharing_search(
    args: argparse.Namespace, directory: str, seed: int, cache: sq.JobCache
) -> dict:
    """Run (or reuse, when ``--out`` holds it) one weight-sharing search to its final ranking."""
    config = SearchConfig(
        strategy=args.strategy, evaluator="shared", executor="inprocess",
        executor_options={"threads": args.threads}, budget=args.budget, workers=1, seed=seed,
        evaluator_options=({} if args.warmup is None else {"warmup_steps": args.warmup}),
        reuse=False,
    )  # fmt: skip
    seconds = sq.timed_once(cache, f"ws-search:{seed}:{sq.digest(config.to_dict())}",
                            lambda: run_search(directory, config))  # fmt: skip
    with Store.open(directory, readonly=True) as store:
        trials = store.trials("done")
    measured = sum(t.metrics["seconds"] for t in trials)
    return {"seconds": seconds, "architectures": len(trials),
            "scored_per_second": len(trials) / measured,
            "end_to_end_per_second": len(trials) / seconds}  # fmt: skip


def final_evaluator(directory: str):
    """The shared evaluator holding the finished search's final weights: this process's, or,
    when the search ran in an earlier process (a rerun with ``--out``), restored by resuming
    the finished search (which loads its last saved state and replays what followed)."""
    with Store.open(directory, readonly=True) as store:
        config = SearchConfig.from_dict(store.config())
    evaluator = driver_evaluator(config)
    if evaluator.supernet is None:
        run_search(directory, config)
    return evaluator


def fidelity(args: argparse.Namespace, directory: str, cache: sq.JobCache) -> dict:
    """Kendall tau between the final shared-weight scores of ``--cells`` random cells and
    their standalone proxy accuracy (cached in ``cache``: the same cells every run)."""
    from nasnet.train import train

    evaluator = final_evaluator(directory)
    rng = random.Random(f"bench-fidelity:{args.seed}")
    space = SearchSpace()
    shared, standalone = [], []
    child = default_child()
    child.device, child.threads = "cpu", args.threads

    def standalone_proxy(genotype) -> dict:
        result = train(genotype, child, dataset=evaluator.load_shared_data())
        return {"val_accuracy": result["val_accuracy"]}

    for i in range(args.cells):
        genotype = space.sample(rng)
        shared.append(evaluator.final_metrics(genotype)["val_accuracy"])
        key = f"fidelity-standalone:{sq.digest([genotype.to_dict(), child.to_dict()])}"
        trained = cache.once(key, functools.partial(standalone_proxy, genotype))
        standalone.append(trained["val_accuracy"])
        print(f"  cell {i + 1}/{args.cells}: shared {shared[-1]:.3f}, "
              f"standalone {standalone[-1]:.3f}", flush=True)  # fmt: skip
    from scipy.stats import kendalltau, spearmanr

    return {"cells": args.cells, "kendall_tau": float(kendalltau(shared, standalone)[0]),
            "spearman": float(spearmanr(shared, standalone)[0]),
            "shared": shared, "standalone": standalone}  # fmt: skip


def memory(size: str) -> dict:
    """Supernet size and the peak RSS of building it plus one SGD step (fresh process)."""
    code = f"""
import json, random, resource, torch
from nasnet.space import SearchSpace
from nasnet.supernet import SuperNet, supernet_memory
torch.set_num_threads(1)
size = {size!r}
n, f, image, chans = (1, 8, 16, 1) if size == "digits" else (2, 16, 32, 3)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
space = SearchSpace()
net = SuperNet(space, cells=n, filters=f, num_classes=10, in_chans=chans)
net = net.to(memory_format=torch.channels_last)
built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(64, chans, image, image).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (64,))
rng = random.Random(0)
for _ in range(3):
    loss = torch.nn.functional.cross_entropy(net(x, space.sample(rng)), y)
    opt.zero_grad(); loss.backward(); opt.step()
step = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{**supernet_memory(net),
                  "rss_peak_mb": step / 1024}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


#: A standalone search in the comparison stops on time, not budget; the budget only has to
#: stay below the small-budget limit so that the strategies get their small-budget settings,
#: as a user's would.
STANDALONE_BUDGET = SMALL_BUDGET_LIMIT // 2
METHODS = ("shared", "ppo", "random")


class TimeUp(Exception):
    """Raised from a search's progress callback once its wall-time allowance is spent."""


def standalone_search(
    directory: str, strategy: str, seed: int, seconds: float, cache: sq.JobCache
) -> dict:
    """A standalone search as a user runs it, stopped cleanly (as by Ctrl-C) after ``seconds``;
    children still training then are not counted."""
    config = SearchConfig(strategy=strategy, evaluator="train", executor="local", workers=2,
                          budget=STANDALONE_BUDGET, seed=seed)  # fmt: skip

    def run_until_time_is_up() -> None:
        deadline = time.perf_counter() + seconds

        def on_event(kind: str, stats: SearchStats, trial) -> None:
            if time.perf_counter() > deadline:
                raise TimeUp

        with contextlib.suppress(TimeUp):
            run_search(directory, config, on_event=on_event)

    key = f"timed-search:{strategy}:{seed}:{seconds:.1f}:{sq.digest(config.to_dict())}"
    took = sq.timed_once(cache, key, run_until_time_is_up)
    with Store.open(directory, readonly=True) as store:
        done = store.trials("done")
    return {"seconds": took, "architectures": len(done)}


def top_cells(directory: str, k: int) -> list[sq.Cell]:
    """The search's top ``k`` distinct cells, ranked as ``nasnet show`` ranks them."""
    with Store.open(directory, readonly=True) as store:
        return sq.ranked_cells(store.trials("done"), k)


def retraining_args(args: argparse.Namespace) -> argparse.Namespace:
    """search_quality's settings for retraining found cells (its protocol and job cache)."""
    return sq.parse_args([
        "--dataset", "digits", "--workers", "2", "--retrain-seeds", str(args.retrain_seeds),
        "--retrain-cells", str(args.retrain_cells), "--retrain-filters",
        str(args.retrain_filters), "--retrain-epochs", str(args.retrain_epochs),
    ])  # fmt: skip


def equal_time_comparison(args: argparse.Namespace, root: str, cache: sq.JobCache) -> dict:
    """Weight sharing vs standalone PPO and random search at the weight-sharing search's wall
    time, judged on retrained test accuracy (see the module docstring, item 4)."""
    retrain = retraining_args(args)
    found: dict[str, list[list[sq.Cell]]] = {m: [] for m in METHODS}
    searches: dict[str, list[dict]] = {m: [] for m in METHODS}
    for seed in range(args.seed, args.seed + args.compare_seeds):
        ws_dir = shared_directory(root, args.strategy, seed)
        print(f"seed {seed}: weight-sharing search, {args.budget} architectures", flush=True)
        searches["shared"].append(weight_sharing_search(args, ws_dir, seed, cache))
        found["shared"].append(top_cells(ws_dir, args.top_k))
        seconds = searches["shared"][-1]["seconds"]
        for strategy in METHODS[1:]:
            directory = os.path.join(root, f"{strategy}-seed{seed}")
            print(f"seed {seed}: standalone {strategy} search for {seconds:.0f} s", flush=True)
            searches[strategy].append(standalone_search(directory, strategy, seed, seconds, cache))
            found[strategy].append(top_cells(directory, args.top_k))
            print(f"  {searches[strategy][-1]['architectures']} children finished", flush=True)
    jobs = [job for runs in found.values() for cells in runs for cell in cells
            for job in sq.retrain_jobs(retrain, cell)]  # fmt: skip
    print(f"retraining the top {args.top_k} cells of {len(METHODS) * args.compare_seeds} "
          "searches on digits (test split)", flush=True)  # fmt: skip
    sq.run_jobs(jobs, retrain.workers, cache)
    summary = {}
    for method in METHODS:
        tests = [[sq.retrained_test(retrain, cell, cache) for cell in cells]
                 for cells in found[method]]  # fmt: skip
        best = [t[0] for t in tests if t and t[0] is not None]
        top = [statistics.fmean(v for v in t if v is not None) for t in tests
               if any(v is not None for v in t)]  # fmt: skip
        summary[method] = {
            "seconds": [r["seconds"] for r in searches[method]],
            "architectures": [r["architectures"] for r in searches[method]],
            "best_found_test": best, "best_found_interval": str(sq.t_interval(best)),
            "top_k_test": top, "top_k_interval": str(sq.t_interval(top)),
        }  # fmt: skip
    return {"seeds": args.compare_seeds, "top_k": args.top_k,
            "retrain": {"cells": args.retrain_cells, "filters": args.retrain_filters,
                        "epochs": args.retrain_epochs, "seeds": args.retrain_seeds},
            "methods": summary}  # fmt: skip


def print_comparison(result: dict) -> None:
    print(
        f"\nequal wall time, {result['seeds']} seed(s); retrained N={result['retrain']['cells']}"
        f" F={result['retrain']['filters']}, {result['retrain']['epochs']} epochs, test split"
    )
    print(f"  {'method':8s} {'seconds':>8s} {'cells':>6s}  best-found cell test   "
          f"top-{result['top_k']} mean test")  # fmt: skip
    for method, row in result["methods"].items():
        print(f"  {method:8s} {statistics.fmean(row['seconds']):8.0f} "
              f"{statistics.fmean(row['architectures']):6.0f}  {row['best_found_interval']:20s}  "
              f"{row['top_k_interval']}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--budget", type=int, default=None)
    parser.add_argument("--cells", type=int, default=None)
    parser.add_argument(
        "--warmup", type=int, default=None, help="warm-up steps (default: the shared evaluator's)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--strategy", default="random", help="the weight-sharing search's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="keep the searches and retraining here; rerun to reuse")
    parser.add_argument(
        "--compare-seeds",
        type=int,
        default=0,
        help="seeds of the equal-wall-time comparison (0: skip it)",
    )
    parser.add_argument("--top-k", type=int, default=3, help="cells retrained per search")
    parser.add_argument("--retrain-cells", type=int, default=1)
    parser.add_argument("--retrain-filters", type=int, default=12)
    parser.add_argument("--retrain-epochs", type=int, default=10)
    parser.add_argument("--retrain-seeds", type=int, default=1, help="fresh seeds per cell")
    args = parser.parse_args()
    args.budget = args.budget or (60 if args.quick else 300)
    args.cells = args.cells or (10 if args.quick else 30)
    torch.set_num_threads(args.threads)
    report: dict = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
                    "threads": args.threads, "budget": args.budget}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or tmp
        os.makedirs(root, exist_ok=True)
        cache = sq.JobCache(os.path.join(root, "jobs.jsonl"))
        directory = shared_directory(root, args.strategy, args.seed)
        print(f"weight-sharing search: {args.budget} architectures on digits", flush=True)
        report["search"] = weight_sharing_search(args, directory, args.seed, cache)
        print(json.dumps(report["search"]), flush=True)
        print(f"ranking fidelity over {args.cells} random cells", flush=True)
        report["fidelity"] = fidelity(args, directory, cache)
        if args.compare_seeds:
            report["equal_time"] = equal_time_comparison(args, root, cache)
    for size in ("digits", "cifar"):
        report[f"memory_{size}"] = memory(size)
        print(size, json.dumps(report[f"memory_{size}"]), flush=True)
    f = report["fidelity"]
    s = report["search"]
    print(f"\nsearch: {s['architectures']} architectures in {s['seconds']:.0f} s to a final "
          f"ranking ({s['scored_per_second']:.2f} scored/s inside the evaluator, "
          f"{s['end_to_end_per_second']:.2f}/s end to end)")  # fmt: skip
    print(f"fidelity: Kendall tau {f['kendall_tau']:.3f}, Spearman {f['spearman']:.3f} "
          f"over {f['cells']} cells")  # fmt: skip
    if "equal_time" in report:
        print_comparison(report["equal_time"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"this process's peak RSS: {peak:.0f} MB")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
