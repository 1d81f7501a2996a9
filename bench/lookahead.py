"""Throughput of telling results in the order proposed, simulated (no training).

A search tells results to the strategy in the order the children were proposed, and proposes
right after each tell until ``nasnet.search.lookahead(workers)`` children are untold; a
child that finishes before an older one waits to be told, and its worker idles once no
proposal is left to start. This prints the throughput of that rule, and of a lookahead of
only ``workers``, as a fraction of telling results as they come (workers never idle), for
children whose training times are log-normal (``sigma`` 0.2-0.7: times varying by about
20-75 %).

    python bench/lookahead.py
"""

from __future__ import annotations

import argparse
import collections
import heapq
import random

from nasnet.search import lookahead


def makespan(workers: int, ahead: int | None, times: list[float]) -> float:
    """Time to tell every child when at most ``ahead`` are proposed and untold."""
    clock, told, asked, finished = 0.0, 0, 0, set()
    waiting: collections.deque[int] = collections.deque()
    running: list[tuple[float, int]] = []
    while told < len(times):
        while asked < len(times) and (ahead is None or asked - told < ahead):
            waiting.append(asked)
            asked += 1
        while waiting and len(running) < workers:
            child = waiting.popleft()
            heapq.heappush(running, (clock + times[child], child))
        if told in finished:
            told += 1
            continue
        clock, child = heapq.heappop(running)
        finished.add(child)
    return clock


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--children", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print("throughput as a fraction of telling results as they come")
    print(f"{'sigma':>6} {'workers':>8} {'2w-1 (ours)':>12} {'w':>8}")
    for sigma in (0.2, 0.4, 0.7):
        for workers in (2, 4, 8):
            rng = random.Random(args.seed)
            times = [rng.lognormvariate(0.0, sigma) for _ in range(args.children)]
            free = makespan(workers, None, times)
            ours = free / makespan(workers, lookahead(workers), times)
            only = free / makespan(workers, workers, times)
            print(f"{sigma:6.1f} {workers:8d} {ours:12.3f} {only:8.3f}")


if __name__ == "__main__":
    main()
