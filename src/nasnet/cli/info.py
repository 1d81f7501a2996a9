"""``nasnet info NAME|FILE.json``: cells, filters, params, mult-adds and stage shapes."""

from __future__ import annotations

import argparse

import torch
from rich.table import Table

from nasnet.cli import UserError, stdout_console
from nasnet.counting import count_mult_adds, count_params
from nasnet.genotypes import GENOTYPES, describe_cell, resolve_genotype
from nasnet.network import build_network, cell_output_shapes, penultimate_filters
from nasnet.registry import PRESETS, create_model, list_models

#: How ``nasnet info`` stacks a genotype given by name or file (a preset fixes its own).
GENOTYPE_DEFAULTS = {"stem": "cifar", "cells": 6, "filters": 32}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info",
        help="describe a model preset or a genotype file",
        description="Print cells, filters, params, mult-adds and the output shape of each stage.",
    )
    p.add_argument(
        "model",
        help=f"a preset ({', '.join(list_models())}), a genotype name "
        f"({', '.join(GENOTYPES)}) or a genotype JSON file",
    )
    p.add_argument("--image-size", type=int, help="input side in pixels (default: the preset's)")
    p.add_argument(
        "--stem",
        choices=("cifar", "imagenet"),
        help=f"stem for a genotype (default: {GENOTYPE_DEFAULTS['stem']})",
    )
    p.add_argument("--cells", type=int,
                   help=f"N for a genotype (default: {GENOTYPE_DEFAULTS['cells']})")  # fmt: skip
    p.add_argument("--filters", type=int,
                   help=f"F for a genotype (default: {GENOTYPE_DEFAULTS['filters']})")  # fmt: skip
    p.add_argument("--num-classes", type=int, help="classifier outputs")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    if args.model in PRESETS:
        given = [f"--{name}" for name in GENOTYPE_DEFAULTS if getattr(args, name) is not None]
        if given:
            raise UserError(
                f"{', '.join(given)}: {args.model} is a preset with its own stem, N and F; "
                "leave them out, or give a genotype (nasnet_a) to stack it differently"
            )
    for flag, value, low, high in (("--image-size", args.image_size, 4, 8192),
                                   ("--cells", args.cells, 1, 1000),
                                   ("--filters", args.filters, 1, 100_000),
                                   ("--num-classes", args.num_classes, 1, 1_000_000)):  # fmt: skip
        if value is not None and not low <= value <= high:
            raise UserError(f"{flag}: must be in [{low}, {high}], got {value}")


def run(args: argparse.Namespace) -> int:
    _check(args)
    try:
        model, genotype = _build(args)
    except ValueError as err:
        raise UserError(str(err)) from None
    return _print(args, model, genotype)


def _build(args: argparse.Namespace):
    with torch.device("meta"):  # shapes and counts without allocating weights
        if args.model in PRESETS:
            overrides = {} if args.image_size is None else {"image_size": args.image_size}
            model = create_model(args.model, num_classes=args.num_classes, **overrides)
            genotype = model.genotype
        else:
            genotype = resolve_genotype(args.model)
            stem, cells, filters = (
                GENOTYPE_DEFAULTS[name] if getattr(args, name) is None else getattr(args, name)
                for name in ("stem", "cells", "filters")
            )
            size = args.image_size or (32 if stem == "cifar" else 224)
            model = build_network(
                genotype,
                stem=stem,
                cells=cells,
                filters=filters,
                num_classes=args.num_classes or (10 if stem == "cifar" else 1000),
                image_size=size,
            )
    return model, genotype


def _print(args: argparse.Namespace, model, genotype) -> int:
    cfg = model.config
    console = stdout_console()
    console.print(f"[bold]{args.model}[/]  hash {genotype.canonical_hash()}")
    for kind, cell in (("normal", genotype.normal), ("reduction", genotype.reduction)):
        console.print(describe_cell(kind, cell), markup=False, highlight=False)
    p = penultimate_filters(genotype, cfg.filters, cfg.num_reductions)
    console.print(
        f"stem {cfg.stem}, N={cfg.cells}, F={cfg.filters} ({cfg.cells} @ {p}), "
        f"{cfg.num_classes} classes, input {cfg.in_chans}x{cfg.image_size}x{cfg.image_size}"
    )
    console.print(f"params     {count_params(model):,}")
    console.print(
        f"mult-adds  {count_mult_adds(model, (cfg.in_chans, cfg.image_size, cfg.image_size)):,}"
    )
    table = Table("stage", "C", "H", "W")
    for name, (c, h, w) in cell_output_shapes(model):
        table.add_row(name, str(c), str(h), str(w))
    console.print(table)
    return 0
