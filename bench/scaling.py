"""Children per hour with 1 and 2 workers, for the local process pool and for Ray.

Each configuration runs a small search with real child training on digits (one torch thread
per child) and measures steady-state throughput from the trials' own start and finish times,
so process and Ray start-up are left out. It prints the 2-worker / 1-worker efficiency of both
executors side by side, and Ray's scheduling overhead per child measured with the toy
evaluator (Ray against the in-process executor on the same zero-cost trials).

    python bench/scaling.py            # about 5 minutes on 2 cores
    python bench/scaling.py --quick    # fewer, smaller children
"""

from __future__ import annotations

import argparse
import tempfile
import time

from nasnet.search import SearchConfig, run_search
from nasnet.store import Store


def children_per_hour(directory: str) -> float:
    """Finished children / (last finish - first start), per hour."""
    store = Store.open(directory, readonly=True)
    try:
        done = store.trials("done")
    finally:
        store.close()
    span = max(t.finished for t in done) - min(t.started for t in done)
    return 3600.0 * len(done) / span


def measure(executor: str, workers: int, args: argparse.Namespace) -> float:
    config = SearchConfig(
        strategy="random",
        evaluator="train",
        executor=executor,
        budget=args.children,
        workers=workers,
        seed=0,
        reuse=False,
        child_cells=1,
        child_filters=args.filters,
        child_epochs=args.epochs,
    )
    with tempfile.TemporaryDirectory() as directory:
        run_search(directory, config)
        return children_per_hour(directory)


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
    parser.add_argument("--children", type=int, default=8, help="children per configuration")
    parser.add_argument("--filters", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="4 children of F=4")
    args = parser.parse_args()
    if args.quick:
        args.children, args.filters = 4, 4

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
