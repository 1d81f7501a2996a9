"""A weight-sharing "supernet" over the full NASNet search space.

:class:`SuperNet` holds, for every cell position of the network (each normal and reduction
cell has its own weights, as in a standalone network), for every block position ``k``, both
operand slots, every allowed input state and every op of a :class:`~nasnet.space.SearchSpace`,
the module that :func:`nasnet.network.build_network` would build there. Any genotype of the
space (or with fewer blocks) is a sub-network: ``supernet(x, genotype)`` runs only the chosen
path, and :meth:`SuperNet.to_standalone` copies the chosen path's weights into a
``build_network`` model that computes the same function.

Widths (the concat combine and the unused-state concatenation make them depend on the
genotype), handled so that the sub-network is exactly the standalone network's function:

* **Ops.** A block state is ``C`` channels wide after an ``add`` combine and ``2C`` after a
  ``concat``. The supernet keeps one op module per (block, slot, input state, input width,
  op), built by the same op factory with the same ``c_in``: an op reading a ``2C`` state is
  the same module class with the same shapes as in the standalone cell (a pool gets its 1x1
  projection, ``identity`` becomes ReLU-1x1-BN). Cell inputs (states 0 and 1) have a fixed
  width at each cell position.
* **Cell outputs.** A cell's output concatenates its output states, so its width varies.
  Every layer that reads a cell output starts with a 1x1 convolution (the next cells' input
  projections, the factorized reduction, the classifier after global pooling); a 1x1
  convolution of a concatenation is the sum of 1x1 convolutions of the parts. So these layers
  hold one weight *piece* per possible (producer state, width), and the weight for a
  genotype is the concatenation of the pieces of the states it concatenates, in order: the
  exact weight of the standalone layer. Where the standalone network uses no projection
  (``h_{i-1}`` already ``C`` wide: identity), neither does the sub-network.
* **Stem, reductions, strides, SAME padding, factorized reduction**: as in
  :mod:`nasnet.network` (the macro structure is re-derived here from the same rules).

Where the sub-network differs from ``build_network``'s model, on purpose:

* **BatchNorm uses batch statistics in both modes** (no running statistics: they would mix
  every architecture the supernet has seen, as ENAS and DARTS avoid). The sub-network equals
  the standalone network in ``train()`` mode; in ``eval()`` mode the standalone one uses its
  running statistics instead.
* **No DropPath and no auxiliary head** (training-time regularisers of the final network):
  the standalone model to compare with is built with ``drop_path_keep_prob=1.0`` and
  ``auxiliary=False`` (:meth:`SuperNet.to_standalone` does).
* **With** ``normalize_free_ops=True`` (new weight-sharing searches set it), the output of
  every weightless op (``identity`` at equal width and stride 1, a pool needing no
  projection) goes through a parameter-free batch normalisation, as DARTS does for its pools
  during search. Without it, sums of unnormalised pool and identity paths give each sampled
  cell a different output scale, and the shared classifier cannot serve them all: on digits
  the training loss of random cells averages 4.3 over the first 100 steps (guessing is 2.3;
  2.33 with the normalisation). The sub-network then differs from the standalone network
  exactly there (the standalone network, which ``nasnet transfer`` retrains, has no such
  normalisation); with the default ``False`` it is the standalone function.

``tests/test_supernet.py`` checks outputs and gradients against the standalone network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nasnet import ops as _ops
from nasnet.ops import BNConfig, FactorizedReduction, spatial_mean
from nasnet.space import NUM_CELL_INPUTS, Cell, Genotype, SearchSpace

#: A tensor's layout: the (producer state, width) pieces it concatenates, in order.
Layout = tuple[str, ...]

STEM_PIECE = "stem"


def op_factories() -> dict:
    """The op table of :mod:`nasnet.ops` (``OP_FACTORIES``, formerly ``OPS``)."""
    table = getattr(_ops, "OP_FACTORIES", None)
    return table if table is not None else _ops.OPS


def piece(state: int, width: int) -> str:
    return f"{state}x{width}"


@dataclass(frozen=True)
class CellPlan:
    """Where a cell sits: its filters, kind, and which earlier outputs it reads."""

    channels: int
    reduction: bool
    i_index: int  # index of h_i in the outputs list (1: the stem)
    prev_index: int  # index of h_{i-1} (0: none, the cell reads h_i twice)
    prev_larger: bool  # h_{i-1} has twice h_i's spatial size


def plan_cells(
    stem: str = "cifar",
    cells: int = 1,
    filters: int = 8,
    num_reductions: int = 2,
    skip_reduction_layer_input: bool = False,
    stem_multiplier: float = 3.0,
) -> tuple[int, list[CellPlan]]:
    """The stem's channels and every cell's :class:`CellPlan`, as ``NASNet._build`` does."""
    outs: list[tuple[int, int] | None]  # (channels or -1 for cells, stride)
    plans: list[CellPlan] = []

    def add(channels: int, reduction: bool, prev_index: int | None = None) -> None:
        i_index = len(outs) - 1
        if prev_index is None:
            prev_index = len(outs) - 2
        stride = outs[i_index][1]  # type: ignore[index]
        prev = outs[prev_index]
        larger = prev is not None and prev[1] < stride
        plans.append(CellPlan(channels, reduction, i_index, prev_index, larger))
        outs.append((-1, stride * (2 if reduction else 1)))

    if stem == "cifar":
        c_stem = int(filters * stem_multiplier)
        outs = [None, (c_stem, 1)]
    else:
        c_stem = int(32 * stem_multiplier)
        outs = [None, (c_stem, 2)]
        for scale in (0.25, 0.5):
            add(int(filters * scale), True)
    reduction_at = {cells * (i + 1) for i in range(num_reductions)}
    scaling = 1.0
    for normal_index in range(cells * (num_reductions + 1)):
        prev_index = None
        if normal_index in reduction_at:
            scaling *= 2
            if skip_reduction_layer_input:
                prev_index = len(outs) - 2
            add(int(filters * scaling), True)
        add(int(filters * scaling), False, prev_index)
    return c_stem, plans


class PiecewiseConv(nn.Module):
    """A 1x1 convolution (no bias) whose input is a concatenation of known pieces: one weight
    piece per possible input piece; the weight for a layout is their concatenation."""

    def __init__(self, widths: dict[str, int], c_out: int):
        super().__init__()
        self.c_out = c_out
        self.pieces = nn.ParameterDict(
            {key: nn.Parameter(torch.empty(c_out, w, 1, 1)) for key, w in widths.items()}
        )
        for p in self.pieces.values():
            nn.init.kaiming_normal_(p, mode="fan_out", nonlinearity="relu")

    def weight(self, layout: Layout) -> torch.Tensor:
        return torch.cat([self.pieces[key] for key in layout], dim=1)


class PiecewiseLinear(nn.Module):
    """The classifier over a concatenation of pieces (after global average pooling)."""

    def __init__(self, widths: dict[str, int], num_classes: int):
        super().__init__()
        self.pieces = nn.ParameterDict(
            {key: nn.Parameter(torch.empty(num_classes, w)) for key, w in widths.items()}
        )
        for p in self.pieces.values():
            nn.init.normal_(p, std=0.01)
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def weight(self, layout: Layout) -> torch.Tensor:
        return torch.cat([self.pieces[key] for key in layout], dim=1)

    def forward(self, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        return F.linear(x, self.weight(layout), self.bias)


def _factorized(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """``FactorizedReduction``'s two stride-2 paths, concatenated (the even pixels, and the
    odd ones), as ``nasnet.ops.FactorizedReduction`` computes them."""
    return _ops.factorized_1x1(x, lambda p: F.conv2d(p, w1), lambda p: F.conv2d(p, w2))


class SuperCell(nn.Module):
    """Every op on every input of every block of one cell position."""

    def __init__(
        self,
        space: SearchSpace,
        plan: CellPlan,
        h_i_widths: dict[str, int],
        h_prev_widths: dict[str, int] | None,
        bn: BNConfig,
        normalize_free_ops: bool = False,
    ):
        super().__init__()
        c = plan.channels
        self.bn_eps = bn.eps
        self.space, self.plan, self.channels = space, plan, c
        self.pre_i_conv = PiecewiseConv(h_i_widths, c)
        self.pre_i_bn = bn.make(c)
        self.has_prev_prev = h_prev_widths is not None
        if h_prev_widths is None:  # h_{i-1} is the raw h_i (the stem), unprojected
            assert list(h_i_widths) == [STEM_PIECE], "only the first cell lacks h_{i-1}"
            c_h1 = h_i_widths[STEM_PIECE]
        else:
            c_h1 = c
            if plan.prev_larger:
                self.pre_prev_1 = PiecewiseConv(h_prev_widths, c // 2)
                self.pre_prev_2 = PiecewiseConv(h_prev_widths, c - c // 2)
            else:
                self.pre_prev_conv = PiecewiseConv(h_prev_widths, c)
            self.pre_prev_bn = bn.make(c)
        self.c_h1 = c_h1
        factories = op_factories()
        widths = self.block_widths(space, c)
        self.ops = nn.ModuleDict()
        for k in range(space.num_blocks):
            for slot in (0, 1):
                for j in range(NUM_CELL_INPUTS + k):
                    stride = 2 if plan.reduction and j < NUM_CELL_INPUTS else 1
                    in_widths = [c] if j == 0 else [c_h1] if j == 1 else widths
                    for w in in_widths:
                        for op in space.ops:
                            self.ops[self.op_key(k, slot, j, w, op)] = factories[op](
                                w, c, stride, bn
                            )
        #: Keys of the weightless ops whose outputs are normalised (see the module docstring).
        self.normalized: frozenset[str] = frozenset(
            key for key, module in self.ops.items()
            if normalize_free_ops and next(module.parameters(), None) is None
        )  # fmt: skip
        self.out_projections = nn.ModuleDict()
        for index, width in ((0, c), (1, c_h1)):
            needs_reduce = plan.reduction
            if needs_reduce or (index == 1 and width != c):
                self.out_projections[str(index)] = FactorizedReduction(
                    width, c, bn, stride=2 if needs_reduce else 1
                )

    @staticmethod
    def block_widths(space: SearchSpace, c: int) -> list[int]:
        """Possible widths of a block state: C after add, 2C after concat."""
        return [w for combine, w in (("add", c), ("concat", 2 * c)) if combine in space.combines]

    @staticmethod
    def op_key(k: int, slot: int, state: int, width: int, op: str) -> str:
        return f"b{k}_{slot}_s{state}_w{width}_{op}"

    def output_widths(self) -> dict[str, int]:
        """Every piece this cell's output may contain."""
        c = self.channels
        widths = {piece(0, c): c, piece(1, c): c}
        for k in range(self.space.num_blocks):
            for w in self.block_widths(self.space, c):
                widths[piece(NUM_CELL_INPUTS + k, w)] = w
        return widths

    def state_widths(self, cell: Cell) -> list[int]:
        c = self.channels
        return [c, self.c_h1] + [2 * c if b.combine == "concat" else c for b in cell.blocks]

    def output_layout(self, cell: Cell) -> Layout:
        """The pieces of this cell's output for ``cell`` (projected states are C wide)."""
        widths = self.state_widths(cell)
        return tuple(
            piece(i, self.channels if str(i) in self.out_projections else widths[i])
            for i in cell.output_states()
        )

    def prev_is_identity(self, h_prev_layout: Layout, h_prev: torch.Tensor) -> bool:
        return not self.plan.prev_larger and h_prev.shape[1] == self.channels

    def inputs(self, h_i, h_i_layout: Layout, h_prev, h_prev_layout: Layout | None):
        """States 0 and 1: the input projections of h_i and h_{i-1}."""
        s0 = self.pre_i_bn(F.conv2d(torch.relu(h_i), self.pre_i_conv.weight(h_i_layout)))
        if not self.has_prev_prev:
            return s0, h_i
        assert h_prev_layout is not None
        if self.plan.prev_larger:
            x = torch.relu(h_prev)
            w1 = self.pre_prev_1.weight(h_prev_layout)
            w2 = self.pre_prev_2.weight(h_prev_layout)
            return s0, self.pre_prev_bn(_factorized(x, w1, w2))
        if h_prev.shape[1] == self.channels:  # the standalone cell uses no projection here
            return s0, h_prev
        w = self.pre_prev_conv.weight(h_prev_layout)
        return s0, self.pre_prev_bn(F.conv2d(torch.relu(h_prev), w))

    def forward(self, cell: Cell, h_i, h_i_layout, h_prev, h_prev_layout) -> torch.Tensor:
        states = list(self.inputs(h_i, h_i_layout, h_prev, h_prev_layout))
        for k, b in enumerate(cell.blocks):
            pair = []
            for slot, (j, op) in enumerate(((b.input_1, b.op_1), (b.input_2, b.op_2))):
                x = states[j]
                key = self.op_key(k, slot, j, int(x.shape[1]), op)
                y = self.ops[key](x)
                if key in self.normalized:
                    y = F.batch_norm(y, None, None, training=True, eps=self.bn_eps)
                pair.append(y)
            a, y = pair
            states.append(a + y if b.combine == "add" else torch.cat([a, y], dim=1))
        outputs = []
        for index in cell.output_states():
            state = states[index]
            if str(index) in self.out_projections:
                state = self.out_projections[str(index)](state)
            outputs.append(state)
        return torch.cat(outputs, dim=1)


class SuperNet(nn.Module):
    """Shared weights for every genotype of ``space`` at one network size.

    The size arguments are those of :func:`nasnet.network.build_network` (``cells`` = N,
    ``filters`` = F, ``stem``, ``image_size`` is not needed: nothing depends on it without
    the aux head). ``forward(x, genotype)`` returns the logits of the sub-network.
    ``normalize_free_ops`` adds the search-time normalisation described in the module
    docstring.
    """

    def __init__(
        self,
        space: SearchSpace,
        stem: str = "cifar",
        cells: int = 1,
        filters: int = 8,
        num_classes: int = 10,
        in_chans: int = 3,
        stem_multiplier: float | None = None,
        num_reductions: int = 2,
        skip_reduction_layer_input: bool = False,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        normalize_free_ops: bool = False,
    ):
        super().__init__()
        if stem_multiplier is None:
            stem_multiplier = 3.0
        self.space = space
        self.config = {
            "stem": stem, "cells": cells, "filters": filters, "num_classes": num_classes,
            "in_chans": in_chans, "stem_multiplier": stem_multiplier,
            "num_reductions": num_reductions,
            "skip_reduction_layer_input": skip_reduction_layer_input,
            "bn_eps": bn_eps, "bn_momentum": bn_momentum,
        }  # fmt: skip
        bn = BNConfig(bn_eps, bn_momentum)
        c_stem, self.plans = plan_cells(
            stem, cells, filters, num_reductions, skip_reduction_layer_input, stem_multiplier
        )
        if stem == "cifar":
            conv = nn.Conv2d(in_chans, c_stem, 3, 1, 1, bias=False)
        else:
            conv = nn.Conv2d(in_chans, c_stem, 3, 2, 0, bias=False)
        self.stem = nn.Sequential(conv, bn.make(c_stem))
        widths: list[dict[str, int] | None] = [None, {STEM_PIECE: c_stem}]
        self.cells = nn.ModuleList()
        for plan in self.plans:
            cell = SuperCell(space, plan, widths[plan.i_index], widths[plan.prev_index], bn,  # type: ignore[arg-type]
                             normalize_free_ops)  # fmt: skip
            self.cells.append(cell)
            widths.append(cell.output_widths())
        self.classifier = PiecewiseLinear(widths[-1], num_classes)  # type: ignore[arg-type]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if isinstance(m, nn.BatchNorm2d):  # batch statistics only (see the docstring)
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.track_running_stats = False
                m.running_mean = m.running_var = m.num_batches_tracked = None

    def layouts(self, genotype: Genotype) -> list[Layout | None]:
        """The layout of every output (index 1: the stem, 2 + c: cell c) for ``genotype``."""
        layouts: list[Layout | None] = [None, (STEM_PIECE,)]
        for cell in self.cells:
            layouts.append(cell.output_layout(self._cell(genotype, cell.plan)))
        return layouts

    @staticmethod
    def _cell(genotype: Genotype, plan: CellPlan) -> Cell:
        return genotype.reduction if plan.reduction else genotype.normal

    def check(self, genotype: Genotype) -> Genotype:
        """Raise :class:`~nasnet.space.GenotypeError` unless ``genotype`` is a sub-network
        (valid, ops and combines in the space, at most the space's B blocks per cell)."""
        from nasnet.space import GenotypeError, validate_genotype

        validate_genotype(genotype, self.space.ops)
        for where, cell in (("normal", genotype.normal), ("reduction", genotype.reduction)):
            if len(cell.blocks) > self.space.num_blocks:
                raise GenotypeError(
                    f"{where}.blocks: {len(cell.blocks)} blocks, the supernet has "
                    f"{self.space.num_blocks}"
                )
            for k, b in enumerate(cell.blocks):
                if b.combine not in self.space.combines:
                    raise GenotypeError(f"{where}.blocks[{k}].combine: not in the supernet")
        return genotype

    def forward_features(self, x: torch.Tensor, genotype: Genotype) -> tuple[torch.Tensor, Layout]:
        layouts = self.layouts(genotype)
        outputs: list[torch.Tensor | None] = [None, self.stem(x)]
        for cell in self.cells:
            plan = cell.plan
            outputs.append(
                cell(self._cell(genotype, plan), outputs[plan.i_index], layouts[plan.i_index],
                     outputs[plan.prev_index], layouts[plan.prev_index])
            )  # fmt: skip
        return torch.relu(outputs[-1]), layouts[-1]  # type: ignore[arg-type,return-value]

    def forward(self, x: torch.Tensor, genotype: Genotype) -> torch.Tensor:
        features, layout = self.forward_features(x, genotype)
        return self.classifier(spatial_mean(features), layout)

    def path_parameters(self, genotype: Genotype) -> int:
        """Parameters of the sub-network (as ``count_params`` of the standalone model)."""
        return sum(p.numel() for p in self.to_standalone(genotype, device="meta").parameters())

    @torch.no_grad()
    def to_standalone(self, genotype: Genotype, device: str | torch.device | None = None):
        """A ``build_network`` model of ``genotype`` holding the supernet's chosen-path
        weights (``drop_path_keep_prob=1.0``, no aux head); in ``train()`` mode it computes
        what ``self(x, genotype)`` computes (without ``normalize_free_ops``). Its BN running
        statistics stay at their initial values (the supernet keeps none)."""
        from nasnet.network import build_network

        cfg = dict(self.config)
        stem, cells, filters = cfg.pop("stem"), cfg.pop("cells"), cfg.pop("filters")
        num_classes, in_chans = cfg.pop("num_classes"), cfg.pop("in_chans")
        kwargs = {"device": device} if device is not None else {}
        with torch.device(kwargs.get("device", "cpu")):
            model = build_network(
                genotype, stem=stem, cells=cells, filters=filters, num_classes=num_classes,
                in_chans=in_chans, auxiliary=False, drop_path_keep_prob=1.0, **cfg,
            )  # fmt: skip
        if device is not None and torch.device(device).type == "meta":
            return model
        copy_path_weights(self, genotype, model)
        return model


def _copy_module(source: nn.Module, target: nn.Module) -> None:
    """Copy every parameter of ``source`` into ``target`` (same structure); ``target``'s BN
    running statistics, which ``source`` lacks, are left alone."""
    missing, unexpected = target.load_state_dict(source.state_dict(), strict=False)
    stats = ("running_mean", "running_var", "num_batches_tracked")
    bad = [k for k in missing if not k.endswith(stats)] + list(unexpected)
    if bad:
        raise RuntimeError(f"supernet and standalone modules differ: {bad[:3]}")


def _copy_bn(source: nn.BatchNorm2d, target: nn.BatchNorm2d) -> None:
    target.weight.copy_(source.weight)
    target.bias.copy_(source.bias)


@torch.no_grad()
def copy_path_weights(supernet: SuperNet, genotype: Genotype, model: nn.Module) -> None:
    """Copy the chosen path of ``supernet`` into ``model`` (a ``build_network`` NASNet of
    ``genotype`` with the supernet's size); raises if any of ``model``'s parameters is left."""
    supernet.check(genotype)
    layouts = supernet.layouts(genotype)
    written: set[int] = set()

    def mark(module: nn.Module) -> None:
        written.update(id(p) for p in module.parameters())

    _copy_module(supernet.stem, model.stem)
    mark(model.stem)
    for super_cell, cell_module in zip(supernet.cells, model.cells, strict=True):
        plan = super_cell.plan
        cell = supernet._cell(genotype, plan)
        pre_i = cell_module.pre_i  # ReLUConvBN: ReLU, conv, BN
        pre_i[1].weight.copy_(super_cell.pre_i_conv.weight(layouts[plan.i_index]))
        _copy_bn(super_cell.pre_i_bn, pre_i[2])
        mark(pre_i)
        pre_prev = cell_module.pre_prev
        if super_cell.has_prev_prev and not isinstance(pre_prev, nn.Identity):
            layout = layouts[plan.prev_index]
            if plan.prev_larger:  # Sequential(ReLU, FactorizedReduction)
                reduction = pre_prev[1]
                reduction.path_1.weight.copy_(super_cell.pre_prev_1.weight(layout))
                reduction.path_2.weight.copy_(super_cell.pre_prev_2.weight(layout))
                _copy_bn(super_cell.pre_prev_bn, reduction.bn)
            else:  # ReLUConvBN
                pre_prev[1].weight.copy_(super_cell.pre_prev_conv.weight(layout))
                _copy_bn(super_cell.pre_prev_bn, pre_prev[2])
            mark(pre_prev)
        widths = super_cell.state_widths(cell)
        for k, b in enumerate(cell.blocks):
            for slot, (j, op) in enumerate(((b.input_1, b.op_1), (b.input_2, b.op_2))):
                target = cell_module.ops[2 * k + slot]
                _copy_module(super_cell.ops[super_cell.op_key(k, slot, j, widths[j], op)], target)
                mark(target)
        for key, target in cell_module.out_projections.items():
            _copy_module(super_cell.out_projections[key], target)
            mark(target)
    model.classifier.weight.copy_(supernet.classifier.weight(layouts[-1]))
    model.classifier.bias.copy_(supernet.classifier.bias)
    mark(model.classifier)
    left = [n for n, p in model.named_parameters() if id(p) not in written]
    left = [n for n in left if not n.startswith("aux_head.")]
    if left:
        raise RuntimeError(f"parameters not copied from the supernet: {left[:5]}")


def supernet_memory(supernet: SuperNet) -> dict[str, int]:
    """Parameter count and bytes of the weights (SGD momentum doubles it for trained ones)."""
    params = sum(p.numel() for p in supernet.parameters())
    return {
        "params": params,
        "bytes": sum(p.numel() * p.element_size() for p in supernet.parameters()),
        "op_modules": sum(len(c.ops) for c in supernet.cells),  # type: ignore[arg-type]
    }


def sample_genotypes(space: SearchSpace, count: int, seed: int) -> Sequence[Genotype]:
    import random

    rng = random.Random(seed)
    return [space.sample(rng) for _ in range(count)]


__all__ = [
    "CellPlan",
    "SuperCell",
    "SuperNet",
    "copy_path_weights",
    "op_factories",
    "plan_cells",
    "sample_genotypes",
    "supernet_memory",
]
