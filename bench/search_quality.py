"""Search quality at equal budgets: PPO vs random search vs regularized evolution.

Every strategy runs the same budget of children with the same seeds (children are trained for
real on the built-in digits data unless ``--evaluator toy``), and the script prints, per
strategy, the mean over seeds of the mean top-10 reward (validation accuracy) with its standard
deviation, and the same for the best child. A short run::

    python bench/search_quality.py --budget 30 --seeds 3

The controller settings default to the small-budget values documented in the README
(``--controller-lr 0.005 --controller-batch 10``; evolution ``P=10, S=3``) because the paper's
PPO settings (lr 0.00035, batch 20) do not move the controller within a few dozen children.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from nasnet.results import mean_top, rewards_in_finish_order
from nasnet.search import run_search
from nasnet.search_config import SearchConfig
from nasnet.store import Store
from nasnet.train import TrainConfig

STRATEGIES = ("ppo", "random", "evolution")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=int, default=30, help="children per search (default: 30)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per strategy (default: 3)")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated list")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--child-epochs", type=int, default=2)
    p.add_argument("--child-cells", type=int, default=1)
    p.add_argument("--child-filters", type=int, default=8)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--evaluator", default="train", choices=("train", "toy"))
    p.add_argument("--controller-lr", type=float, default=0.005)
    p.add_argument("--controller-batch", type=int, default=10)
    p.add_argument("--population", type=int, default=10)
    p.add_argument("--sample-size", type=int, default=3)
    p.add_argument("--top", type=int, default=10, help="mean of the best K (default: 10)")
    p.add_argument("--out", help="keep the experiments here (default: a temporary directory)")
    p.add_argument("--json", help="also write the results to this JSON file")
    return p.parse_args()


def config_for(args: argparse.Namespace, strategy: str, seed: int) -> SearchConfig:
    options: dict = {}
    if strategy in ("ppo", "reinforce"):
        options = {"lr": args.controller_lr, "batch_size": args.controller_batch}
    elif strategy == "evolution":
        options = {"population": args.population, "sample_size": args.sample_size}
    child = TrainConfig(dataset=args.dataset, cells=args.child_cells, filters=args.child_filters,
                        epochs=args.child_epochs, eval_test=False)  # fmt: skip
    return SearchConfig(
        strategy=strategy, strategy_options=options, budget=args.budget, workers=args.workers,
        seed=seed, evaluator=args.evaluator, child=child,
        executor="local" if args.evaluator == "train" else "inprocess",
    )  # fmt: skip


def rewards_of(directory: str) -> list[float]:
    with Store.open(directory, readonly=True) as store:
        return rewards_in_finish_order(store.trials())


def spread(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def main() -> None:
    args = parse_args()
    root = args.out or tempfile.mkdtemp(prefix="search-quality-")
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    results: dict[str, dict] = {}
    for strategy in strategies:
        tops, bests, seconds = [], [], []
        for seed in range(args.seeds):
            directory = os.path.join(root, f"{strategy}-seed{seed}")
            tic = time.perf_counter()
            run_search(directory, config_for(args, strategy, seed))
            seconds.append(time.perf_counter() - tic)
            rewards = rewards_of(directory)
            tops.append(mean_top(rewards, args.top))
            bests.append(max(rewards))
            print(f"{strategy} seed {seed}: top-{args.top} {tops[-1]:.4f}, best {bests[-1]:.4f}, "
                  f"{seconds[-1]:.0f} s", flush=True)  # fmt: skip
        results[strategy] = {"top": tops, "best": bests, "seconds": seconds}
    print(f"\nbudget {args.budget} children x {args.seeds} seeds, evaluator {args.evaluator}, "
          f"child N={args.child_cells} F={args.child_filters} epochs={args.child_epochs}; "
          f"experiments in {root}")  # fmt: skip
    print(f"{'strategy':<10} {'mean top-' + str(args.top):>18} {'best child':>18} {'minutes':>8}")
    for strategy, r in results.items():
        minutes = sum(r["seconds"]) / 60
        print(f"{strategy:<10} {spread(r['top']):>18} {spread(r['best']):>18} {minutes:>8.1f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
