"""Child training: SGD with momentum, cosine decay, ScheduledDropPath, aux head, resumable runs.

:func:`train` trains one child network and returns a result record; it never raises (a failure
is ``status="failed"`` with a ``reason``). With ``out_dir`` it writes ``config.json``,
``metrics.jsonl``, ``checkpoint.pt`` (after every epoch) and ``result.json``, and calling it again
with the same directory resumes from the checkpoint. The data order, augmentation and drop-path
draws of epoch ``e`` are seeded from ``(seed, e)``, and every RNG is saved in the checkpoint, so a
resumed run ends with exactly the metrics of an uninterrupted one (same thread count).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nasnet.data import MAX_IMAGE_SIZE, Augment, Dataset, DatasetShape, load_dataset
from nasnet.files import atomic_torch_save, atomic_write_text, json_safe
from nasnet.genotypes import resolve_genotype
from nasnet.lock import TRAIN_LOCK_NAME
from nasnet.memory import available_bytes, evaluation_bytes, gib, training_step_bytes
from nasnet.options import OptionError, check_finite, require
from nasnet.runtime import (
    module_mode,
    numpy_rng_state,
    preserve_global_state,
    python_rng_state,
    set_numpy_rng_state,
    set_python_rng_state,
)
from nasnet.space import Genotype

#: Called with one event dict: ``kind`` is ``start``, ``step`` or ``epoch``.
ProgressFn = Callable[[dict], None]

#: ``stop(epoch, val_accuracy) -> bool``: end training after this epoch (early stopping).
StopRule = Callable[[int, float], bool]

#: Config fields that may change between a run and its resumption. ``eval_test`` may not:
#: rerunning a finished run without it would drop the test accuracy from ``result.json``.
RESUMABLE_CHANGES = frozenset({"threads", "eval_batch_size"})

#: Metrics that depend on the wall clock (everything else is a function of the seed).
TIMING_KEYS = frozenset({"seconds", "images_per_sec"})

CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE, RESULT_FILE = (
    "config.json",
    "metrics.jsonl",
    "checkpoint.pt",
    "result.json",
)

#: The files a run directory holds (``nasnet train`` adds its lock, ``train.lock``).
RUN_FILES = (CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE, RESULT_FILE, TRAIN_LOCK_NAME)


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self) -> None:
        super().__init__("non-finite loss")


class RunMismatch(OptionError):
    """``out_dir`` already holds a run with a different configuration; ``field`` names the
    (first) option that differs."""


class CheckpointError(ValueError):
    """``out_dir``'s checkpoint cannot be resumed (damaged, foreign or of another network)."""


@dataclass
class TrainConfig:
    """Hyperparameters of one child run (saved as ``config.json``).

    The defaults train NASNet-A with N=2, F=12 on the built-in digits data (16x16) in about 70 s
    on two idle CPU cores (about 99 % test accuracy). NASNet's own CIFAR-10 recipe (N=6, F=32,
    600 epochs, batch 32, lr 0.025, weight decay 5e-4, clip 5, aux 0.4, drop-path keep 0.6) is
    these fields set accordingly. ``extra`` is free-form metadata (e.g. a search's trial id) kept in
    ``config.json``.
    """

    dataset: str = "digits"
    genotype: str | dict = "nasnet_a"
    cells: int = 2
    filters: int = 12
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    grad_clip: float = 5.0
    auxiliary: bool = True
    aux_weight: float = 0.4
    label_smoothing: float = 0.0
    drop_path_keep_prob: float = 0.6
    dropout: float = 0.0
    cutout: int = 0
    ema_decay: float | None = None
    image_size: int | None = None
    stem: str = "cifar"
    channels_last: bool = True
    threads: int | None = None
    seed: int = 0
    device: str = "cpu"
    eval_test: bool = True
    eval_batch_size: int = 256
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))

    def check(self) -> None:
        """Raise :class:`~nasnet.options.OptionError` naming the first out-of-range field."""
        for name in ("cells", "filters", "epochs", "eval_batch_size"):
            _check_int(self, name, 1, MAX_COUNT)
        _check_int(self, "batch_size", 2, MAX_COUNT)  # BatchNorm trains on batch statistics
        check_finite(self, "lr", 0, low_open=True)
        check_finite(self, "momentum", 0, 1)
        check_finite(self, "weight_decay", 0, 1)
        check_finite(self, "grad_clip", 0)
        check_finite(self, "aux_weight", 0)
        check_finite(self, "drop_path_keep_prob", 0, 1, low_open=True)
        for name in ("dropout", "label_smoothing"):
            check_finite(self, name, 0, 1)
            require(getattr(self, name) < 1, name, f"must be below 1, got {getattr(self, name)}")
        if self.ema_decay is not None:
            check_finite(self, "ema_decay", 0, 1, low_open=True)
            require(self.ema_decay < 1, "ema_decay", f"must be below 1, got {self.ema_decay}")
        _check_int(self, "cutout", 0, MAX_IMAGE_SIZE)
        if self.image_size is not None:
            _check_int(self, "image_size", 4, MAX_IMAGE_SIZE)
        if self.threads is not None:
            _check_int(self, "threads", 1, 1024)
        _check_int(self, "seed", 0, 2**63 - 1)
        for name, allowed in (("device", ("cpu", "cuda", "auto")), ("stem", ("cifar", "imagenet"))):
            value = getattr(self, name)
            require(value in allowed, name, f"must be {' or '.join(allowed)}, got {value!r}")
        require(isinstance(self.genotype, str | dict), "genotype", "must be a name or a dict")


#: Upper bound of counts such as epochs, cells and batch size (a typo guard, not a limit).
MAX_COUNT = 1_000_000


def _check_int(config: object, name: str, low: int, high: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(name, f"must be a whole number, got {value!r}")
    require(low <= value <= high, name, f"must be in [{low}, {high}], got {value}")


def cosine_lr(base: float, step: int, total: int) -> float:
    """Single-period cosine decay from ``base`` at step 0 towards 0 at ``total``."""
    return 0.5 * base * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that is a fixed function of ``parts`` (e.g. ``seed, epoch, stream``)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0]) >> 1


def build_model(genotype: Genotype, config: TrainConfig, data: Dataset | DatasetShape) -> nn.Module:
    """The child network for ``data`` (seeded from ``config.seed``)."""
    from nasnet.network import build_network

    torch.manual_seed(config.seed)
    model = build_network(
        genotype, stem=config.stem, cells=config.cells, filters=config.filters,
        num_classes=data.num_classes, in_chans=data.channels, image_size=data.image_size,
        auxiliary=config.auxiliary, drop_path_keep_prob=config.drop_path_keep_prob,
        dropout=config.dropout,
    )  # fmt: skip
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def check_can_start(
    genotype: Genotype, config: TrainConfig, data: Dataset, check_memory: bool = True
) -> None:
    """Raise :class:`OptionError` if a run of ``config`` on ``data`` cannot start: fewer than
    two training images (BatchNorm trains on batch statistics), a Cutout square larger than
    the images (it would blank them all) or, unless ``check_memory`` is off, not enough memory
    (:func:`check_training_memory`)."""
    images = len(data.train_y)
    require(images >= 2, "dataset", f"{images} training image: BatchNorm trains on batches of "
            "at least 2; give it more images")  # fmt: skip
    check_cutout(config, data.image_size)
    if check_memory:
        check_training_memory(genotype, config, data)


def check_cutout(config: TrainConfig, image_size: int) -> None:
    """:class:`OptionError` on ``cutout`` when its square is larger than the images: it
    would blank every training image."""
    require(config.cutout <= image_size, "cutout", f"{config.cutout} pixels is more than the "
            f"{image_size}-pixel images; at most {image_size}")  # fmt: skip


def check_training_memory(
    genotype: Genotype, config: TrainConfig, data: Dataset | DatasetShape, runs: int = 1
) -> None:
    """Raise :class:`OptionError` on ``batch_size`` (or ``eval_batch_size``) when ``runs``
    trainings of ``genotype`` on ``data`` at once would need more memory than ``config.device``
    has free, in a training step or in an evaluation; the estimates are
    :func:`nasnet.memory.training_step_bytes` and :func:`~nasnet.memory.evaluation_bytes`."""
    available = available_bytes(resolve_device(config.device))
    if available is None:
        return
    shape = data.shape if isinstance(data, Dataset) else data
    batch = min(config.batch_size, shape.train_images or config.batch_size)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build_model(genotype, config, shape)
    image = (shape.channels, shape.image_size, shape.image_size)
    train_each = training_step_bytes(model, batch, image)
    eval_each = evaluation_bytes(model, config.eval_batch_size, image)
    if runs * max(train_each, eval_each) <= available:
        return
    field, doing, batch = (
        ("batch_size", "training", batch) if train_each >= eval_each
        else ("eval_batch_size", "evaluating", config.eval_batch_size)
    )  # fmt: skip
    what = f"{runs} runs at once need" if runs > 1 else "it needs"
    need = runs * max(train_each, eval_each)
    raise OptionError(
        field,
        f"{doing} at batch {batch} on {'x'.join(map(str, image))} images, {what} about "
        f"{gib(need)} of memory, more than the {gib(available)} available; lower "
        "it" + (" or the image size" if shape.image_size > 32 else ""),
    )


class EMA:
    """Exponential moving average of a model's parameters (buffers are copied)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        mine, theirs = list(self.model.parameters()), list(model.parameters())
        torch._foreach_lerp_(mine, theirs, 1.0 - self.decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)


@torch.inference_mode()
def evaluate_model(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, augment: Augment, batch: int
) -> tuple[float, float]:
    """``(mean cross-entropy, accuracy)`` of ``model`` in eval mode on uint8 ``images``."""
    total_loss, correct = 0.0, 0
    device = next(model.parameters()).device
    with module_mode(model, False):
        for x, y in zip(images.split(batch), labels.split(batch), strict=True):
            y = y.to(device)
            logits = model(augment.normalize(x).to(device))
            total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    n = max(len(labels), 1)
    return total_loss / n, correct / n


# --------------------------------------------------------------------------- the run


def make_sgd(params: list[torch.Tensor], **options) -> torch.optim.SGD:
    """``torch.optim.SGD(params, **options)`` in its fused form where this torch has one for
    the parameters' device (CPU since torch 2.4): one kernel per parameter instead of the
    multi-tensor (``foreach``) form's four passes; ``foreach`` otherwise (on CPU the default is
    a Python loop of four ops per parameter). Measured on the search's default child (254
    parameters, 1 thread): the step takes 1.0 ms fused, 3.0 ms foreach, 5.0 ms looped.

    The fused step treats its first call specially only when no parameter has a momentum
    buffer yet, and fails if a parameter first gets a gradient on a later step; so every
    buffer starts at zero here, which with ``dampening=0`` is the same first step
    (``0 * momentum + grad``). Only float32 / float64 parameters take the fused form: torch
    2.12-2.13's CPU kernel skips whole vectors of float16 / bfloat16 ones (pytorch#191763)."""
    full_precision = all(p.dtype in (torch.float32, torch.float64) for p in params)
    if full_precision and not options.get("dampening", 0):
        try:
            optimizer = torch.optim.SGD(params, fused=True, **options)
        except (RuntimeError, TypeError):  # no fused kernel for this device (or at all) here
            pass
        else:
            if options.get("momentum", 0):
                for p in params:
                    optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
            return optimizer
    return torch.optim.SGD(params, foreach=True, **options)


class ChildTrainer:
    """One training run: model, optimizer, EMA, data order and history.

    :func:`train` is the entry point; this class is public for benchmarks, which time
    :meth:`step` (one SGD step on the training examples ``idx``) directly.
    """

    def __init__(
        self,
        genotype: Genotype,
        config: TrainConfig,
        data: Dataset,
        out_dir: str | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        self.config, self.data, self.out_dir, self.progress = config, data, out_dir, progress
        self.genotype = genotype
        self.device = resolve_device(config.device)
        self.model = build_model(genotype, config, data).to(self.device)
        self.params = list(self.model.parameters())
        self.optimizer = make_sgd(
            self.params, lr=config.lr, momentum=config.momentum,
            nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay,
        )  # fmt: skip
        self.ema = EMA(self.model, config.ema_decay) if config.ema_decay else None
        self.augment = Augment.for_dataset(data, config.cutout, config.channels_last)
        self.aug_gen = torch.Generator()
        n_train = len(data.train_y)
        self.batch = min(config.batch_size, n_train)
        self.steps_per_epoch = n_train // self.batch
        self.total_steps = self.steps_per_epoch * config.epochs
        self.epoch, self.history, self.train_images, self.train_seconds = 0, [], 0, 0.0
        self.started, self.prior_seconds = time.perf_counter(), 0.0

    # -- checkpoints --------------------------------------------------------------------------

    def state(self) -> dict:
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.model.state_dict() if self.ema else None,
            "history": self.history,
            "seconds": self.seconds,
            "train_seconds": self.train_seconds,
            "train_images": self.train_images,
            "rng": _rng_state(self.aug_gen),
            "network": self.model.config.to_dict(),
            "data_digest": self.data.digest,
        }

    def load(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.model.load_state_dict(state["ema"])
        self.epoch, self.history = state["epoch"], list(state["history"])
        self.prior_seconds, self.train_images = state["seconds"], state["train_images"]
        self.train_seconds = state["train_seconds"]
        _set_rng_state(state["rng"], self.aug_gen)

    # -- training -----------------------------------------------------------------------------

    def execute(self, stop: StopRule | None = None) -> dict:
        """Train the remaining epochs (fewer if ``stop`` says so after one) and evaluate."""
        self._emit(kind="start", epoch=self.epoch, epochs=self.config.epochs,
                   steps_per_epoch=self.steps_per_epoch)  # fmt: skip
        stopped = False
        while self.epoch < self.config.epochs and not stopped:
            metrics = self.train_epoch()
            if self.out_dir:
                self.save()
            self._emit(kind="epoch", **metrics)
            last = self.epoch == self.config.epochs
            stopped = not last and stop is not None and stop(self.epoch, metrics["val_accuracy"])
        test = self.evaluate_split("test")[1] if self.config.eval_test else None
        return {**self.result("done", "", test), "stopped_early": stopped}

    @property
    def seconds(self) -> float:
        """Wall time of this run, over all the sessions that resumed it."""
        return self.prior_seconds + time.perf_counter() - self.started

    def train_epoch(self) -> dict:
        tic = time.perf_counter()
        self._seed_epoch()
        order = torch.randperm(len(self.data.train_y), generator=self._epoch_gen(0))
        self.model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for i in range(self.steps_per_epoch):
            idx = order[i * self.batch : (i + 1) * self.batch]
            loss, hits = self.step(idx, self.epoch * self.steps_per_epoch + i)
            loss_sum, correct, seen = loss_sum + loss * len(idx), correct + hits, seen + len(idx)
            rate = seen / max(time.perf_counter() - tic, 1e-9)
            self._emit(kind="step", epoch=self.epoch + 1, step=i + 1, loss=loss,
                       accuracy=correct / seen, images_per_sec=rate)  # fmt: skip
        train_time = time.perf_counter() - tic
        self.train_seconds += train_time
        self.train_images += seen
        self.epoch += 1
        val_loss, val_acc = self.evaluate_split("val")
        metrics = {
            "epoch": self.epoch,
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": self._lr(self.epoch * self.steps_per_epoch - 1),
            "seconds": time.perf_counter() - tic,
            "images_per_sec": seen / max(train_time, 1e-9),
        }
        self.history.append(metrics)
        return metrics

    def step(self, idx: torch.Tensor, step: int) -> tuple[float, int]:
        """One SGD step on the training examples ``idx``; returns (loss, correct count)."""
        x = self.augment(self.data.train_x[idx], self.aug_gen).to(self.device)
        y = self.data.train_y[idx].to(self.device)
        self.model.set_drop_path_progress(step / max(self.total_steps, 1))
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(step)
        logits, aux = self.model.forward_with_aux(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.config.label_smoothing)
        if aux is not None and self.config.aux_weight > 0:
            aux_loss = F.cross_entropy(aux, y, label_smoothing=self.config.label_smoothing)
            loss = loss + self.config.aux_weight * aux_loss
        if not torch.isfinite(loss):
            raise NonFiniteLoss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return float(loss.detach()), int((logits.detach().argmax(1) == y).sum())

    def evaluate_split(self, split: str) -> tuple[float, float]:
        """``(loss, accuracy)`` on ``val`` or ``test`` (with the EMA weights when kept)."""
        model = self.ema.model if self.ema is not None else self.model
        x, y = self.data.split(split)
        return evaluate_model(model, x, y, self.augment, self.config.eval_batch_size)

    def _lr(self, step: int) -> float:
        return cosine_lr(self.config.lr, step, self.total_steps)

    def _epoch_gen(self, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.config.seed, self.epoch, stream))

    def _seed_epoch(self) -> None:
        """Seed augmentation and the global RNGs (drop path) from ``(seed, epoch)``."""
        self.aug_gen.manual_seed(derive_seed(self.config.seed, self.epoch, 1))
        seed = derive_seed(self.config.seed, self.epoch, 2)
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)

    def _emit(self, **event) -> None:
        if self.progress is not None:
            self.progress(event)

    # -- results ------------------------------------------------------------------------------

    def result(self, status: str, reason: str, test_accuracy: float | None) -> dict:
        from nasnet.counting import count_mult_adds, count_params

        last = self.history[-1] if self.history else {}
        size = (self.data.channels, self.data.image_size, self.data.image_size)
        return {
            "status": status,
            "reason": reason,
            "val_accuracy": last.get("val_accuracy"),
            "val_loss": last.get("val_loss"),
            "test_accuracy": test_accuracy,
            "train_accuracy": last.get("train_accuracy"),
            "loss_curve": [m["train_loss"] for m in self.history],
            "val_curve": [m["val_accuracy"] for m in self.history],
            "params": count_params(self.model),
            "mult_adds": count_mult_adds(self.model, size),
            "seconds": self.seconds,
            "images_per_sec": self.train_images / max(self.train_seconds, 1e-9),
            "epochs_done": self.epoch,
            "epochs": self.config.epochs,
            "genotype_hash": self.genotype.canonical_hash(),
        }

    def save(self) -> None:
        assert self.out_dir is not None
        atomic_torch_save(self.state(), os.path.join(self.out_dir, CHECKPOINT_FILE))
        lines = "".join(json.dumps(json_safe(m), allow_nan=False) + "\n" for m in self.history)
        atomic_write_text(os.path.join(self.out_dir, METRICS_FILE), lines)


# --------------------------------------------------------------------------- public entry points


def train(
    genotype: Genotype | str | dict | None = None,
    config: TrainConfig | None = None,
    out_dir: str | None = None,
    progress: ProgressFn | None = None,
    dataset: Dataset | None = None,
    stop: StopRule | None = None,
    check_memory: bool = True,
) -> dict:
    """Train one child and return its result record; never raises (except KeyboardInterrupt).

    ``genotype`` defaults to ``config.genotype``; ``dataset`` (already loaded) skips loading
    ``config.dataset``. ``stop(epoch, val_accuracy)``, called after every epoch but the last,
    ends training early when it returns True. A run that would not fit in memory fails
    before it starts (:func:`check_training_memory`; ``check_memory=False`` skips that
    check, for callers that made it already). The record holds ``status`` (``done`` or
    ``failed``), ``reason``, ``val_accuracy``, ``test_accuracy`` (when ``config.eval_test``),
    ``loss_curve``, ``params``, ``mult_adds``, ``seconds``, ``images_per_sec``, ``epochs_done``
    and ``stopped_early``. Without ``out_dir`` no
    file is read or written. The caller's global RNG states (torch, numpy, python) and torch
    thread count are restored on return, so a search loop's own sampling is not disturbed.
    """
    config = config or TrainConfig()
    started = time.perf_counter()
    run: ChildTrainer | None = None
    with preserve_global_state():
        try:
            run = _prepare(genotype, config, out_dir, progress, dataset, check_memory)
            result = run.execute(stop)
        except (RunMismatch, CheckpointError, OptionError) as err:  # leave out_dir's files alone
            return _failed_result(None, str(err), started)
        except Exception as err:
            reason = str(err) or type(err).__name__
            result = _failed_result(run, reason, started)
    if out_dir:
        _write_result(out_dir, result)
    return result


def _prepare(
    genotype: Genotype | str | dict | None,
    config: TrainConfig,
    out_dir: str | None,
    progress: ProgressFn | None,
    dataset: Dataset | None,
    check_memory: bool = True,
) -> ChildTrainer:
    config.check()
    resolve_device(config.device)  # before config.json: a run for a missing GPU is not started
    genotype = resolve_genotype(config.genotype if genotype is None else genotype)
    config = dataclasses.replace(config, genotype=genotype.to_dict())
    if config.threads:
        torch.set_num_threads(config.threads)
    if out_dir:
        check_out_dir(out_dir, config)
    data = dataset if dataset is not None else load_dataset(config.dataset, config.image_size)
    check_can_start(genotype, config, data, check_memory)
    if out_dir:  # only now: a run that cannot start leaves no config behind to block a fix
        os.makedirs(out_dir, exist_ok=True)
        atomic_write_text(os.path.join(out_dir, CONFIG_FILE), config.to_json())
    run = ChildTrainer(genotype, config, data, out_dir, progress)
    checkpoint = os.path.join(out_dir, CHECKPOINT_FILE) if out_dir else None
    if checkpoint and os.path.exists(checkpoint):
        from nasnet.pretrained import WeightFileError, read_torch_file

        fix = "delete it to train from scratch, or use a new output directory"
        try:
            state = read_torch_file(checkpoint, "a nasnet training checkpoint", fix)
        except WeightFileError as err:
            raise CheckpointError(str(err)) from None
        changed = data_changed(state, data) if isinstance(state, dict) else None
        if changed:
            raise CheckpointError(changed)
        try:
            run.load(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            detail = f"missing {err}" if isinstance(err, KeyError) else type(err).__name__
            raise CheckpointError(
                f"{checkpoint}: does not fit this run ({detail}); {fix}"
            ) from None
    return run


def _failed_result(run: ChildTrainer | None, reason: str, started: float) -> dict:
    if run is not None:
        try:
            result = run.result("failed", reason, None)
            result.update(val_accuracy=None, val_loss=None, train_accuracy=None)
            return result
        except Exception:
            pass
    return {
        "status": "failed", "reason": reason, "val_accuracy": None, "test_accuracy": None,
        "loss_curve": [], "params": None, "mult_adds": None,
        "seconds": time.perf_counter() - started, "images_per_sec": None, "epochs_done": 0,
    }  # fmt: skip


def check_out_dir(out_dir: str, config: TrainConfig) -> None:
    """Raise :class:`RunMismatch` if ``out_dir`` holds a run that ``config`` cannot resume."""
    path = os.path.join(out_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8") as fh:
            saved = json.load(fh)
    except (OSError, ValueError) as err:
        raise RunMismatch(
            "out", f"{path}: unreadable ({err}); use a new output directory"
        ) from None
    new = config.to_dict()
    new["genotype"] = resolve_genotype(config.genotype).to_dict()
    changed = changed_fields(saved, new)
    if changed:
        raise RunMismatch(changed[0], changed_option(f"{out_dir} holds a run", saved, new, changed))


def changed_option(holder: str, saved: dict, new: dict, changed: list[str]) -> str:
    """The problem with resuming what ``holder`` names (``"OUT holds a run"``) with ``new``
    options: the first of the ``changed`` fields, with its saved and new values."""
    field, more = changed[0], len(changed) - 1
    if field == "genotype":
        difference = "of another cell"
    else:
        difference = f"with {_shown(saved.get(field))}, not {_shown(new.get(field))}"
    others = f" (and {more} other option{'s' if more > 1 else ''})" if more else ""
    return (
        f"{holder} {difference}{others}; leave the option out to resume with the saved value, "
        "or choose another output folder"
    )


def _shown(value: object) -> str:
    return "none" if value is None else str(value)


def changed_fields(
    saved: dict, new: dict, may_change: frozenset[str] = RESUMABLE_CHANGES
) -> list[str]:
    """The fields of the config dict ``new`` that differ from ``saved``, but ``may_change``."""
    return [k for k, v in new.items() if k not in may_change and saved.get(k) != v]


def _write_result(out_dir: str, result: dict) -> None:
    try:
        os.makedirs(out_dir, exist_ok=True)
        text = json.dumps(json_safe(result), indent=2, allow_nan=False) + "\n"
        atomic_write_text(os.path.join(out_dir, RESULT_FILE), text)
    except OSError as err:
        if result["status"] == "done":
            result.update(status="failed", reason=f"cannot write {RESULT_FILE}: {err}")


def data_changed(state: dict, data: Dataset) -> str | None:
    """Why the checkpoint ``state`` cannot go on with ``data``: it was trained on other data
    (its :attr:`~nasnet.data.Dataset.digest`; older checkpoints record none). None if it can."""
    if state.get("data_digest") in (None, data.digest):
        return None
    return (
        f"{data.name}: not the data this run was trained on (images added, removed or changed "
        "since, which changes the splits); restore them, or train a new run"
    )


def evaluate_run(out_dir: str, splits: tuple[str, ...] = ("val", "test")) -> dict:
    """Reload the model saved in ``out_dir`` and re-evaluate it; returns accuracy and loss
    per split (``val_accuracy``, ``test_loss``, ...) plus ``epochs_done``.

    Raises ``FileNotFoundError`` when ``out_dir`` holds no run, ``ValueError`` for a bad one.
    """
    config, genotype, state = _load_run(out_dir)
    data = load_dataset(config.dataset, config.image_size)
    changed = data_changed(state, data)
    if changed:
        raise ValueError(changed)
    with preserve_global_state():
        model = build_model(genotype, config, data)
    try:
        model.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
    except RuntimeError:  # e.g. a checkpoint of the same network for another class count
        raise ValueError(
            f"{os.path.join(out_dir, CHECKPOINT_FILE)}: the weights do not fit a network for "
            f"{config.dataset}; restore the run's files or train it again"
        ) from None
    augment = Augment.for_dataset(data, 0, config.channels_last)
    report: dict = {"epochs_done": state["epoch"], "dataset": config.dataset}
    for split in splits:
        x, y = data.split(split)
        loss, acc = evaluate_model(model, x, y, augment, config.eval_batch_size)
        report.update({f"{split}_loss": loss, f"{split}_accuracy": acc, f"{split}_size": len(y)})
    return report


def _load_run(out_dir: str) -> tuple[TrainConfig, Genotype, dict]:
    """The config, genotype and checkpoint of the run in ``out_dir``, checked: a damaged,
    foreign or mismatched file is a one-line ``ValueError`` naming it (never a traceback)."""
    from nasnet.network import NASNet, NetworkConfig
    from nasnet.pretrained import WeightFileError, read_torch_file, state_dict_mismatch

    config_path = os.path.join(out_dir, CONFIG_FILE)
    checkpoint = os.path.join(out_dir, CHECKPOINT_FILE)
    for path in (config_path, checkpoint):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found; is {out_dir} a 'nasnet train' output?")
    retrain = "restore the run's files or train it again"
    try:
        with open(config_path, encoding="utf-8") as fh:
            saved = json.load(fh)
        if not isinstance(saved, dict):
            raise ValueError(f"holds a JSON {type(saved).__name__}, not an object")
        config = TrainConfig.from_dict(saved)
        config.check()
        genotype = resolve_genotype(config.genotype)
    except OptionError as err:
        raise ValueError(f"{config_path}: {err.field}: {err.problem}; {retrain}") from None
    except (OSError, ValueError, TypeError, RecursionError) as err:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise ValueError(
            f"{config_path}: not a nasnet training config ({reason}); {retrain}"
        ) from None

    what = "a nasnet training checkpoint"
    state = read_torch_file(checkpoint, what, retrain)
    entries = {"model": dict, "epoch": int}
    for key, kind in entries.items():
        if not isinstance(state, dict) or not isinstance(state.get(key), kind):
            raise WeightFileError(f"{checkpoint}: has no {key!r} entry, not {what}; {retrain}")
    assert isinstance(state, dict)
    if state.get("network") is None:
        return config, genotype, state  # an older checkpoint: nothing to check it against
    try:
        network = NetworkConfig(**state["network"])
    except TypeError:
        raise WeightFileError(f"{checkpoint}: 'network' is damaged; {retrain}") from None
    differ = [
        f"{name} {getattr(network, name)!r} there, {getattr(config, name)!r} in {CONFIG_FILE}"
        for name in ("stem", "cells", "filters", "auxiliary")
        if getattr(network, name) != getattr(config, name)
    ]
    if differ:
        raise WeightFileError(
            f"{checkpoint}: belongs to another run ({'; '.join(differ)}); {retrain}"
        )
    try:
        with torch.device("meta"):
            expected = NASNet(genotype, network).state_dict()
    except (ValueError, TypeError) as err:
        raise WeightFileError(f"{checkpoint}: 'network' is unusable ({err}); {retrain}") from None
    for key in ("model", "ema"):
        weights = state.get(key)
        problem = None if weights is None else state_dict_mismatch(expected, weights)
        if problem:
            raise WeightFileError(
                f"{checkpoint}: the weights do not fit the run's network ({problem}); {retrain}"
            )
    return config, genotype, state


def load_model(out_dir: str) -> nn.Module:
    """The network trained in ``out_dir`` (its EMA weights when it kept them), in eval mode.

    Raises ``FileNotFoundError`` when ``out_dir`` holds no run, ``ValueError`` naming the file
    for a damaged or foreign one.
    """
    from nasnet.network import NASNet, NetworkConfig

    _, genotype, state = _load_run(out_dir)
    if state.get("network") is None:
        raise ValueError(
            f"{os.path.join(out_dir, CHECKPOINT_FILE)}: does not record its network "
            "(an older nasnet wrote it); train the run again"
        )
    model = NASNet(genotype, NetworkConfig(**state["network"]))
    model.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
    return model.eval()


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, or ``auto`` (CUDA when available, as in a Ray task given a GPU)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise OptionError("device", "cuda: no CUDA device is available here; use cpu or auto")
    return torch.device(name)


# --------------------------------------------------------------------------- small helpers


def _rng_state(aug_gen: torch.Generator) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "augment": aug_gen.get_state(),
        "numpy": numpy_rng_state(),
        "python": python_rng_state(),
    }


def _set_rng_state(state: dict, aug_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    aug_gen.set_state(state["augment"])
    set_numpy_rng_state(state["numpy"])
    set_python_rng_state(state["python"])


__all__ = [
    "EMA",
    "ChildTrainer",
    "NonFiniteLoss",
    "RunMismatch",
    "TrainConfig",
    "build_model",
    "check_out_dir",
    "cosine_lr",
    "derive_seed",
    "evaluate_model",
    "evaluate_run",
    "preserve_global_state",
    "resolve_genotype",
    "train",
]
