"""``nasnet train`` (train one child network, resumable) and ``nasnet evaluate DIR``."""

from __future__ import annotations

import argparse
import json
import os
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nasnet.cli import UserError
from nasnet.data import DatasetError, given_spec, load_dataset
from nasnet.files import DirectoryError, check_not_a_file, ensure_directory, read_json
from nasnet.lock import TRAIN_BUSY, TRAIN_LOCK_NAME, ExperimentLock, ExperimentLocked
from nasnet.options import OptionError
from nasnet.space import GenotypeError
from nasnet.store import DB_NAME
from nasnet.train import (
    CONFIG_FILE,
    TrainConfig,
    check_can_start,
    check_out_dir,
    evaluate_run,
    resolve_device,
    resolve_genotype,
    train,
)

#: Command-line option -> TrainConfig field, for the options that map one to one.
OPTIONS: dict[str, tuple[str, type, str]] = {
    "--genotype": ("genotype", str, "nasnet_a, nasnet_a_figure or a genotype JSON file"),
    "--dataset": ("dataset", str, "digits, cifar10:PATH, cifar100:PATH, folder:PATH, synthetic"),
    "--cells": ("cells", int, "N, normal cells per stage"),
    "--filters": ("filters", int, "F, filters of the first stage"),
    "--epochs": ("epochs", int, "training epochs"),
    "--batch-size": ("batch_size", int, "training batch size"),
    "--eval-batch-size": (
        "eval_batch_size",
        int,
        "evaluation batch size (results do not depend on it; may change when a run resumes)",
    ),
    "--lr": ("lr", float, "initial learning rate (cosine decay to 0)"),
    "--momentum": ("momentum", float, "SGD momentum"),
    "--weight-decay": ("weight_decay", float, "L2 weight decay"),
    "--grad-clip": ("grad_clip", float, "clip gradients to this global norm (0: off)"),
    "--drop-path-keep": ("drop_path_keep_prob", float, "ScheduledDropPath keep prob at the end"),
    "--dropout": ("dropout", float, "dropout before the classifier"),
    "--cutout": ("cutout", int, "Cutout square side in pixels (0: off)"),
    "--aux-weight": ("aux_weight", float, "auxiliary head loss weight (0: no aux head)"),
    "--label-smoothing": ("label_smoothing", float, "label smoothing"),
    "--ema-decay": ("ema_decay", float, "evaluate an EMA of the weights with this decay"),
    "--image-size": ("image_size", int, "resize images to this side (digits, folder, synthetic)"),
    "--threads": ("threads", int, "torch threads (default: all cores)"),
    "--seed": ("seed", int, "random seed"),
    "--device": ("device", str, "cpu, cuda or auto (CUDA when available)"),
}


#: TrainConfig field -> flag, for error messages.
FIELD_FLAGS = {name: flag for flag, (name, _, _) in OPTIONS.items()} | {
    "nesterov": "--no-nesterov",
    "channels_last": "--nchw",
    "eval_test": "--no-test",
    "auxiliary": "--aux-weight",  # 0 turns the aux head off
}


def flag_of(field: str) -> str:
    """The flag of a training option (``drop_path_keep_prob`` -> ``--drop-path-keep``)."""
    return FIELD_FLAGS.get(field, "--" + field.replace("_", "-"))


def register(subparsers) -> None:
    """Add ``train`` and ``evaluate`` to the ``nasnet`` command."""
    _register_train(subparsers)
    p = subparsers.add_parser(
        "evaluate",
        help="re-evaluate a trained child",
        description="Reload the model saved in a 'nasnet train' folder (finished or not) and "
        "evaluate it again: accuracy and loss on the validation and test splits, and the "
        "epochs it was trained.",
    )
    p.add_argument("dir", help="output directory of 'nasnet train'")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_evaluate)


def add_training_options(p: argparse.ArgumentParser, leave_out: tuple[str, ...] = ()) -> None:
    """The training hyperparameter flags of :data:`OPTIONS` (shared with ``nasnet transfer``),
    but those in ``leave_out``."""
    d = TrainConfig()
    for flag, (name, kind, text) in OPTIONS.items():
        if flag in leave_out:
            continue
        metavar = {int: "N", float: "X"}.get(kind, "SPEC")
        p.add_argument(flag, type=kind, dest=name, metavar=metavar,
                       help=f"{text} (default: {getattr(d, name)})")  # fmt: skip


def training_values(args: argparse.Namespace) -> dict:
    """The training options given on the command line (unset ones left out)."""
    names = [name for name, _, _ in OPTIONS.values()]
    values = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if args.aux_weight == 0:
        values["auxiliary"] = False
    return values


def _register_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train one child network (resumable)",
        description="Train a child network with SGD, cosine decay, ScheduledDropPath and an aux "
        "head. Rerunning with the same --out resumes from its checkpoint; options not given "
        "are taken from the saved run, else from the defaults.",
    )
    add_training_options(p)
    p.add_argument("--no-nesterov", dest="nesterov", action="store_false", default=None,
                   help="plain momentum instead of Nesterov")  # fmt: skip
    p.add_argument("--nchw", dest="channels_last", action="store_false", default=None,
                   help="keep NCHW tensors (default: channels_last, faster on CPU)")  # fmt: skip
    p.add_argument("--no-test", dest="eval_test", action="store_false", default=None,
                   help="do not evaluate on the test split at the end")  # fmt: skip
    p.add_argument("--out", required=True, help="output directory (resumed if it holds a run)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train, flag_of=flag_of, resumable=True)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, overridden by the run saved in ``--out``, overridden by the given options."""
    values = TrainConfig().to_dict()
    saved = os.path.join(args.out, CONFIG_FILE)
    saved_dataset = None
    if os.path.exists(saved):
        try:
            config = TrainConfig.from_dict(read_json(saved, "training config"))
            config.check()
        except (ValueError, TypeError) as err:
            raise UserError(f"{saved}: not a valid nasnet training config ({err})") from None
        values.update(config.to_dict())
        saved_dataset = config.dataset
    values.update(training_values(args))
    values["dataset"] = given_spec(values["dataset"], saved_dataset)
    flags = ("nesterov", "channels_last", "eval_test")
    values.update({n: getattr(args, n) for n in flags if getattr(args, n) is not None})
    config = TrainConfig.from_dict(values)
    config.check()
    return config


def run_train(args: argparse.Namespace) -> int:
    if os.path.exists(os.path.join(args.out, DB_NAME)):
        raise UserError(f"--out {args.out}: holds a 'nasnet search'; give the run its own folder")
    try:  # before loading any data; the folder itself is made once every check has passed
        check_not_a_file(args.out)
    except DirectoryError as err:
        raise UserError(str(err)) from None
    config = config_from_args(args)
    try:
        genotype = resolve_genotype(config.genotype)
        check_out_dir(args.out, config)
        resolve_device(config.device)
        data = load_dataset(config.dataset, config.image_size)
        check_can_start(genotype, config, data)
    except (GenotypeError, OptionError):
        raise
    except DatasetError as err:
        raise UserError(f"--dataset: {err}") from None
    except ValueError as err:
        raise UserError(str(err)) from None
    try:  # only now: a refused run leaves no empty folder behind
        ensure_directory(args.out)
    except DirectoryError as err:
        raise UserError(str(err)) from None
    console = Console(stderr=True)
    console.print(
        f"{data.summary()}; N={config.cells}, F={config.filters}, {config.epochs} epochs",
        soft_wrap=True,
    )
    lock = ExperimentLock(args.out, TRAIN_LOCK_NAME, TRAIN_BUSY)
    try:
        lock.acquire()
    except (ExperimentLocked, DirectoryError) as err:
        raise UserError(str(err)) from None
    try:
        with ProgressBar(console, quiet=args.quiet) as bar:
            result = train(
                genotype,
                config,
                out_dir=args.out,
                progress=bar.update,
                dataset=data,
                check_memory=False,
            )  # checked above
    finally:
        lock.release()
    if result["status"] != "done":
        print(f"nasnet train: child failed: {result['reason']}", file=sys.stderr)
        return 1
    print(_summary(result, args.out))
    return 0


def _summary(result: dict, out: str) -> str:
    test = result["test_accuracy"]
    test_text = "" if test is None else f", test accuracy {100 * test:.2f} %"
    return (
        f"val accuracy {100 * result['val_accuracy']:.2f} %{test_text}; "
        f"{result['params']:,} params, {result['mult_adds'] / 1e6:.1f} M mult-adds, "
        f"{result['images_per_sec']:.0f} images/s, {result['seconds']:.0f} s -> {out}"
    )


def run_evaluate(args: argparse.Namespace) -> int:
    try:
        report = evaluate_run(args.dir)
    except (DatasetError, ValueError, KeyError) as err:
        message = str(err)
        raise UserError(message if args.dir in message else f"{args.dir}: {message}") from None
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    parts = [
        f"{split} accuracy {100 * report[f'{split}_accuracy']:.2f} % "
        f"({report[f'{split}_size']} images, loss {report[f'{split}_loss']:.4f})"
        for split in ("val", "test")
    ]
    print(f"{report['dataset']}, epoch {report['epochs_done']}: " + ", ".join(parts))
    return 0


class ProgressBar:
    """A rich progress bar fed by :func:`nasnet.train.train`'s progress events."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console, self.quiet = console, quiet
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=quiet,
        )
        self.task = self.progress.add_task("train", total=None, epoch="-", stats="")
        self.epochs = 0

    def __enter__(self) -> ProgressBar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def update(self, event: dict) -> None:
        kind = event["kind"]
        if kind == "start":
            self.epochs = event["epochs"]
            steps = event["steps_per_epoch"]
            self.progress.update(self.task, total=self.epochs * steps,
                                 completed=event["epoch"] * steps)  # fmt: skip
        elif kind == "step":
            stats = (f"loss {event['loss']:.3f}  acc {event['accuracy']:.3f}  "
                     f"{event['images_per_sec']:.0f} img/s")  # fmt: skip
            self.progress.update(self.task, advance=1, stats=stats,
                                 epoch=f"{event['epoch']}/{self.epochs}")  # fmt: skip
        elif kind == "epoch" and not self.quiet:
            self.console.print(
                f"epoch {event['epoch']}/{self.epochs}  loss {event['train_loss']:.4f}  "
                f"train {event['train_accuracy']:.4f}  val {event['val_accuracy']:.4f}  "
                f"{event['images_per_sec']:.0f} img/s  {event['seconds']:.1f} s",
                soft_wrap=True,
            )
