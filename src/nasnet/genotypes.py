"""Known cells as plain data.

``NASNET_A`` follows TF-slim's ``NasNetANormalCell`` / ``NasNetAReductionCell`` block for
block, including their concat lists (6 states in the normal cell, 4 in the reduction cell):
the published parameter counts and weights follow the code, not the paper's figure.
"""

from __future__ import annotations

import os

from nasnet.space import Block, Cell, Genotype, GenotypeError, load_genotype

NASNET_A = Genotype(
    normal=Cell(
        blocks=(
            Block(0, 1, "sep_conv_5x5", "sep_conv_3x3"),
            Block(1, 1, "sep_conv_5x5", "sep_conv_3x3"),
            Block(0, 1, "avg_pool_3x3", "identity"),
            Block(1, 1, "avg_pool_3x3", "avg_pool_3x3"),
            Block(0, 0, "sep_conv_3x3", "identity"),
        ),
        concat=(1, 2, 3, 4, 5, 6),
    ),
    reduction=Cell(
        blocks=(
            Block(0, 1, "sep_conv_5x5", "sep_conv_7x7"),
            Block(0, 1, "max_pool_3x3", "sep_conv_7x7"),
            Block(0, 1, "avg_pool_3x3", "sep_conv_5x5"),
            Block(3, 2, "identity", "avg_pool_3x3"),
            Block(2, 0, "sep_conv_3x3", "max_pool_3x3"),
        ),
        concat=(3, 4, 5, 6),
    ),
)

#: NASNet-A with the paper's rule for the output (every unconsumed state: 5 and 3 states),
#: as drawn in the paper's Figure 4 and as DARTS' ``NASNet`` genotype concatenates.
NASNET_A_FIGURE = Genotype(
    normal=Cell(NASNET_A.normal.blocks),
    reduction=Cell(NASNET_A.reduction.blocks),
)

#: Name -> genotype, for the command line (``--genotype nasnet_a``).
GENOTYPES: dict[str, Genotype] = {
    "nasnet_a": NASNET_A,
    "nasnet_a_figure": NASNET_A_FIGURE,
}


def resolve_genotype(spec: str | dict | Genotype) -> Genotype:
    """A genotype from a name in :data:`GENOTYPES`, a JSON file path, a dict or a Genotype."""
    if isinstance(spec, Genotype):
        return spec
    if isinstance(spec, dict):
        return Genotype.from_dict(spec)
    if spec in GENOTYPES:
        return GENOTYPES[spec]
    if not os.path.exists(spec):
        raise GenotypeError(
            f"unknown genotype {spec!r}: no such file, and not a known name "
            f"({', '.join(GENOTYPES)})"
        )
    return load_genotype(spec)


#: Short op names for one-line cell descriptions.
SHORT_OPS = {
    "identity": "id",
    "conv_1x3_3x1": "c13",
    "conv_1x7_7x1": "c17",
    "dil_conv_3x3": "dil3",
    "avg_pool_3x3": "avg3",
    "max_pool_3x3": "max3",
    "max_pool_5x5": "max5",
    "max_pool_7x7": "max7",
    "conv_1x1": "c1",
    "conv_3x3": "c3",
    "sep_conv_3x3": "sep3",
    "sep_conv_5x5": "sep5",
    "sep_conv_7x7": "sep7",
}


def describe_cell(kind: str, cell: Cell) -> str:
    """A cell as text: one line per block, then the concatenated states."""
    names = ["h_i", "h_i-1"] + [f"b{k}" for k in range(len(cell.blocks))]
    lines = [f"{kind} cell:"]
    for k, b in enumerate(cell.blocks):
        lines.append(
            f"  b{k} = {b.combine}({b.op_1}({names[b.input_1]}), {b.op_2}({names[b.input_2]}))"
        )
    lines.append("  output = concat(" + ", ".join(names[i] for i in cell.output_states()) + ")")
    return "\n".join(lines)


def cell_summary(cell: Cell) -> str:
    """A cell on one line: ``op(input)+op(input)`` per block (``|`` for concat combines);
    inputs are state numbers (0 = h_i, 1 = h_i-1, 2+ blocks)."""
    parts = []
    for b in cell.blocks:
        joint = "+" if b.combine == "add" else "|"
        one = f"{SHORT_OPS.get(b.op_1, b.op_1)}({b.input_1})"
        two = f"{SHORT_OPS.get(b.op_2, b.op_2)}({b.input_2})"
        parts.append(one + joint + two)
    return " ".join(parts)
