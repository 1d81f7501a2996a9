"""Weight-sharing search (``--evaluator shared``) on digits: wall time to a final ranking,
architectures scored per second, ranking fidelity against standalone training, and the
supernet's size at digits and CIFAR size.

1. A weight-sharing search (random strategy, ``--budget`` architectures, the default child
   N=1, F=8 on digits, in process, ``--threads`` torch threads) to its final ranking.
2. Ranking fidelity: ``--cells`` random cells (not those the search saw) are scored with the
   search's final shared weights on the whole validation split, and trained standalone with
   the search proxy (N=1, F=8, 2 epochs on digits, seed 0); Kendall tau between the two.
3. Parameters and weight memory of the supernet at digits size (N=1, F=8, 16x16, 1 channel)
   and CIFAR size (N=2, F=16, 32x32, 3 channels), B=5, all 13 ops; and the peak resident
   memory of one training step at each size (batch 64).

    python bench/weight_sharing.py            # budget 300, 30 cells: about 25 minutes on 2 cores
    python bench/weight_sharing.py --quick    # budget 60, 10 cells: about 5 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

import torch

from nasnet.search import run_search
from nasnet.search_config import SearchConfig, default_child
from nasnet.space import SearchSpace
from nasnet.store import Store


def weight_sharing_search(args: argparse.Namespace, directory: str) -> dict:
    config = SearchConfig(
        strategy="random", evaluator="shared", executor="inprocess",
        executor_options={"threads": args.threads}, budget=args.budget, workers=1,
        seed=args.seed, evaluator_options={"warmup_steps": args.warmup}, reuse=False,
    )  # fmt: skip
    tic = time.perf_counter()
    run_search(directory, config)
    seconds = time.perf_counter() - tic
    with Store.open(directory, readonly=True) as store:
        trials = store.trials("done")
    measured = sum(t.metrics["seconds"] for t in trials)
    return {"seconds": seconds, "architectures": len(trials),
            "scored_per_second": len(trials) / measured,
            "end_to_end_per_second": len(trials) / seconds}  # fmt: skip


def fidelity(args: argparse.Namespace, directory: str) -> dict:
    from nasnet.evaluators import Task, evaluator_for
    from nasnet.store import Store
    from nasnet.train import train

    with Store.open(directory, readonly=True) as store:
        config = SearchConfig.from_dict(store.config())
    task = Task(trial_id=0, genotype={}, seed=0, evaluator="shared",
                options=config.evaluator_options, child=config.child.to_dict(),
                space=config.space.to_dict())  # fmt: skip
    evaluator = evaluator_for(task)  # holds the search's final shared weights
    rng = random.Random(f"bench-fidelity:{args.seed}")
    space = SearchSpace()
    shared, standalone = [], []
    child = default_child()
    child.device, child.threads = "cpu", args.threads
    for i in range(args.cells):
        genotype = space.sample(rng)
        shared.append(evaluator.final_metrics(genotype)["val_accuracy"])
        result = train(genotype, child, dataset=evaluator.load_shared_data())
        standalone.append(result["val_accuracy"])
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
from nasnet.evaluators.shared import safe_fast_paths
with safe_fast_paths():
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(net(x, space.sample(rng)), y)
        opt.zero_grad(); loss.backward(); opt.step()
step = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{**supernet_memory(net),
                  "rss_peak_mb": step / 1024}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--budget", type=int, default=None)
    parser.add_argument("--cells", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.budget = args.budget or (60 if args.quick else 300)
    args.cells = args.cells or (10 if args.quick else 30)
    torch.set_num_threads(args.threads)
    report: dict = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
                    "threads": args.threads, "budget": args.budget}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        directory = os.path.join(tmp, "ws")
        print(f"weight-sharing search: {args.budget} architectures on digits", flush=True)
        report["search"] = weight_sharing_search(args, directory)
        print(json.dumps(report["search"]), flush=True)
        print(f"ranking fidelity over {args.cells} random cells", flush=True)
        report["fidelity"] = fidelity(args, directory)
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
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"this process's peak RSS: {peak:.0f} MB")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
