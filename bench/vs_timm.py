"""Our NASNet against timm's hand-written NASNet-A: training steps in the same memory layout.

Two configurations, each trained with the same step on both sides (forward, cross-entropy,
backward, SGD with momentum as the search's child trainer runs it: ``nasnet.train.make_sgd``,
torch's fused kernel where it has one), on random inputs:

* ``large64``: ``create_model("nasnet_a_large", num_classes=10, penultimate=480, image_size=64,
  drop_path_keep_prob=1.0, dropout=0.0, pool_padding="timm", auxiliary=False)`` against timm's
  ``NASNetALarge(num_classes=10, num_features=480)`` - the same network (1,393,782 parameters
  each), 64x64, batch 32;
* ``cifar``: the search's own child shape, NASNet-A with the CIFAR stem, N=2, F=12, 32x32,
  batch 64, against the nearest network timm's classes can express (timm hard-wires 6 normal
  cells per stage and the ImageNet stem in ``NASNetALarge``, so its cell classes are stacked
  here the way our builder stacks ours: a 3x3 stem conv + BN, normal cells, ``ReductionCell0``,
  ``FirstCell`` after each reduction). The first cell is assembled from timm's own parts
  (``BranchSeparables``, ``ActConvBn``, its pools and convs) the way TF-slim builds it, as ours
  does: it reads the stem output unprojected as its second input (``NormalCell`` would project
  it first), so both sides compute the same architecture (219,118 parameters and the same
  FLOPs each; the script prints both).

For each configuration and thread count it prints images/s of four variants - ours
channels_last, ours NCHW, timm channels_last, timm NCHW - and the ratios, each the median of
per-round ratios: the variants run in alternating short rounds, so load from other processes
affects all of them alike.

    python bench/vs_timm.py --quick                  # both configs, 1 and 2 threads, ~2 min
    python bench/vs_timm.py --threads 2 --config large64 --rounds 9
    python bench/vs_timm.py --profile                # top ops by self CPU time, ours vs timm
    python bench/vs_timm.py --breakdown --threads 1  # wall time of each ATen op, ours vs timm
    python bench/vs_timm.py --device cuda --amp      # the same comparison on a GPU (bf16)
    python bench/vs_timm.py --before DIR             # also time the package copy in DIR/nasnet
    python bench/vs_timm.py --compile --config cifar --threads 1   # + torch.compile, both sides

timm 1.0.31 comes from the oracle tests' cache (``.pytest_cache/oracles``, installed with
``--no-deps`` by ``tests/oracles.py``; run ``python -m pytest tests/test_pretrained.py`` once),
or from an installed ``timm`` when that cache is absent.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import os
import pkgutil
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def load_timm():
    """timm from the oracle cache (torchvision stubbed, as the tests do), else installed."""
    cache = os.path.join(ROOT, ".pytest_cache", "oracles")
    if os.path.isdir(os.path.join(cache, "timm")):
        sys.path.insert(0, ROOT)
        try:
            from tests.oracles import _StubFinder
        except ImportError:  # pytest missing: the stub is all we need from that module
            _StubFinder = None
        if _StubFinder is not None and not any(isinstance(f, _StubFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, _StubFinder())
        sys.path.insert(0, cache)
    import timm.models.nasnet as timm_nasnet

    return timm_nasnet


def load_nasnet(before: str | None):
    """Our package: from ``src`` (the working tree), or the copy ``before/nasnet``."""
    path = before or os.path.join(ROOT, "src")
    sys.path.insert(0, os.path.abspath(path))
    for name in _nasnet_modules():
        del sys.modules[name]
    module = importlib.import_module("nasnet")
    if before:  # its submodules load on first use (PEP 562): load them all from this copy now
        for info in pkgutil.walk_packages(module.__path__, "nasnet."):
            if not info.name.startswith(("nasnet.cli", "nasnet.__main__", "nasnet.executors.ray")):
                importlib.import_module(info.name)
    sys.path.remove(os.path.abspath(path))
    if before:  # keep both copies importable under distinct names
        for name in _nasnet_modules():
            sys.modules["before_" + name] = sys.modules.pop(name)
    return module


def _nasnet_modules(prefix: str = "") -> list[str]:
    return [m for m in sys.modules if m == prefix + "nasnet" or m.startswith(prefix + "nasnet.")]


@contextlib.contextmanager
def imports_of(module):
    """While building a model of the ``before`` copy, its imports inside functions (``from
    nasnet.x import y``) find that copy's modules, not the working tree's."""
    if module is not sys.modules.get("before_nasnet"):
        yield
        return
    saved = {name: sys.modules.pop(name) for name in _nasnet_modules()}
    for name in _nasnet_modules("before_"):
        sys.modules[name.removeprefix("before_")] = sys.modules[name]
    try:
        yield
    finally:
        for name in _nasnet_modules():
            del sys.modules[name]
        sys.modules.update(saved)


# --------------------------------------------------------------------------- the networks


class TfSlimFirstCell(nn.Module):
    """NASNet-A's normal cell as TF-slim builds the first cell after the CIFAR stem, from
    timm's parts: the stem output ``x_prev`` (``c_stem`` channels) is read unprojected, so the
    separable convolutions of it narrow to ``filters`` in their first layer (timm's
    ``stem_cell=True`` form), and its identity, pools and place in the output are fitted to
    ``filters`` by 1x1 convolutions (with a ReLU before the identity's only)."""

    def __init__(self, timm_nasnet, c_stem: int, filters: int):
        super().__init__()
        tn, f = timm_nasnet, filters

        def conv_bn(c_in: int) -> list[nn.Module]:
            return [tn.create_conv2d(c_in, f, 1), nn.BatchNorm2d(f, eps=0.001, momentum=0.1)]

        def pool_fitted() -> nn.Sequential:
            pool = tn.create_pool2d("avg", 3, 1, count_include_pad=False, padding="")
            return nn.Sequential(pool, *conv_bn(c_stem))

        self.conv_1x1 = tn.ActConvBn(c_stem, f, 1)
        self.comb_iter_0_left = tn.BranchSeparables(f, f, 5, 1, "")
        self.comb_iter_0_right = tn.BranchSeparables(c_stem, f, 3, 1, "", stem_cell=True)
        self.comb_iter_1_left = tn.BranchSeparables(c_stem, f, 5, 1, "", stem_cell=True)
        self.comb_iter_1_right = tn.BranchSeparables(c_stem, f, 3, 1, "", stem_cell=True)
        self.comb_iter_2_left = tn.create_pool2d("avg", 3, 1, count_include_pad=False, padding="")
        self.comb_iter_2_right = tn.ActConvBn(c_stem, f, 1)
        self.comb_iter_3_left = pool_fitted()
        self.comb_iter_3_right = pool_fitted()
        self.comb_iter_4_left = tn.BranchSeparables(f, f, 3, 1, "")
        self.prev_fitted = nn.Sequential(*conv_bn(c_stem))

    def forward(self, x: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
        x_right = self.conv_1x1(x)
        combs = [
            self.comb_iter_0_left(x_right) + self.comb_iter_0_right(x_prev),
            self.comb_iter_1_left(x_prev) + self.comb_iter_1_right(x_prev),
            self.comb_iter_2_left(x_right) + self.comb_iter_2_right(x_prev),
            self.comb_iter_3_left(x_prev) + self.comb_iter_3_right(x_prev),
            self.comb_iter_4_left(x_right) + x_right,
        ]
        return torch.cat([self.prev_fitted(x_prev), *combs], 1)


class TimmCifarChild(nn.Module):
    """timm's NASNet-A cells stacked as our CIFAR-stem builder stacks NASNet-A (N normal cells
    per stage, two reductions, F filters doubling at each), with the first cell TF-slim's: the
    same architecture as ours (timm's BatchNorm epsilon, 1e-3, aside; ours is 1e-5 here)."""

    def __init__(self, timm_nasnet, cells: int = 2, filters: int = 12, num_classes: int = 10):
        super().__init__()
        tn, f = timm_nasnet, filters
        c_stem = 3 * f
        self.stem = nn.Sequential(nn.Conv2d(3, c_stem, 3, 1, 1, bias=False), nn.BatchNorm2d(c_stem))
        layers: list[nn.Module] = []
        prev_prev, prev = c_stem, c_stem  # channels of x_prev and x
        scale = 1
        for stage in range(3):
            if stage:
                layers.append(tn.ReductionCell0(prev_prev, scale * 2 * f, prev, scale * 2 * f))
                scale *= 2
                prev_prev, prev = prev, 4 * scale * f
            for k in range(cells):
                if not stage and k == 0:  # x_prev is the stem output, read unprojected
                    cell = TfSlimFirstCell(tn, c_stem, f)
                elif stage and k == 0:  # x_prev is twice as large: factorized reduction
                    cell = tn.FirstCell(prev_prev, scale * f // 2, prev, scale * f)
                else:
                    cell = tn.NormalCell(prev_prev, scale * f, prev, scale * f)
                layers.append(cell)
                prev_prev, prev = prev, 6 * scale * f
        self.cells = nn.ModuleList(layers)
        self.classifier = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prev_prev = prev = self.stem(x)
        for cell in self.cells:
            prev_prev, prev = prev, cell(prev, prev_prev)
        return self.classifier(torch.relu(prev).mean((2, 3)))


def build(config: str, side: str, nasnet, timm_nasnet) -> tuple[nn.Module, int, int]:
    """(model, image size, batch) of one side of one configuration."""
    if config == "large64":
        if side == "timm":
            return timm_nasnet.NASNetALarge(num_classes=10, num_features=480), 64, 32
        model = nasnet.create_model(
            "nasnet_a_large", num_classes=10, penultimate=480, image_size=64,
            drop_path_keep_prob=1.0, dropout=0.0, pool_padding="timm", auxiliary=False,
        )  # fmt: skip
        return model, 64, 32
    if side == "timm":
        return TimmCifarChild(timm_nasnet), 32, 64
    model = nasnet.build_network(
        nasnet.genotypes.NASNET_A, stem="cifar", cells=2, filters=12, num_classes=10,
        image_size=32, drop_path_keep_prob=1.0, auxiliary=False,
    )  # fmt: skip
    return model, 32, 64


class Trainer:
    """One variant: a model, its optimizer and a fixed random batch, in one memory layout.

    ``make_sgd(params, lr=..., momentum=...)`` builds the optimizer: the working tree's
    :func:`nasnet.train.make_sgd`, as the search's child trainer runs SGD (torch's fused
    kernel where it has one), for every variant alike."""

    def __init__(self, model, size, batch, channels_last, device, amp, make_sgd):
        self.device, self.amp = torch.device(device), amp
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=fmt).train()
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, 3, size, size, generator=g).to(self.device, memory_format=fmt)
        self.y = torch.randint(0, 10, (batch,), generator=g).to(self.device)
        self.opt = make_sgd(list(self.model.parameters()), lr=0.01, momentum=0.9)
        self.batch = batch

    def step(self) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss = F.cross_entropy(self.model(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def rate(self, seconds: float, min_steps: int) -> float:
        """Images/s over at least ``seconds`` and ``min_steps`` steps."""
        self.sync()
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or steps < min_steps:
            self.step()
            steps += 1
            if self.device.type == "cuda" and steps % 10 == 0:
                self.sync()
        self.sync()
        return steps * self.batch / (time.perf_counter() - start)


def forward_flops(model: nn.Module, size: int) -> int:
    """FLOPs of one image's forward pass (convolutions and matmuls) in eval mode, counted on
    the meta device: there our CPU-only fast paths, which reshape some products (dense
    depthwise), are off, so both sides count their convolutions as convolutions."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(torch.zeros(1, 3, size, size, device="meta"))
    return counter.get_total_flops()


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def child_sgd(sides: dict):
    """The working tree's ``make_sgd``: every variant steps with the same optimizer."""
    return sides["ours"][0].train.make_sgd


def compare(config: str, threads: int, args, sides: dict) -> dict[str, float]:
    torch.set_num_threads(threads)
    variants: dict[str, Trainer] = {}
    params, flops = {}, {}
    for side, (nasnet, timm_nasnet) in sides.items():
        layouts = [("channels_last", True, False), ("NCHW", False, False)]
        if args.compile:
            layouts.append(("compiled", True, True))
        for layout, cl, compiled in layouts:
            torch.manual_seed(0)
            with imports_of(nasnet):
                model, size, batch = build(config, "timm" if side == "timm" else "ours",
                                           nasnet, timm_nasnet)  # fmt: skip
            batch = args.batch or batch
            if side not in params:
                params[side] = sum(p.numel() for p in model.parameters())
                flops[side] = forward_flops(model, size)
            trainer = Trainer(model, size, batch, cl, args.device, args.amp, child_sgd(sides))
            if compiled:  # channels_last, as the eager variant it is compared with
                trainer.model = torch.compile(trainer.model)
            variants[f"{side}, {layout}"] = trainer
    if args.skip_nchw:
        variants = {k: v for k, v in variants.items() if not k.endswith("NCHW")}
    for name, trainer in variants.items():  # build oneDNN primitives / cuDNN plans, compile
        start = time.perf_counter()
        for _ in range(args.warmup):
            trainer.step()
        if name.endswith("compiled"):
            print(f"  {name}: compiled in {time.perf_counter() - start:.0f} s", flush=True)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, trainer in variants.items():
            rates[name].append(trainer.rate(args.seconds, args.min_steps))
    print(f"\n{config}, {threads} thread(s), batch {batch}, {args.device}"
          f"{' bf16 autocast' if args.amp else ''}; params "
          + ", ".join(f"{s} {n:,}" for s, n in params.items())
          + "; forward MFLOPs per image "
          + ", ".join(f"{s} {n / 1e6:.1f}" for s, n in flops.items()))  # fmt: skip
    for name, values in rates.items():
        print(f"  {name:28s} {statistics.median(values):8.1f} img/s   rounds: "
              + ", ".join(f"{v:.1f}" for v in values))  # fmt: skip
    result = {name: statistics.median(v) for name, v in rates.items()}

    def ratio(a: str, b: str) -> None:
        if a in rates and b in rates:
            r = median_ratio(rates[a], rates[b])
            result[f"{a} / {b}"] = r
            print(f"  ratio {a} / {b}: {r:.2f}x")

    ratio("ours, channels_last", "timm, channels_last")
    ratio("ours, NCHW", "timm, NCHW")
    ratio("ours, channels_last", "timm, NCHW")
    ratio("ours, channels_last", "ours, NCHW")
    ratio("timm, channels_last", "timm, NCHW")
    ratio("ours, channels_last", "before, channels_last")
    ratio("ours, NCHW", "before, NCHW")
    ratio("before, channels_last", "timm, channels_last")
    ratio("ours, compiled", "ours, channels_last")
    ratio("timm, compiled", "timm, channels_last")
    ratio("ours, compiled", "timm, compiled")
    return result


def warm_trainers(config: str, threads: int, args, sides: dict):
    """(side, channels_last trainer after ``args.warmup`` steps), one side at a time."""
    torch.set_num_threads(threads)
    for side, (nasnet, timm_nasnet) in sides.items():
        torch.manual_seed(0)
        with imports_of(nasnet):
            model, size, batch = build(config, "timm" if side == "timm" else "ours",
                                       nasnet, timm_nasnet)  # fmt: skip
        batch = args.batch or batch
        trainer = Trainer(model, size, batch, True, args.device, args.amp, child_sgd(sides))
        for _ in range(args.warmup):
            trainer.step()
        yield side, trainer


def profile(config: str, threads: int, args, sides: dict) -> None:
    """Top ops by self CPU time of a few channels_last training steps, per side."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for side, trainer in warm_trainers(config, threads, args, sides):
        activities = [ProfilerActivity.CPU]
        if args.device == "cuda":
            activities.append(ProfilerActivity.CUDA)
        with torch_profile(activities=activities) as prof:
            for _ in range(args.profile_steps):
                trainer.step()
            trainer.sync()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) / 1e3 / args.profile_steps
        top = [e for e in prof.events() if e.cpu_parent is None and e.device_type.name == "CPU"]
        line = (
            f"{total:.0f} ms self CPU, {len(top) / args.profile_steps:.0f} top-level ops per step"
        )
        if args.device == "cuda":  # small networks leave the GPU waiting on the CPU's dispatch
            gpu = sum(getattr(e, "self_device_time_total", 0) for e in events) / 1e3
            line += f", {gpu / args.profile_steps:.1f} ms on the GPU"
        print(f"\n{side}, {config}, channels_last, {threads} thread(s): {line}")
        print(events.table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))


def breakdown(config: str, threads: int, args, sides: dict) -> None:
    """Wall time of every ATen op of a few channels_last training steps, per side, summed by
    op and by (op, input shapes).

    Each op is timed around its own call at the dispatcher (a ``TorchDispatchMode``; CPU ops
    are synchronous), so the figures add up to the step's wall time. torch.profiler's self
    CPU times do not, on the VMs measured here: they inflate the memory-bound ops 5-10x (the
    CIFAR child's ReLUs showed as 48-78 ms per step, 6 ms when timed this way) and so misrank
    them. One distortion of this way: while a dispatch mode is on, autograd sums the
    gradients of a tensor with several readers out of place (a new tensor each time), so
    ``add`` reads higher than in an untimed step."""
    from torch.utils._python_dispatch import TorchDispatchMode

    totals: dict[tuple[str, tuple], list[float]] = {}

    class Timer(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args_=(), kwargs=None):
            start = time.perf_counter()
            out = func(*args_, **(kwargs or {}))
            elapsed = time.perf_counter() - start
            shapes = tuple(tuple(a.shape) for a in args_ if isinstance(a, torch.Tensor))[:3]
            entry = totals.setdefault((func.overloadpacket.__name__, shapes), [0.0, 0])
            entry[0] += elapsed
            entry[1] += 1
            return out

    steps = args.profile_steps
    for side, trainer in warm_trainers(config, threads, args, sides):
        start = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        untimed = (time.perf_counter() - start) / steps * 1e3
        totals.clear()
        with Timer():
            for _ in range(steps):
                trainer.step()
        by_op: dict[str, float] = {}
        for (name, _), (seconds, _) in totals.items():
            by_op[name] = by_op.get(name, 0.0) + seconds
        ops_per_step = sum(n for _, n in totals.values()) / steps
        print(f"\n{side}, {config}, channels_last, {threads} thread(s): step {untimed:.0f} ms "
              f"untimed; ATen ops {sum(by_op.values()) / steps * 1e3:.0f} ms "
              f"({ops_per_step:.0f} ops) per step")  # fmt: skip
        top = sorted(by_op.items(), key=lambda kv: -kv[1])[: args.profile_rows]
        print("  ms/step  op")
        for name, seconds in top:
            print(f"  {seconds / steps * 1e3:7.1f}  {name}")
        print("  ms/step  calls  op and input shapes")
        rows = sorted(totals.items(), key=lambda kv: -kv[1][0])[: args.profile_rows]
        for (name, shapes), (seconds, calls) in rows:
            print(f"  {seconds / steps * 1e3:7.1f}  {calls / steps:5.0f}  {name} {shapes}")


def main() -> None:
    args = parse_args()
    timm_nasnet = load_timm()
    sides = {}
    if args.before:
        sides["before"] = (load_nasnet(args.before), timm_nasnet)
    sides["ours"] = (load_nasnet(None), timm_nasnet)
    sides["timm"] = (None, timm_nasnet)
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; rounds {args.rounds} x {args.seconds:g} s "
          f"(at least {args.min_steps} step(s)) per variant")  # fmt: skip
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}")
        torch.backends.cudnn.benchmark = True
    for threads in args.threads:
        for config in args.config:
            if args.breakdown:
                breakdown(config, threads, args, sides)
            elif args.profile:
                profile(config, threads, args, sides)
            else:
                compare(config, threads, args, sides)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 short rounds: about 2 minutes")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--config", nargs="+", default=["large64", "cifar"],
                   choices=["large64", "cifar"])  # fmt: skip
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--seconds", type=float, default=None, help="per variant and round")
    p.add_argument("--min-steps", type=int, default=None, help="per variant and round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=None, help="override both configs' batch")
    p.add_argument("--skip-nchw", action="store_true", help="channels_last variants only")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on both sides")
    p.add_argument("--before", default=None, help="folder holding an older nasnet/ to time too")
    p.add_argument("--compile", action="store_true",
                   help="also time compiled channels_last variants (takes minutes)")  # fmt: skip
    p.add_argument("--profile", action="store_true", help="profile instead of timing")
    p.add_argument("--breakdown", action="store_true",
                   help="wall time per ATen op instead of timing (see breakdown())")  # fmt: skip
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--profile-rows", type=int, default=12)
    args = p.parse_args()
    args.rounds = args.rounds or (3 if args.quick else 9)
    args.seconds = args.seconds if args.seconds is not None else (1.0 if args.quick else 3.0)
    args.min_steps = args.min_steps or (1 if args.quick else 2)
    if args.quick:
        args.warmup = min(args.warmup, 1)
    return args


if __name__ == "__main__":
    main()
