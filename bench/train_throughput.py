"""Training throughput of a NASNet-A child on CPU, and what makes it faster.

Measures, for a NASNet-A child with the CIFAR stem at 32x32 (N=2, F=12: about 0.22 M params,
40 M mult-adds; ``--search-child``: the search's own default child instead, N=1, F=8 on the
16x16 one-channel digits), training images/s through the trainer's own step (forward with the
aux head, backward, gradient clipping, SGD), and prints these ratios:

* layout: the default (``channels_last``) against the same network in plain NCHW eager mode;
* batch size: images/s at batch 32, 64 and 128 in the default layout;
* processes: one child using all T threads against T one-thread children side by side
  (separate processes, aggregate images/s over the same wall-clock window);
* OpenMP wait policy: one child with all threads, ``OMP_WAIT_POLICY=PASSIVE`` against
  ``ACTIVE`` (spinning) - libgomp reads it once, when torch loads, so each runs in a subprocess;
* matmul ceiling: the child's achieved FLOP rate (3 x forward mult-adds x 2 x images/s)
  as a fraction of the GFLOP/s of a large fp32 matmul measured in the same run, for one child
  on all T threads and, with ``processes``, for T one-thread children side by side (how
  ``nasnet search`` runs its children by default).

Variants that are compared run in alternating short rounds and each ratio is the median of the
per-round ratios, so that load from other processes on the machine affects both sides alike.

    python bench/train_throughput.py                   # all sections, about 6 minutes
    python bench/train_throughput.py --quick           # layout, processes, ceiling: ~1 minute
    python bench/train_throughput.py --only layout     # layout,batch,processes,wait,ceiling
    python bench/train_throughput.py --quick --search-child
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

# ``--src DIR`` (read before argparse runs) times another copy of the package, e.g. an older
# checkout's ``src``, so that before/after FLOP fractions come from the same machine and run.
sys.path.insert(
    0,
    sys.argv[sys.argv.index("--src") + 1]
    if "--src" in sys.argv[:-1]
    else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"),
)

from nasnet.counting import count_mult_adds, count_params
from nasnet.data import Dataset, make_synthetic
from nasnet.evaluators.train import cached_dataset
from nasnet.genotypes import NASNET_A
from nasnet.search_config import default_child
from nasnet.train import ChildTrainer, TrainConfig

nasnet_file = sys.modules["nasnet"].__file__


def child_data(args: argparse.Namespace, batch: int) -> tuple[str, Dataset]:
    """(spec, data): the search's digits, or synthetic CIFAR-shaped data."""
    if args.search_child:
        return args.dataset, cached_dataset(args.dataset)  # loaded once per process
    synthetic = make_synthetic(classes=10, channels=3, size=32, train=max(256, batch), val=1,
                               test=1)  # fmt: skip
    return "synthetic", synthetic


def make_trainer(args: argparse.Namespace, channels_last: bool = True, batch: int | None = None):
    """A trainer of the benchmarked child, exactly as :func:`nasnet.train.train` sets up."""
    batch = batch or args.batch_size
    spec, data = child_data(args, batch)
    config = TrainConfig(
        dataset=spec, cells=args.cells, filters=args.filters, batch_size=batch, epochs=1_000,
        channels_last=channels_last,
    )  # fmt: skip
    trainer = ChildTrainer(NASNET_A, config, data)
    trainer.model.train()
    return trainer


def timed_steps(trainer: ChildTrainer, seconds: float, warmup: int = 1) -> float:
    """Images/s of training steps run for about ``seconds`` (after ``warmup`` steps)."""
    n, mid = len(trainer.data.train_y), trainer.total_steps // 2  # drop path active
    batches = [torch.arange(k * trainer.batch, (k + 1) * trainer.batch) % n for k in range(4)]
    for i in range(warmup):
        trainer.step(batches[i % 4], mid)
    images, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds or i < 2:
        trainer.step(batches[i % 4], mid)
        images, i = images + trainer.batch, i + 1
    return images / (time.perf_counter() - start)


def alternate(variants: dict[str, ChildTrainer], rounds: int, seconds: float) -> dict:
    """Run the variants in alternating rounds; images/s per variant and round."""
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for trainer in variants.values():
        timed_steps(trainer, 0.0, warmup=2)  # build oneDNN primitives before timing
    for _ in range(rounds):
        for name, trainer in variants.items():
            rates[name].append(timed_steps(trainer, seconds, warmup=0))
    return rates


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def matmul_gflops(n: int = 2048, seconds: float = 2.0) -> float:
    """Sustained fp32 GFLOP/s of an ``n x n`` matmul with the current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 2:
        torch.mm(a, b)
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


# --------------------------------------------------------------------------- processes


def worker(args: argparse.Namespace) -> None:
    """Child process: warm up, say ``ready``, read ``start end`` (epoch seconds) from stdin,
    then train from ``start`` to ``end`` and print the images it trained on as JSON."""
    torch.set_num_threads(args.threads)
    trainer = make_trainer(args)
    timed_steps(trainer, 0.0, warmup=2)
    print("ready", flush=True)
    start, end = (float(v) for v in sys.stdin.readline().split())
    while time.time() < start:
        time.sleep(0.002)
    images, mid = 0, trainer.total_steps // 2
    while time.time() < end:
        trainer.step(torch.arange(trainer.batch), mid)
        images += trainer.batch
    print(json.dumps({"images": images, "overrun": time.time() - end}), flush=True)


def side_by_side(
    processes: int, threads: int, args: argparse.Namespace, env: dict | None = None
) -> float:
    """Aggregate images/s of ``processes`` children with ``threads`` threads each, all
    training over the same wall-clock window (steps that straddle its end count whole)."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--threads", str(threads),
               "--batch-size", str(args.batch_size), "--cells", str(args.cells),
               "--filters", str(args.filters)]  # fmt: skip
    if args.search_child:
        command.append("--search-child")
    if args.src:
        command += ["--src", args.src]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    environ = {**os.environ, **(env or {})}
    procs = [subprocess.Popen(command, env=environ, **pipes) for _ in range(processes)]
    for p in procs:
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("a benchmark worker failed to start")
    start = time.time() + 0.2
    window = 2 * args.seconds
    for p in procs:
        p.stdin.write(f"{start} {start + window}\n")
        p.stdin.flush()
    reports = [json.loads(p.communicate()[0]) for p in procs]
    seconds = window + statistics.mean(r["overrun"] for r in reports)
    return sum(r["images"] for r in reports) / seconds


# --------------------------------------------------------------------------- report


def report_layout(args: argparse.Namespace, threads: int) -> float:
    variants = {
        "channels_last (default)": make_trainer(args),
        "NCHW eager": make_trainer(args, channels_last=False),
    }
    rates = alternate(variants, args.rounds, args.seconds)
    default, nchw = rates.values()
    for name, values in rates.items():
        print(f"  {name:24s} {statistics.median(values):7.1f} img/s  (rounds: "
              f"{', '.join(f'{v:.0f}' for v in values)})")  # fmt: skip
    ratio = median_ratio(default, nchw)
    print(f"layout ratio channels_last / NCHW ({threads} threads): {ratio:.2f}x")
    return statistics.median(default)


def report_batch_sizes(args: argparse.Namespace) -> None:
    sizes = (32, 64, 128)
    variants = {b: make_trainer(args, batch=b) for b in sizes}
    rates = alternate(variants, args.rounds, args.seconds)
    base = rates[args.batch_size] if args.batch_size in rates else rates[64]
    for size, values in rates.items():
        print(f"  batch {size:4d}: {statistics.median(values):7.1f} img/s "
              f"({median_ratio(values, base):.2f}x batch {args.batch_size})")  # fmt: skip


def report_processes(args: argparse.Namespace, threads: int) -> float | None:
    """Aggregate images/s of ``threads`` one-thread children (None on one core)."""
    if threads < 2:
        print("processes: skipped (one core)")
        return None
    one, many = [], []
    for _ in range(max(1, args.rounds // 3)):
        one.append(side_by_side(1, threads, args))
        many.append(side_by_side(threads, 1, args))
    print(f"  1 child x {threads} threads: {statistics.median(one):7.1f} img/s")
    print(f"  {threads} children x 1 thread: {statistics.median(many):7.1f} img/s (aggregate)")
    print(f"processes ratio {threads} one-thread children / one {threads}-thread child: "
          f"{median_ratio(many, one):.2f}x")  # fmt: skip
    return statistics.median(many)


def report_wait_policy(args: argparse.Namespace, threads: int) -> None:
    """OpenMP's wait policy (read once, when torch loads): spinning threads collapse when
    other processes compete for the cores; passive waiting does not."""
    if threads < 2:
        return
    spin, passive = [], []
    for _ in range(max(1, args.rounds // 3)):
        spin.append(side_by_side(1, threads, args, {"OMP_WAIT_POLICY": "ACTIVE"}))
        passive.append(side_by_side(1, threads, args, {"OMP_WAIT_POLICY": "PASSIVE"}))
    print(f"  OMP_WAIT_POLICY=ACTIVE:  {statistics.median(spin):7.1f} img/s")
    print(f"  OMP_WAIT_POLICY=PASSIVE: {statistics.median(passive):7.1f} img/s")
    print(f"wait-policy ratio PASSIVE / ACTIVE ({threads} threads, load average "
          f"{os.getloadavg()[0]:.1f}): {median_ratio(passive, spin):.2f}x")  # fmt: skip


def report_ceiling(rates: dict[str, float], mult_adds: int, threads: int) -> None:
    """Achieved FLOP rate of each ``rates`` entry (images/s) against one fp32 matmul."""
    peak = matmul_gflops()
    print(f"  fp32 matmul 2048^3 ({threads} threads): {peak:7.1f} GFLOP/s")
    for name, images_per_sec in rates.items():
        achieved = 3 * mult_adds * 2 * images_per_sec / 1e9
        print(f"  {name} (3 x {mult_adds / 1e6:.1f} M mult-adds x 2 x {images_per_sec:.0f} "
              f"img/s): {achieved:7.2f} GFLOP/s")  # fmt: skip
        print(f"fraction of the matmul ceiling, {name}: {achieved / peak:.3f}")


SECTIONS = ("layout", "batch", "processes", "wait", "ceiling")


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    probe = make_trainer(args)
    shape = tuple(probe.data.train_x.shape[1:])
    mult_adds = count_mult_adds(probe.model, shape)
    print(f"NASNet-A child, CIFAR stem, {probe.config.dataset} {shape[1]}x{shape[2]}x{shape[0]}, "
          f"N={args.cells}, F={args.filters}: {count_params(probe.model):,} params, "
          f"{mult_adds / 1e6:.1f} M mult-adds, batch {args.batch_size}, torch "
          f"{torch.__version__}, {threads} threads, package "
          f"{os.path.dirname(os.path.dirname(nasnet_file))}, load average "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"note: the machine is busy (load average {load:.1f} on {os.cpu_count()} cores); "
              "absolute numbers are noisy, paired ratios less so")  # fmt: skip
    rates: dict[str, float] = {}
    if "layout" in args.only or "ceiling" in args.only:
        print("layout:")
        rates[f"one child x {threads} threads"] = report_layout(args, threads)
    if "batch" in args.only:
        print("batch size (channels_last):")
        report_batch_sizes(args)
    if "processes" in args.only:
        print("processes:")
        aggregate = report_processes(args, threads)
        if aggregate is not None:
            rates[f"{threads} one-thread children (aggregate)"] = aggregate
    if "wait" in args.only:
        print("OpenMP wait policy (one child, all threads):")
        report_wait_policy(args, threads)
    if "ceiling" in args.only:
        print("matmul ceiling:")
        report_ceiling(rates, mult_adds, threads)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short rounds, no batch-size sweep")
    p.add_argument(
        "--search-child",
        action="store_true",
        help="the search's default child (nasnet.search_config.default_child)",
    )
    p.add_argument("--cells", type=int, default=None, help="default 2 (search child: 1)")
    p.add_argument("--filters", type=int, default=None, help="default 12 (search child: 8)")
    p.add_argument("--batch-size", type=int, default=None, help="default 64")
    p.add_argument("--threads", type=int, default=None, help="default: all cores")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds per comparison")
    p.add_argument("--seconds", type=float, default=None, help="seconds per variant and round")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--src", default=None, help="folder holding the nasnet package to time")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    args = p.parse_args()
    child = default_child() if args.search_child else TrainConfig(cells=2, filters=12)
    args.cells = args.cells or child.cells
    args.filters = args.filters or child.filters
    args.batch_size = args.batch_size or child.batch_size
    args.dataset = child.dataset
    args.only = set(args.only.split(","))
    if args.quick and "--only" not in sys.argv:
        args.only = {"layout", "processes", "ceiling"}
    args.rounds = args.rounds or (4 if args.quick else 12)
    args.seconds = args.seconds or 2.0
    return args


if __name__ == "__main__":
    main()
