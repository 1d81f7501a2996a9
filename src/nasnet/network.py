"""Any genotype to a network: the Cell module, CIFAR and ImageNet stems, N @ F scaling, aux head.

The macro structure follows TF-slim's ``_build_nasnet_base``: ``3N`` normal cells with a
reduction cell inserted before normal cells ``N`` and ``2N``; filters double at each reduction;
the ImageNet stem is a 3x3 stride-2 convolution followed by two reduction "stem cells" at 1/4 and
1/2 filter scale. Which earlier output a cell sees as h_{i-1} is tracked exactly as TF-slim does,
including ``skip_reduction_layer_input``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from nasnet.ops import (
    OP_FACTORIES,
    UNDROPPED_OPS,
    AvgPool2dSame,
    BNConfig,
    DropPath,
    FactorizedReduction,
    Pointwise,
    Pool,
    ReLUConvBN,
    WholeMapConv,
    after_first_layer,
    after_relu,
    concat_of_sums,
    fast,
    spatial_mean,
    starts_with_relu,
)
from nasnet.runtime import module_mode
from nasnet.space import NUM_CELL_INPUTS, Cell, Genotype, validate_genotype

STEMS = ("cifar", "imagenet")
POOL_PADDINGS = ("tf", "timm")


class LazyReLU:
    """``relu(x)``, computed on the first call and then reused: NASNet applies ReLU to the
    same tensor in several ops (every op that starts with ReLU and reads that state, and the
    next two cells' input projections), so one shared ReLU replaces several, forward and
    backward (autograd sums the gradients before the single ReLU backward)."""

    __slots__ = ("x", "y")

    def __init__(self, x: torch.Tensor):
        self.x, self.y = x, None

    def __call__(self) -> torch.Tensor:
        if self.y is None:
            self.y = torch.relu(self.x)
        return self.y


class CellModule(nn.Module):
    """One NASNet cell built from a :class:`~nasnet.space.Cell`.

    Args:
        cell: the blocks and output rule.
        c_prev: channels of h_i (the previous cell's output).
        c_prev_prev: channels of h_{i-1}, or ``None`` when there is no second predecessor
            (then h_{i-1} is the raw h_i input, as in TF-slim).
        channels: the cell's filter count ``F_cell``; every op outputs this many channels.
        reduction: apply stride 2 to ops that read a cell input.
        prev_prev_larger: h_{i-1} has twice the spatial size of h_i (factorized reduction).
    """

    def __init__(
        self,
        cell: Cell,
        c_prev: int,
        c_prev_prev: int | None,
        channels: int,
        reduction: bool,
        prev_prev_larger: bool,
        bn: BNConfig,
    ):
        super().__init__()
        self.cell = cell
        self.reduction = reduction
        self.has_prev_prev = c_prev_prev is not None
        self.pre_i = ReLUConvBN(c_prev, channels, 1, 1, bn)
        if c_prev_prev is None:  # TF-slim feeds the raw h_i input as h_{i-1}, unprojected
            self.pre_prev, c_h1 = nn.Identity(), c_prev
        else:
            self.pre_prev, c_h1 = self._prev_adjustment(c_prev_prev, channels, prev_prev_larger, bn)
        state_channels = [channels, c_h1]
        self.ops = nn.ModuleList()
        self.drop_paths = nn.ModuleList()
        pools: list[tuple[str, int] | None] = []  # (op, state) of each op that is a pool
        for block in cell.blocks:
            for index, name in ((block.input_1, block.op_1), (block.input_2, block.op_2)):
                stride = 2 if reduction and index < NUM_CELL_INPUTS else 1
                self.ops.append(OP_FACTORIES[name](state_channels[index], channels, stride, bn))
                self.drop_paths.append(nn.Identity() if name in UNDROPPED_OPS else DropPath())
                pools.append((name, index) if isinstance(self.ops[-1], Pool) else None)
            state_channels.append(channels * (2 if block.combine == "concat" else 1))
        self.output_states = cell.output_states()
        self.out_projections = nn.ModuleDict()
        for index in self.output_states:
            needs_reduce = reduction and index < NUM_CELL_INPUTS
            if needs_reduce or (index == 1 and c_h1 != channels):
                self.out_projections[str(index)] = FactorizedReduction(
                    state_channels[index], channels, bn, stride=2 if needs_reduce else 1
                )
                state_channels[index] = channels
        self.out_channels = sum(state_channels[i] for i in self.output_states)
        read = {i for block in cell.blocks for i in (block.input_1, block.input_2)}
        self._summed_into_output = [
            block.combine == "add" and NUM_CELL_INPUTS + k not in read
            for k, block in enumerate(cell.blocks)
        ]
        self._pre_i_relu = starts_with_relu(self.pre_i)
        self._relu_first = [starts_with_relu(op) for op in self.ops]
        # For each pool the cell also applies (same kind, size and stride) to the same state
        # elsewhere, the first such op, whose pooled map it reuses; None for other ops.
        first = {key: pools.index(key) for key in pools if key is not None}
        self._pool_source = [
            first[key] if key is not None and pools.count(key) > 1 else None for key in pools
        ]

    @staticmethod
    def _prev_adjustment(c_in: int, channels: int, larger: bool, bn: BNConfig):
        if larger:
            return nn.Sequential(nn.ReLU(), FactorizedReduction(c_in, channels, bn)), channels
        if c_in != channels:
            return ReLUConvBN(c_in, channels, 1, 1, bn), channels
        return nn.Identity(), c_in

    def forward(
        self,
        h_i: torch.Tensor,
        h_prev: torch.Tensor | None,
        relu_i: LazyReLU | None = None,
        relu_prev: LazyReLU | None = None,
    ) -> torch.Tensor:
        """The cell's output from h_i and h_{i-1} (``relu_i`` / ``relu_prev``: their ReLUs,
        computed at most once and shared with other cells reading the same tensors)."""
        if not self.has_prev_prev:
            h_prev, relu_prev = h_i, relu_i
        if not fast("shared_relu"):
            states = self._inputs_plain(h_i, h_prev)
            relus = None
        else:
            states, relus = self._inputs_shared(h_i, h_prev, relu_i, relu_prev)
        addends: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # summed into the output
        pooled: dict[int, torch.Tensor] | None = {} if fast("shared_pools") else None
        for k, block in enumerate(self.cell.blocks):
            pair = []
            for j, index in ((2 * k, block.input_1), (2 * k + 1, block.input_2)):
                op = self.ops[j]
                if relus is not None and self._relu_first[j]:
                    out = after_relu(op, relus[index]())  # one ReLU per state
                elif pooled is not None and self._pool_source[j] is not None:
                    out = self._shared_pool(op, j, states[index], pooled)
                else:
                    out = op(states[index])
                pair.append(self.drop_paths[j](out))
            a, b = pair
            if self._summed_into_output[k] and fast("sums_into_output"):
                addends[len(states)] = (a, b)
                states.append(None)  # read by nothing but the output
                if relus is not None:
                    relus.append(None)
                continue
            states.append(a + b if block.combine == "add" else torch.cat([a, b], dim=1))
            if relus is not None:
                relus.append(LazyReLU(states[-1]))
        return self._output(states, addends)

    def _shared_pool(
        self, op: Pool, j: int, state: torch.Tensor, pooled: dict[int, torch.Tensor]
    ) -> torch.Tensor:
        """``op(state)`` for a repeated pool: the pooled map is computed by its first use and
        reused by the others (the same tensor; autograd sums their gradients before one pool
        backward), then each applies its own projection, if any."""
        source = self._pool_source[j]
        if source not in pooled:
            pooled[source] = op[0](state)
        return after_first_layer(op, pooled[source])

    def _output(
        self, states: list, addends: dict[int, tuple[torch.Tensor, torch.Tensor]]
    ) -> torch.Tensor:
        """The unused states (projected where needed) concatenated; a block in ``addends`` is
        summed straight into its slice of the output."""
        outputs: list[tuple[torch.Tensor, ...]] = []
        for index in self.output_states:
            if index in addends:
                outputs.append(addends[index])
                continue
            state = states[index]
            if str(index) in self.out_projections:
                state = self.out_projections[str(index)](state)
            outputs.append((state,))
        if not addends:
            return torch.cat([state for (state,) in outputs], dim=1)
        return concat_of_sums(outputs)

    def _inputs_plain(self, h_i: torch.Tensor, h_prev: torch.Tensor) -> list[torch.Tensor]:
        return [self.pre_i(h_i), self.pre_prev(h_prev)]

    def _inputs_shared(self, h_i, h_prev, relu_i, relu_prev):
        relu_i = relu_i if relu_i is not None else LazyReLU(h_i)
        relu_prev = relu_prev if relu_prev is not None else LazyReLU(h_prev)
        s0 = after_relu(self.pre_i, relu_i()) if self._pre_i_relu else self.pre_i(h_i)
        if isinstance(self.pre_prev, nn.Identity):  # state 1 is h_{i-1} itself
            return [s0, h_prev], [LazyReLU(s0), relu_prev]
        if starts_with_relu(self.pre_prev):
            s1 = after_relu(self.pre_prev, relu_prev())
        else:
            s1 = self.pre_prev(h_prev)
        return [s0, s1], [LazyReLU(s0), LazyReLU(s1)]

    def set_drop_path_keep(self, keep_prob: float) -> None:
        for module in self.drop_paths:
            if isinstance(module, DropPath):
                module.keep_prob = keep_prob


class AuxHead(nn.Module):
    """The auxiliary classifier: ReLU, 5x5/3 avg pool (VALID), 1x1 conv 128, BN, ReLU,
    conv to 768, BN, ReLU, FC.

    The second convolution's kernel covers the whole remaining map, so its size depends on the
    input size; for maps under 5 pixels the pool shrinks to the map size.
    """

    def __init__(self, c_in: int, spatial: int, num_classes: int, bn: BNConfig):
        super().__init__()
        kernel = min(5, spatial)
        remaining = (spatial - kernel) // 3 + 1
        self.spatial = spatial
        self.features = nn.Sequential(
            nn.ReLU(),
            nn.AvgPool2d(kernel, 3),
            Pointwise(c_in, 128),
            bn.make(128),
            nn.ReLU(),
            WholeMapConv(128, 768, remaining),
            bn.make(768),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.classifier(self.features(x))

    def forward_after_relu(self, x_relu: torch.Tensor) -> torch.Tensor:
        """``forward(x)`` given ``relu(x)`` (the head's first layer is that ReLU)."""
        self._check(x_relu)
        return self.classifier(after_relu(self.features, x_relu))

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.spatial or x.shape[-2] != self.spatial:
            raise ValueError(
                f"aux head was built for {self.spatial}x{self.spatial} maps, got "
                f"{tuple(x.shape[-2:])}; build the network with the image_size you train at"
            )


@dataclass(frozen=True)
class NetworkConfig:
    """Everything :func:`build_network` needs besides the genotype (saved with runs)."""

    stem: str = "cifar"
    cells: int = 6
    filters: int = 32
    num_classes: int = 10
    in_chans: int = 3
    image_size: int = 32
    stem_multiplier: float = 3.0
    num_reductions: int = 2
    skip_reduction_layer_input: bool = False
    auxiliary: bool = False
    drop_path_keep_prob: float = 1.0
    dropout: float = 0.0
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    #: "tf": pools never count padded cells (TensorFlow, Cadene's port); "timm": strided
    #: average pools count zero padding, as timm's port does.
    pool_padding: str = "tf"

    def to_dict(self) -> dict:
        return asdict(self)


class NASNet(nn.Module):
    """A NASNet network: stem, stacked cells, head (and an optional auxiliary head).

    ``forward`` returns logits. In training mode with ``auxiliary=True``,
    :meth:`forward_with_aux` also returns the auxiliary logits.
    """

    def __init__(self, genotype: Genotype, config: NetworkConfig):
        super().__init__()
        validate_genotype(genotype)
        _check_config(config)
        self.genotype, self.config = genotype, config
        self.num_classes = config.num_classes
        bn = BNConfig(config.bn_eps, config.bn_momentum)
        self._drop_path_progress = 0.0
        self.cells = nn.ModuleList()
        self.cell_names: list[str] = []  # TF-slim's scope names, in forward order
        self._cell_inputs: list[tuple[int, int]] = []  # indices into the outputs list
        self.feature_info: list[dict] = []
        self._feature_outputs: list[int] = []
        self.aux_head: AuxHead | None = None
        self._aux_after: int | None = None
        self._build(genotype, config, bn)
        self.num_features = self.cells[-1].out_channels
        self.head_drop = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(self.num_features, config.num_classes)
        self._init_weights()
        self.set_pool_padding(config.pool_padding)

    # -- construction -------------------------------------------------------------------------

    def _build(self, genotype: Genotype, cfg: NetworkConfig, bn: BNConfig) -> None:
        # Each entry of `outs` describes a tensor of the forward's outputs list:
        # (channels, stride relative to the input image). Index 0 stands for "None".
        if cfg.stem == "cifar":
            c_stem = int(cfg.filters * cfg.stem_multiplier)
            self.stem = nn.Sequential(
                nn.Conv2d(cfg.in_chans, c_stem, 3, 1, 1, bias=False), bn.make(c_stem)
            )
            outs: list[tuple[int, int] | None] = [None, (c_stem, 1)]
            self._stem_feature = None
        else:
            c_stem = int(32 * cfg.stem_multiplier)
            self.stem = nn.Sequential(
                nn.Conv2d(cfg.in_chans, c_stem, 3, 2, 0, bias=False), bn.make(c_stem)
            )
            outs = [None, (c_stem, 2)]
            self._add_feature(1, c_stem, 2, "stem")
            for k, scale in enumerate((0.25, 0.5)):
                self.cell_names.append(f"cell_stem_{k}")
                self._add_cell(genotype.reduction, outs, int(cfg.filters * scale), True, bn)
                if k == 0:
                    self._add_feature(len(outs) - 1, outs[-1][0], outs[-1][1], "cells.0")
        n = cfg.cells
        reduction_at = {n * (i + 1) for i in range(cfg.num_reductions)}
        scaling = 1.0
        for normal_index in range(n * (cfg.num_reductions + 1)):
            prev_index = None
            if normal_index in reduction_at:
                self._add_feature(len(outs) - 1, *outs[-1], f"cells.{len(self.cells) - 1}")
                scaling *= 2
                if cfg.skip_reduction_layer_input:
                    prev_index = len(outs) - 2  # the reduction cell's own h_{i-1}
                self.cell_names.append(f"reduction_cell_{sorted(reduction_at).index(normal_index)}")
                self._add_cell(genotype.reduction, outs, int(cfg.filters * scaling), True, bn)
            self.cell_names.append(f"cell_{normal_index}")
            self._add_cell(genotype.normal, outs, int(cfg.filters * scaling), False, bn, prev_index)
            if cfg.auxiliary and normal_index == max(reduction_at) - 1:
                self._aux_after = len(self.cells) - 1
                channels, stride = outs[-1]
                self.aux_head = AuxHead(channels, _spatial_size(cfg, stride), cfg.num_classes, bn)
        self._add_feature(len(outs) - 1, *outs[-1], f"cells.{len(self.cells) - 1}")
        self.total_cells = len(self.cells)

    def _add_cell(
        self,
        cell: Cell,
        outs: list,
        channels: int,
        reduction: bool,
        bn: BNConfig,
        prev_index: int | None = None,
    ) -> None:
        i_index = len(outs) - 1
        if prev_index is None:
            prev_index = len(outs) - 2
        c_prev, stride = outs[i_index]
        prev = outs[prev_index]
        larger = prev is not None and prev[1] < stride
        module = CellModule(
            cell, c_prev, None if prev is None else prev[0], channels, reduction, larger, bn
        )
        self.cells.append(module)
        self._cell_inputs.append((i_index, prev_index))
        outs.append((module.out_channels, stride * (2 if reduction else 1)))

    def _add_feature(self, out_index: int, channels: int, stride: int, module: str) -> None:
        if self._feature_outputs and self._feature_outputs[-1] == out_index:
            return
        self._feature_outputs.append(out_index)
        self.feature_info.append({"num_chs": channels, "reduction": stride, "module": module})

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    # -- forward ------------------------------------------------------------------------------

    def _run_cells(self, x: torch.Tensor, last_output: int | None = None):
        """Run the stem and cells; ``outputs[1]`` is the stem, ``outputs[2 + k]`` cell ``k``.

        Also returns each output's :class:`LazyReLU` (shared by the cells that read it, the
        aux head and the final ReLU) and the index of the aux head's input (or ``None``)."""
        outputs: list[torch.Tensor | None] = [None, self.stem(x)]
        relus: list[LazyReLU | None] = [None, LazyReLU(outputs[1])]
        aux_index = None
        for k, (cell, (i, p)) in enumerate(zip(self.cells, self._cell_inputs, strict=True)):
            if last_output is not None and len(outputs) > last_output:
                break
            outputs.append(cell(outputs[i], outputs[p], relus[i], relus[p]))
            relus.append(LazyReLU(outputs[-1]))
            if k == self._aux_after:
                aux_index = len(outputs) - 1
        return outputs, relus, aux_index

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch -> the last cell's output after ReLU (N, num_features, H/s, W/s)."""
        _, relus, _ = self._run_cells(x)
        return relus[-1]()

    def forward_intermediates(
        self, x: torch.Tensor, indices: tuple[int, ...] | None = None
    ) -> list[torch.Tensor]:
        """Stage outputs listed in :attr:`feature_info` (all, or those at ``indices``),
        shallowest first; cells past the deepest one asked for are not run."""
        indices = tuple(range(len(self.feature_info))) if indices is None else tuple(indices)
        wanted = [self._feature_outputs[i] for i in indices]
        outputs, relus, _ = self._run_cells(x, last_output=max(wanted))
        last = len(self._feature_outputs) - 1
        return [
            relus[o]() if i == last else outputs[o] for i, o in zip(indices, wanted, strict=True)
        ]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(spatial_mean(x))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and, in training mode with an aux head, the auxiliary logits."""
        outputs, relus, aux_index = self._run_cells(x)
        logits = self.forward_head(relus[-1]())
        if self.training and self.aux_head is not None and aux_index is not None:
            if fast("shared_relu"):  # the aux head's ReLU is the next cells' one
                return logits, self.aux_head.forward_after_relu(relus[aux_index]())
            return logits, self.aux_head(outputs[aux_index])
        return logits, None

    # -- API ----------------------------------------------------------------------------------

    def set_drop_path_progress(self, progress: float) -> None:
        """Set the fraction of training done (0..1) for ScheduledDropPath.

        Cell ``c`` of ``T`` keeps each path with probability
        ``1 - (c + 1) / T * min(1, progress) * (1 - drop_path_keep_prob)``.
        """
        self._drop_path_progress = progress
        drop = 1.0 - self.config.drop_path_keep_prob
        for c, cell in enumerate(self.cells):
            keep = 1.0 - (c + 1) / self.total_cells * min(1.0, max(0.0, progress)) * drop
            cell.set_drop_path_keep(keep)

    def set_pool_padding(self, mode: str) -> None:
        """Switch average pools between TF semantics ("tf") and timm's port ("timm")."""
        if mode not in POOL_PADDINGS:
            raise ValueError(f"pool_padding: unknown {mode!r}; choose 'tf' or 'timm'")
        self.config = replace(self.config, pool_padding=mode)
        for m in self.modules():
            if isinstance(m, AvgPool2dSame):
                m.count_pad_strided = mode == "timm"

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier (and the aux classifier) for ``num_classes`` outputs; 0
        leaves the pooled features (and removes the aux head, which has nothing to predict).
        ``global_pool`` is timm's argument: only ``"avg"`` (the pooling these networks use)
        or None / ``""`` (unchanged) are accepted."""
        if global_pool not in (None, "", "avg"):
            raise ValueError(f"global_pool: {global_pool!r}; NASNet pools by average ('avg')")
        self.num_classes = num_classes
        self.classifier = (
            nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        )
        if self.aux_head is not None and num_classes > 0:
            self.aux_head.classifier = nn.Linear(768, num_classes)
        elif self.aux_head is not None:
            self.aux_head = None


def _spatial_size(cfg: NetworkConfig, stride: int) -> int:
    """Spatial size of a map at ``stride`` for the configured input (SAME padding rounds up)."""
    size = cfg.image_size
    if cfg.stem == "imagenet":
        size = (size - 3) // 2 + 1  # conv0: 3x3, stride 2, VALID
        stride //= 2
    return math.ceil(size / stride)


def _check_config(cfg: NetworkConfig) -> None:
    if cfg.stem not in STEMS:
        raise ValueError(f"stem: unknown stem {cfg.stem!r}; choose 'cifar' or 'imagenet'")
    if cfg.cells < 1:
        raise ValueError(f"cells: N must be at least 1, got {cfg.cells}")
    minimum = 4 if cfg.stem == "imagenet" else 1  # ImageNet stem cells use F/4 filters
    if cfg.filters < minimum:
        raise ValueError(f"filters: F={cfg.filters} is too small for the {cfg.stem} stem")
    if not 0.0 < cfg.drop_path_keep_prob <= 1.0:
        raise ValueError("drop_path_keep_prob: must be in (0, 1]")
    if cfg.pool_padding not in POOL_PADDINGS:
        raise ValueError(f"pool_padding: unknown {cfg.pool_padding!r}; choose 'tf' or 'timm'")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError("dropout: must be in [0, 1)")


def penultimate_filters(genotype: Genotype, filters: int, num_reductions: int = 2) -> int:
    """The paper's P of "N @ P" for ``filters``: channels of the last normal cell."""
    return filters * 2**num_reductions * _normal_width(genotype)


def filters_for_penultimate(genotype: Genotype, penultimate: int, num_reductions: int = 2) -> int:
    """Invert "N @ P": the F whose last normal cell has ``penultimate`` channels."""
    per_filter = 2**num_reductions * _normal_width(genotype)
    if penultimate % per_filter:
        raise ValueError(
            f"penultimate: {penultimate} is not a multiple of {per_filter} "
            f"(= 2^{num_reductions} x the normal cell's output width); pass filters= instead"
        )
    return penultimate // per_filter


def _normal_width(genotype: Genotype) -> int:
    """Output channels of the normal cell per filter (every concatenated state counted)."""
    width = [1, 1]
    for block in genotype.normal.blocks:
        width.append(2 if block.combine == "concat" else 1)
    return sum(width[i] for i in genotype.normal.output_states())


def build_network(
    genotype: Genotype | str | dict,
    stem: str = "cifar",
    cells: int = 6,
    filters: int | None = None,
    penultimate: int | None = None,
    num_classes: int = 10,
    in_chans: int = 3,
    **options,
) -> NASNet:
    """Build a NASNet network from any genotype (a :class:`Genotype`, its dict, a known name
    or a JSON file): ``cells`` normal cells per stage, sized by ``filters`` (F) or by the
    paper's penultimate width ``penultimate`` (P of "N @ P").

    Other options are the fields of :class:`NetworkConfig` (``image_size``, ``auxiliary``,
    ``drop_path_keep_prob``, ``dropout``, ``stem_multiplier``, ``skip_reduction_layer_input``,
    ``bn_eps``, ``bn_momentum``, ``num_reductions``).
    """
    from nasnet.genotypes import resolve_genotype

    genotype = validate_genotype(resolve_genotype(genotype))
    if (filters is None) == (penultimate is None):
        raise ValueError("give exactly one of filters= (F) or penultimate= (P of 'N @ P')")
    sizes = {"cells": (cells, 1), "filters": (filters, 1), "penultimate": (penultimate, 1),
             "num_classes": (num_classes, 0), "in_chans": (in_chans, 1)}  # fmt: skip
    for name, (value, low) in sizes.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < low):  # fmt: skip
            raise ValueError(f"{name}: must be an integer of at least {low}, got {value!r}")
    if filters is None:
        filters = filters_for_penultimate(genotype, penultimate, options.get("num_reductions", 2))
    unknown = set(options) - set(NetworkConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"build_network: unknown option(s) {', '.join(sorted(unknown))}")
    if stem == "imagenet":
        options.setdefault("image_size", 224)
        options.setdefault("stem_multiplier", 3.0)
    config = NetworkConfig(
        stem=stem,
        cells=cells,
        filters=filters,
        num_classes=num_classes,
        in_chans=in_chans,
        **options,
    )
    return NASNet(genotype, config)


def cell_output_shapes(model: NASNet, image_size: int | None = None) -> list[tuple[str, tuple]]:
    """``(name, (C, H, W))`` of the stem and of every cell's output, in forward order.

    Runs on the meta device when the model lives there, so large models cost nothing.
    """
    size = image_size or model.config.image_size
    shapes: list[tuple[str, tuple]] = []
    hooks = [model.stem.register_forward_hook(lambda m, i, o: shapes.append(("stem", o.shape[1:])))]
    for name, cell in zip(model.cell_names, model.cells, strict=True):
        hooks.append(
            cell.register_forward_hook(lambda m, i, o, n=name: shapes.append((n, o.shape[1:])))
        )
    param = next(model.parameters())
    try:
        with module_mode(model, False), torch.no_grad():
            model(torch.zeros(1, model.config.in_chans, size, size, device=param.device))
    finally:
        for h in hooks:
            h.remove()
    return [(name, tuple(shape)) for name, shape in shapes]


class FeatureInfo(list):
    """The stages a backbone returns: a list of their ``feature_info`` dicts (``num_chs``,
    ``reduction``, ``module``), with timm's ``FeatureInfo`` accessors, which detection
    libraries' timm wrappers call: ``channels()``, ``reduction()``, ``module_name()``,
    ``get(key)`` and ``get_dicts(keys)``.

    As in timm, ``idx`` given to an accessor numbers the full model's stages (the numbers
    ``out_indices`` uses), and ``idx=None`` means the returned stages. Indexing and iterating
    the list give the returned stages."""

    def __init__(self, stages: list[dict], out_indices: tuple[int, ...]):
        self.stages = [dict(stage) for stage in stages]
        self.out_indices = tuple(out_indices)
        super().__init__(self.stages[i] for i in self.out_indices)

    def get(self, key: str, idx: int | list[int] | tuple[int, ...] | None = None):
        """``key`` of the returned stages, of stage ``idx``, or of each stage in ``idx``."""
        if idx is None:
            return [stage[key] for stage in self]
        if isinstance(idx, (list, tuple)):
            return [self.stages[i][key] for i in idx]
        return self.stages[idx][key]

    def get_dicts(self, keys: list[str] | None = None, idx=None):
        """The stage dicts (only ``keys`` of them if given), chosen as by :meth:`get`."""
        if idx is None:
            chosen = list(self)
        elif isinstance(idx, (list, tuple)):
            chosen = [self.stages[i] for i in idx]
        else:
            chosen = self.stages[idx]
        pick = (lambda d: dict(d)) if keys is None else (lambda d: {k: d[k] for k in keys})
        return pick(chosen) if isinstance(chosen, dict) else [pick(d) for d in chosen]

    def channels(self, idx=None):
        """Channels of the stages (``num_chs``)."""
        return self.get("num_chs", idx)

    def reduction(self, idx=None):
        """Output strides of the stages (``reduction``)."""
        return self.get("reduction", idx)

    def module_name(self, idx=None):
        """Module names of the stages (``module``)."""
        return self.get("module", idx)


class NASNetFeatures(nn.Module):
    """A NASNet as a multi-scale backbone: ``forward`` returns the feature maps at
    ``out_indices`` of the full model's ``feature_info`` (strides 4, 8, 16, 32 for ImageNet
    stems by default; 1, 2, 4 for CIFAR ones). The classifier, aux head and unused cells
    are dropped."""

    def __init__(self, model: NASNet, out_indices: tuple[int, ...] | None = None):
        super().__init__()
        if out_indices is None:
            out_indices = tuple(
                i for i, f in enumerate(model.feature_info) if f["module"] != "stem"
            )
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(not 0 <= i < len(model.feature_info) for i in out_indices):
            raise ValueError(
                f"out_indices: {out_indices} outside 0..{len(model.feature_info) - 1} "
                f"(the model's feature_info has {len(model.feature_info)} stages)"
            )
        last_cell = max(model._feature_outputs[i] for i in out_indices) - 2
        model.cells = nn.ModuleList(list(model.cells)[: last_cell + 1])
        model._cell_inputs = model._cell_inputs[: last_cell + 1]
        model.classifier = nn.Identity()
        model.aux_head = None
        self.body = model
        self.out_indices = out_indices
        self.feature_info = FeatureInfo(model.feature_info, out_indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body.forward_intermediates(x, self.out_indices)
