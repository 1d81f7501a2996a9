"""Children per hour with 1 and 2 workers, for the local process pool and for Ray.

Each configuration runs a small search with real child training on digits (one torch thread
per child) and measures steady-state throughput from the trials' own finish times: each
worker's first child, which also pays for starting the worker process, is left out. It prints
the 2-worker / 1-worker efficiency of both executors side by side, and Ray's scheduling
overhead per child measured with the toy evaluator (Ray against the in-process executor on the
same zero-cost trials).

    python bench/scaling.py            # about 6 minutes on 2 cores
    python bench/scaling.py --quick    # fewer, smaller children
"""

from __future__ import annotations

import argparse
import tempfile
import time

from nasnet.search import run_search
from nasnet.search_config import SearchConfig
from nasnet.store import Store
from nasnet.train import TrainConfig


def children_per_hour(directory: str, workers: int) -> float:
    """Steady-state children per hour: the children finished after each worker's first one
    (which also pays for starting the worker) over the time since the W-th finish."""
    with Store.open(directory, readonly=True) as store:
        finishes = sorted(t.finished for t in store.trials("done"))
    after_warm_up = finishes[workers - 1 :]
    return 3600.0 * (len(after_warm_up) - 1) / (after_warm_up[-1] - after_warm_up[0])


def measure(executor: str, workers: int, args: argparse.Namespace) -> float:
    config = SearchConfig(
        strategy="random",
        evaluator="train",
        executor=executor,
        budget=args.children,
        workers=workers,
        seed=0,
        reuse=False,
        child=TrainConfig(cells=1, filters=args.filters, epochs=args.epochs, eval_test=False),
    )
    with tempfile.TemporaryDirectory() as directory:
        run_search(directory, config)
        return children_per_hour(directory, workers)


def ray_overhead(trials: int) -> tuple[float, float]:
    """Seconds per zero-cost toy child: in-process, and through Ray (2 workers, warmed up)."""
    costs = []
    for executor in ("inprocess", "ray"):
        with tempfile.TemporaryDirectory() as warm, tempfile.TemporaryDirectory() as directory:
            toy = {"strategy": "random", "evaluator": "toy", "executor": executor, "workers": 2}
            run_search(warm, SearchConfig(budget=4, **toy))  # start Ray's worker processes
            started = time.perf_counter()
            run_search(directory, SearchConfig(budget=trials, **toy))
            costs.append((time.perf_counter() - started) / trials)
    return costs[0], costs[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=12, help="children per configuration")
    parser.add_argument("--filters", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="6 children of F=4, 1 epoch")
    args = parser.parse_args()
    if args.quick:
        args.children, args.filters, args.epochs = 6, 4, 1

    import ray

    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        rates = {
            (executor, workers): measure(executor, workers, args)
            for executor in ("local", "ray")
            for workers in (1, 2)
        }
        local_child, ray_child = ray_overhead(200)
    finally:
        ray.shutdown()
    print(f"{'executor':8} {'1 worker':>14} {'2 workers':>14} {'efficiency':>11}")
    for executor in ("local", "ray"):
        one, two = rates[(executor, 1)], rates[(executor, 2)]
        print(f"{executor:8} {one:11.0f} c/h {two:11.0f} c/h {two / one:10.2f}x")
    print(f"ray / local at 2 workers: {rates[('ray', 2)] / rates[('local', 2)]:.2f}x")
    print(
        f"scheduling overhead per child (toy evaluator): ray {1000 * ray_child:.1f} ms, "
        f"in-process {1000 * local_child:.1f} ms, "
        f"difference {1000 * (ray_child - local_child):.1f} ms"
    )


if __name__ == "__main__":
    main()
