"""``nasnet draw FILE.json|NAME -o cell.svg|cell.png``: the paper-style cell diagram."""

from __future__ import annotations

import argparse

from nasnet.cli import UserError, write_failed
from nasnet.draw import FORMATS, draw_genotype
from nasnet.genotypes import resolve_genotype


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "draw",
        help="draw the normal and reduction cells of a genotype",
        description="Draw a genotype's two cells the way the paper's Figure 4 does.",
    )
    p.add_argument("genotype", help="a genotype JSON file or a known name such as nasnet_a")
    p.add_argument("-o", "--output", required=True, help="image file: .svg, .png or .pdf")
    p.add_argument("--title", help="title above the two cells (default: the genotype)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.output.lower().endswith(FORMATS):
        raise UserError(f"{args.output}: unsupported image format; use {', '.join(FORMATS)}")
    genotype = resolve_genotype(args.genotype)
    title = args.title or f"{args.genotype} ({genotype.canonical_hash()})"
    try:
        draw_genotype(genotype, args.output, title)
    except OSError as err:
        raise write_failed(args.output, err) from None
    print(f"wrote {args.output}")
    return 0
