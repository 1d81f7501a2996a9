"""Cell diagrams in the style of the paper's Figure 4, rendered with matplotlib.

Hidden states are grey boxes (h_i and h_{i-1} at the bottom), each block's two ops are yellow
boxes feeding a green combine node, and the states that form the cell output meet in a
"concat" node at the top. SVG output keeps the labels as text.
"""

from __future__ import annotations

import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from nasnet.files import atomic_write_bytes
from nasnet.space import NUM_CELL_INPUTS, Cell, Genotype

_COLOURS = {"state": "#d9d9d9", "op": "#fff2a8", "combine": "#b7e1a1", "output": "#c9b8e8"}
FORMATS = (".svg", ".png", ".pdf")


def _levels(cell: Cell) -> list[int]:
    """Depth of each block: one more than the deepest block it reads (cell inputs are 0)."""
    depth = [0] * NUM_CELL_INPUTS
    for b in cell.blocks:
        depth.append(1 + max(depth[b.input_1], depth[b.input_2]))
    return depth[NUM_CELL_INPUTS:]


def _layout(cell: Cell) -> dict:
    """Positions of every node: states, op boxes, combine nodes and the output."""
    levels = _levels(cell)
    pos: dict = {("state", 1): (-1.6, 0.0), ("state", 0): (1.6, 0.0)}
    for level in sorted(set(levels)):
        members = [k for k, lv in enumerate(levels) if lv == level]
        for j, k in enumerate(members):
            x = (j - (len(members) - 1) / 2) * 3.4
            pos[("op", k, 0)] = (x - 0.85, 3.0 * level - 1.4)
            pos[("op", k, 1)] = (x + 0.85, 3.0 * level - 1.4)
            pos[("state", NUM_CELL_INPUTS + k)] = (x, 3.0 * level)
    pos["output"] = (0.0, 3.0 * max(levels) + 2.0)
    return pos


def _box(ax, xy, text, kind, width=1.55, height=0.62, fontsize=7.5):
    x, y = xy
    ax.add_patch(
        FancyBboxPatch(
            (x - width / 2, y - height / 2),
            width,
            height,
            boxstyle="round,pad=0.04",
            facecolor=_COLOURS[kind],
            edgecolor="#555555",
            linewidth=0.8,
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, start, end):
    ax.add_patch(
        FancyArrowPatch(
            (start[0], start[1] + 0.32),
            (end[0], end[1] - 0.32),
            arrowstyle="-|>",
            mutation_scale=7,
            color="#777777",
            linewidth=0.7,
            shrinkA=0,
            shrinkB=0,
        )
    )


def draw_cell(ax, cell: Cell, title: str) -> None:
    """Draw one cell on a matplotlib axis."""
    pos = _layout(cell)
    names = ["h_i", "h_i-1"] + [f"block {k}" for k in range(len(cell.blocks))]
    for index in range(NUM_CELL_INPUTS):
        _box(ax, pos[("state", index)], names[index], "state")
    for k, block in enumerate(cell.blocks):
        combine_xy = pos[("state", NUM_CELL_INPUTS + k)]
        for side, (source, op) in enumerate(
            ((block.input_1, block.op_1), (block.input_2, block.op_2))
        ):
            op_xy = pos[("op", k, side)]
            _box(ax, op_xy, op, "op")
            _arrow(ax, pos[("state", source)], op_xy)
            _arrow(ax, op_xy, combine_xy)
        _box(ax, combine_xy, f"{block.combine}\n(block {k})", "combine", width=1.2, height=0.7)
    _box(ax, pos["output"], "concat", "output", width=1.4)
    for index in cell.output_states():
        _arrow(ax, pos[("state", index)], pos["output"])
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    ax.set_xlim(min(xs) - 1.2, max(xs) + 1.2)
    ax.set_ylim(min(ys) - 0.8, max(ys) + 0.8)
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def _width(cell: Cell) -> float:
    xs = [p[0] for p in _layout(cell).values()]
    return max(xs) - min(xs) + 2.4


def draw_genotype(genotype: Genotype, path: str, title: str | None = None) -> str:
    """Render the normal and reduction cells side by side to ``path`` (.svg, .png or .pdf)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"{path}: unsupported image format; use one of {', '.join(FORMATS)}")
    buffer = io.BytesIO()  # then one atomic write: a full disk leaves no partial image
    _render(genotype, buffer, title, ext[1:])
    atomic_write_bytes(path, buffer.getvalue())
    return path


def genotype_svg(genotype: Genotype, title: str | None = None) -> str:
    """The diagram of :func:`draw_genotype` as SVG text (for embedding in HTML)."""
    buffer = io.StringIO()
    _render(genotype, buffer, title, "svg")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _render(genotype: Genotype, target, title: str | None, fmt: str) -> None:
    """Draw both cells and save the figure to ``target`` (a path or a file object)."""
    depth = max(max(_levels(genotype.normal)), max(_levels(genotype.reduction)))
    widths = [_width(genotype.normal), _width(genotype.reduction)]
    with plt.rc_context({"svg.fonttype": "none"}):
        fig, axes = plt.subplots(
            1,
            2,
            figsize=(0.62 * sum(widths) + 1, 1.4 + 1.5 * depth),
            gridspec_kw={"width_ratios": widths},
        )
        draw_cell(axes[0], genotype.normal, "Normal cell")
        draw_cell(axes[1], genotype.reduction, "Reduction cell")
        if title:
            fig.suptitle(title, fontsize=11)
        fig.tight_layout()
        fig.savefig(target, dpi=150, format=fmt)
        plt.close(fig)
