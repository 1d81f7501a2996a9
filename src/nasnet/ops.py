"""The operation table and the layers NASNet cells are made of.

``OP_FACTORIES[name](c_in, c_out, stride, bn)`` builds the module for one op of a block.
Every op maps ``c_in`` channels to ``c_out`` and follows TF-slim's conventions: ReLU -> conv ->
BN ordering, no bias in convolutions, TensorFlow "SAME" padding (asymmetric at stride 2 on even
sizes, so published weights fit), average pooling that ignores padded cells, separable
convolutions applied twice.

The plain formulation of each layer is kept; where a cheaper computation gives the same
function (padding folded into the pool's own arguments, tiny depthwise maps as a dense
per-channel product, the factorized reduction's shift as a strided view instead of a padded
copy, one ReLU per tensor however many ops read it), it runs instead, switched by :data:`FAST_PATHS`
(never while tracing for export). ``tests/test_speed_equivalence.py`` checks outputs and
gradients of both against each other.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, reduce

import torch
import torch.nn.functional as F
from torch import nn

from nasnet import native

#: Exact fast paths (same outputs and gradients up to float rounding), on by default:
#: ``pool_ceil_mode``: asymmetric "SAME" pools use the pool's own padding + ``ceil_mode`` instead
#: of ``F.pad`` (no padded copy); ``small_depthwise``: depthwise convolutions on maps of at most
#: a few pixels run as a dense per-channel product where ``native_depthwise`` does not run
#: (oneDNN's depthwise weight gradient is slow there); ``strided_factorized``: the factorized
#: reduction's shifted path convolves the strided view ``x[:, :, 1::2, 1::2]``, padded with
#: the zero row/column of odd sizes, instead of padding, shifting and subsampling a copy of
#: ``x``; ``shared_relu``: a cell computes ReLU of each tensor once however many ops read it
#: (see ``nasnet.network``);
#: ``fused_drop_path``: DropPath scales its (N, 1, 1, 1) mask by ``1 / keep`` and multiplies once
#: (rounding differs in the last bit from multiplying, then dividing); ``pointwise_matmul``: 1x1
#: convolutions of small channels_last maps run as a matrix product of the (pixels, channels)
#: view, which has less fixed cost per call than oneDNN's convolution; ``native_padding``:
#: strided "SAME" convolutions whose padding happens to be symmetric (odd sizes) pass it to the
#: convolution instead of padding a copy; ``layout_preserving_subsample``: the gradient of a
#: strided view keeps the input's memory layout (see :func:`subsample`);
#: ``few_channel_batch_norm``: training-mode BatchNorm of channels_last maps with few channels
#: reduces and scales a wide (pixels / r, r x channels) view (see :class:`BatchNorm2d`);
#: ``depthwise_column_grad``: the weight gradient of a depthwise convolution wider than 3 columns
#: (stride 1, or stride 2 on a padded copy) is computed three columns at a time (see
#: :class:`_DepthwiseColumnGrad`);
#: ``avg_pool_as_conv``: stride-1 average pools of wide maps with few channels run as a
#: depthwise convolution with a constant all-ones kernel, scaled by 1 / (cells in the window);
#: ``paired_subsample``: the factorized reduction takes its even and odd pixels through one
#: function whose gradient fills the input's shape once (not two zero tensors, then a sum);
#: ``sums_into_output``: a cell adds the two halves of each block that only its output reads
#: straight into the output tensor (no block sum to copy into a concatenation);
#: ``whole_map_linear``: a convolution whose kernel covers the whole map (the aux head's) runs
#: as a linear layer (see :class:`WholeMapConv`); ``channels_last_mean``: the global average
#: pool of channels_last maps reduces the (N, H x W, C) view (see :func:`spatial_mean`);
#: ``pointwise_matmul_grad``: 1x1 convolutions of larger channels_last maps to few output
#: channels keep oneDNN's forward but take their gradients as two matrix products (see
#: :class:`_PointwiseMatmulGrad`); ``shared_pools``: a pool that a cell applies twice to the
#: same state (NASNet-A's normal cell averages h_{i-1} twice, its reduction cell max-pools h_i
#: twice) is computed once, each use keeping its own projection and DropPath (see
#: ``nasnet.network.CellModule``); ``native_depthwise``: depthwise convolutions (float32,
#: channels_last, in training) run through the kernels of :mod:`nasnet.native`, compiled for
#: this machine on first use (where they cannot be, the paths above run; see
#: :class:`_NativeDepthwise`); ``native_batch_norm``: training-mode BatchNorm of float32
#: channels_last maps runs through the kernels of :mod:`nasnet.native` (see
#: :class:`_NativeBatchNorm`); ``native_pointwise``: so do 1x1 convolutions of at most 128 input
#: and output channels (see :class:`_NativePointwise`); ``fused_separable``: in training, each
#: stride-1 half of a separable op (ReLU, depthwise, 1x1, BatchNorm) runs as one autograd node
#: through those kernels (see :class:`_SeparableHalf`).
#:
#: The paths of :data:`CPU_FAST_PATHS` work around the costs of oneDNN's CPU kernels.
FAST_PATHS: dict[str, bool] = {
    "pool_ceil_mode": True,
    "small_depthwise": True,
    "strided_factorized": True,
    "shared_relu": True,
    "fused_drop_path": True,
    "pointwise_matmul": True,
    "native_padding": True,
    "layout_preserving_subsample": True,
    "few_channel_batch_norm": True,
    "depthwise_column_grad": True,
    "avg_pool_as_conv": True,
    "paired_subsample": True,
    "sums_into_output": True,
    "whole_map_linear": True,
    "channels_last_mean": True,
    "pointwise_matmul_grad": True,
    "shared_pools": True,
    "native_depthwise": True,
    "native_batch_norm": True,
    "native_pointwise": True,
    "fused_separable": True,
}


def subsample(x: torch.Tensor, stride: tuple[int, int], offset: int = 0) -> torch.Tensor:
    """The pixels a strided 1x1 convolution reads: ``x[:, :, offset::sh, offset::sw]``.

    Every strided 1x1 convolution runs as this view followed by a stride-1 convolution (the
    same function). oneDNN's strided 1x1 weight gradient writes past its workspace for
    channels_last inputs with fewer input channels than its channel block (8 with AVX2, 16
    with AVX-512; oneDNN issue 6035, torch 2.13 CPU): heap corruption for small children.

    Its gradient keeps the input's memory layout: autograd's own slice backward allocates an
    NCHW-contiguous zero tensor, and adding that to the channels_last gradients of the
    tensor's other readers sends every later elementwise backward (ReLU, sums) and 1x1
    weight gradient down a slow mixed-layout path (2x slower for the shared ReLU).
    """
    if fast("layout_preserving_subsample") and x.requires_grad:
        return _Subsample.apply(x, stride[0], stride[1], offset)
    return x[:, :, offset :: stride[0], offset :: stride[1]]


class _Subsample(torch.autograd.Function):
    """``x[:, :, offset::sh, offset::sw]`` whose gradient has the strides of ``x``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sh: int, sw: int, offset: int) -> torch.Tensor:
        ctx.geometry = (x.shape, _layout(x), sh, sw, offset)
        return x[:, :, offset::sh, offset::sw]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        shape, layout, sh, sw, offset = ctx.geometry
        grad_x = torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=layout)
        grad_x.zero_()
        grad_x[:, :, offset::sh, offset::sw] = grad
        return grad_x, None, None, None


#: Fast paths for CPU tensors only: on a GPU each would turn one cuDNN call into several kernel
#: launches (they double the ops of a ``nasnet_a_large`` training step), so the plain op runs.
CPU_FAST_PATHS = frozenset(
    {
        "small_depthwise",
        "pointwise_matmul",
        "few_channel_batch_norm",
        "depthwise_column_grad",
        "avg_pool_as_conv",
        "pointwise_matmul_grad",
        "native_depthwise",
        "native_batch_norm",
        "native_pointwise",
        "fused_separable",
    }
)


def _layout(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast runs convolutions and matrix products in on ``device_type``, or
    ``None`` where autocast is off there."""
    try:
        on = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        on = (
            torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
        )
    if not on:
        return None
    try:
        return torch.get_autocast_dtype(device_type)
    except AttributeError:  # torch < 2.4
        cpu = device_type == "cpu"
        return torch.get_autocast_cpu_dtype() if cpu else torch.get_autocast_gpu_dtype()


def autocast_operands(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tensors`` cast to autocast's dtype where autocast is on for their device, as it would
    cast a convolution's operands; unchanged otherwise. A custom autograd Function given these
    saves, and differentiates against, tensors of one dtype (its backward runs without
    autocast); the casts' own gradients bring each gradient back to its tensor's dtype.
    float64 tensors stay float64, as under autocast."""
    dtype = _autocast_dtype(tensors[0].device.type)
    if dtype is None:
        return tensors
    return tuple(t if t.dtype == torch.float64 else t.to(dtype) for t in tensors)


def _dynamo_compiling() -> bool:
    import torch._dynamo  # torch < 2.3: ``torch.compiler`` has no such test

    return torch._dynamo.is_compiling()


#: Whether ``torch.compile`` is tracing.
_compiling = getattr(torch.compiler, "is_compiling", _dynamo_compiling)
#: Whether ``torch.export`` is tracing (its non-strict mode, the default since torch 2.9, runs
#: without dynamo, so ``_compiling`` is false there); torch < 2.6 has no such test.
_exporting = getattr(torch.compiler, "is_exporting", lambda: False)


def fast(name: str, x: torch.Tensor | None = None) -> bool:
    """Whether the fast path ``name`` is on for the input ``x`` (needed for the paths of
    :data:`CPU_FAST_PATHS`, which are off for tensors on other devices). Fast paths are off
    while tracing for export and while ``torch.compile`` traces: its compiler fuses the plain
    path itself, and some fast paths (``out=`` views, custom Functions) break its graph."""
    if not FAST_PATHS[name] or torch.jit.is_tracing() or _compiling() or _exporting():
        return False
    return name not in CPU_FAST_PATHS or x.device.type == "cpu"


@dataclass(frozen=True)
class BNConfig:
    """BatchNorm settings shared by every layer of a network."""

    eps: float = 1e-5
    momentum: float = 0.1

    def make(self, channels: int) -> nn.BatchNorm2d:
        return BatchNorm2d(channels, eps=self.eps, momentum=self.momentum)


#: Training-mode BatchNorm of channels_last maps with fewer channels than this runs as
#: :class:`_FewChannelBatchNorm`: ATen's channels_last kernel (torch 2.13, AVX2) is 2-3x slower
#: per element below 16 channels than at 16 or more, where it beats the wide view.
FEW_CHANNELS = 16
#: ... if the map has at least this many elements: below, the wide view's extra calls cost more
#: than they save (0.3x-0.7x at 4-16 channels and 2^11-2^15 elements; 1.1x-3x from 2^16).
FEW_CHANNEL_MIN_ELEMENTS = 1 << 16


@lru_cache(maxsize=1)
def _float_vector_width() -> int:
    """float32 lanes of the CPU's widest vector unit that ATen uses."""
    return 16 if "AVX512" in torch.backends.cpu.get_cpu_capability() else 8


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` - the same parameters, buffers and function - whose training step on
    channels_last float32 maps runs through :mod:`nasnet.native`'s kernels (fast path
    ``native_batch_norm``, see :class:`_NativeBatchNorm`), or, where they are unavailable,
    with fewer than :data:`FEW_CHANNELS` channels, as reductions and one multiply-add over a
    wide view of the pixels (fast path ``few_channel_batch_norm``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._training_step(x) and _native_batch_norm_applies(x, self):
            self.num_batches_tracked.add_(1)
            running = (self.running_mean, self.running_var, self._momentum_now())
            return _NativeBatchNorm.apply(x, self.weight, self.bias, self.eps, *running)
        rows = self._wide_rows(x)
        if rows is None:
            return super().forward(x)
        y, mean, var = _FewChannelBatchNorm.apply(x, self.weight, self.bias, self.eps, rows)
        self._track(mean, var, x.numel() // x.shape[1])
        return y

    def _training_step(self, x: torch.Tensor) -> bool:
        """Whether this call normalises by the batch and updates the running statistics, on
        a 4-D map with at least two values per channel (else nn.BatchNorm2d's own errors)."""
        return (
            self.training
            and self.track_running_stats
            and self.affine
            and x.dim() == 4
            and x.numel() >= 2 * max(x.shape[1], 1)
        )

    def _momentum_now(self) -> float:
        """How far this step moves the running statistics (after ``num_batches_tracked``
        counted it): ``momentum``, or a cumulative average where that is ``None``."""
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    def _track(self, mean: torch.Tensor, var: torch.Tensor, pixels: int) -> None:
        """The running statistics' update of nn.BatchNorm2d, from the batch's mean and biased
        variance over ``pixels`` values per channel."""
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            factor = self._momentum_now()
            self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
            self.running_var.mul_(1 - factor).add_(var * (pixels / (pixels - 1)), alpha=factor)

    def _wide_rows(self, x: torch.Tensor) -> int | None:
        """How many pixels the wide view puts in one row, or ``None`` for ATen's kernel."""
        if not (
            fast("few_channel_batch_norm", x)
            and self._training_step(x)
            and x.shape[1] < FEW_CHANNELS
            and x.shape[1] % _float_vector_width() != 0  # ATen fills whole vectors: as fast
            and x.numel() >= FEW_CHANNEL_MIN_ELEMENTS
            and x.dtype in (torch.float32, torch.float64)
            and x.is_contiguous(memory_format=torch.channels_last)
        ):
            return None
        pixels = x.numel() // x.shape[1]
        return next(r for r in (8, 4, 2, 1) if pixels % r == 0)


def _fold(sums: torch.Tensor, rows: int, channels: int) -> torch.Tensor:
    """Per-channel totals of a wide view's per-column sums."""
    return sums.view(rows, channels).sum(0) if rows > 1 else sums


#: BatchNorm of maps with fewer elements keeps ATen's kernel: on 2x2 and 4x4 maps (10^4-2 x
#: 10^4 elements) the native path's per-call costs (a custom Function, ctypes) outweigh its
#: faster passes (0.6x-1.0x forward + backward, hot caches); from 4 x 10^4 it is 1.5x-3.4x
#: (5-84 channels, 1 and 2 threads), and lowering this bound from 2^18 made large64 steps
#: 0.98x-1.06x (median 1.05x over five A/B runs). So does a channel count that fills whole
#: vectors, where ATen's kernel is as fast (96 channels at 31x31, batch 32: 0.9x-1.1x).
#: Inside a :class:`_SeparableHalf`, with no Function of its own, the native kernels take maps
#: of any size (forward + backward 1.2x-3.8x ATen's on 2x2-8x8 maps of 10-40 channels, batch
#: 32, 1 and 2 threads; large64's step 1.01x, within the noise of that run).
NATIVE_BATCH_NORM_MIN_ELEMENTS = 2**15


def _native_ready(x: torch.Tensor, *params: torch.Tensor) -> bool:
    """Whether the kernels of :mod:`nasnet.native` can take ``x`` and ``params``: float32
    without autocast, ``x`` channels_last, and the kernels compiled (on this first call)."""
    return (
        x.dtype == torch.float32
        and all(p.dtype == torch.float32 for p in params)
        and _autocast_dtype("cpu") is None
        and x.is_contiguous(memory_format=torch.channels_last)
        and native.library() is not None
    )


def _native_batch_norm_applies(x: torch.Tensor, bn: nn.BatchNorm2d) -> bool:
    return (
        _native_batch_norm_channels(x)
        and x.numel() >= NATIVE_BATCH_NORM_MIN_ELEMENTS
        and all(t.is_contiguous() for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var))
        and _native_ready(x, bn.weight, bn.running_mean)
    )


def _native_batch_norm_channels(x: torch.Tensor) -> bool:
    """Whether the fast path ``native_batch_norm`` is on and takes ``x``'s channel count."""
    return (
        fast("native_batch_norm", x)
        and x.shape[1] % _float_vector_width() != 0  # ATen fills whole vectors: as fast
    )


class _NativeBatchNorm(torch.autograd.Function):
    """Training-mode BatchNorm of a channels_last float32 ``x`` through
    :func:`nasnet.native.batch_norm_forward` and its backward: two passes over the map each
    way, every vector lane busy whatever the channel count.

    ATen's channels_last kernel (torch 2.13, AVX-512) runs at 5-7 GB/s on 12-48 channels,
    and :class:`_FewChannelBatchNorm` makes several passes; the sums here are shifted by the
    first pixel and kept in float64, as precise as ATen's two-pass variance. The running
    statistics move in the forward, as in ATen's kernel."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, running_mean, running_var, factor: float):
        y, mean, invstd = native.batch_norm_forward(
            x, weight, bias, eps, running_mean, running_var, factor
        )
        ctx.save_for_backward(x, weight, mean, invstd)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, mean, invstd = ctx.saved_tensors
        grad_x, grad_weight, grad_bias = native.batch_norm_backward(grad_y, x, weight, mean, invstd)
        return grad_x, grad_weight, grad_bias, None, None, None, None


class _FewChannelBatchNorm(torch.autograd.Function):
    """Training-mode BatchNorm of a channels_last ``x`` through its (pixels / r, r * C) view:
    rows of ``r`` pixels are wide enough to vectorise where C alone is not. Two-pass variance
    (mean, then the centred squares), as ATen; returns (y, batch mean, biased batch var)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, rows: int):
        n, c, height, width = x.shape
        pixels = n * height * width
        wide = x.permute(0, 2, 3, 1).reshape(-1, rows * c)
        mean = _fold(wide.sum(0), rows, c) / pixels
        centred = wide - mean.repeat(rows)
        var = _fold(centred.square().sum(0), rows, c) / pixels
        invstd = (var + eps).rsqrt()
        y = torch.empty_like(x, memory_format=torch.channels_last)  # not a view: ReLU(inplace)
        scale = (weight * invstd).repeat(rows)
        torch.addcmul(bias.repeat(rows), centred, scale, out=y.permute(0, 2, 3, 1).view_as(wide))
        ctx.save_for_backward(centred, weight, invstd)
        ctx.rows = rows
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        centred, weight, invstd = ctx.saved_tensors
        rows = ctx.rows
        n, c, height, width = grad_y.shape
        pixels = n * height * width
        grad_y = grad_y.contiguous(memory_format=torch.channels_last)
        wide = grad_y.permute(0, 2, 3, 1).reshape(-1, rows * c)
        sum_g = _fold(wide.sum(0), rows, c)
        dot = _fold((wide * centred).sum(0), rows, c)  # sum of grad * (x - mean)
        scale = weight * invstd
        k_centred = -scale * invstd * invstd * dot / pixels
        k_const = -scale * sum_g / pixels
        grad_x = torch.addcmul(k_const.repeat(rows), centred, k_centred.repeat(rows))
        grad_x.addcmul_(wide, scale.repeat(rows))
        grad_x = grad_x.view(n, height, width, c).permute(0, 3, 1, 2)
        return grad_x, dot * invstd, sum_g, None, None


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """The global average pool: (N, C, H, W) -> (N, C), ``x.mean((2, 3))``.

    For channels_last maps (fast path ``channels_last_mean``) it reduces the pixels of the
    (N, H x W, C) view, a vectorised sum of rows whose gradient comes back channels_last.
    ``x.mean((2, 3))`` reduces each channel's strided pixels and returns an NCHW gradient, which
    the ReLU before it then meets in a mixed-layout backward: 2.7x-5.5x slower forward and
    backward together (N = 64, 48-288 channels, 4x4 and 8x8 maps, torch 2.13 CPU)."""
    if _layout(x) is torch.channels_last and fast("channels_last_mean"):
        return x.permute(0, 2, 3, 1).flatten(1, 2).mean(1)
    return x.mean((2, 3))


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) along one axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def ceil_mode_padding(size: int, kernel: int, stride: int) -> int | None:
    """The pool padding ``p`` for which ``ceil_mode=True`` windows equal TF's "SAME" windows
    along one axis (same starts, the end clipped to the input), or ``None`` if there is none.

    TF pads ``(before, after)`` with ``after`` in ``{before, before + 1}``; PyTorch's pools
    pad ``before`` on both sides and, with ``ceil_mode``, add a last window that starts inside
    the input and is clipped at its end, which is where TF's extra ``after`` cell would be.
    """
    before, after = same_padding(size, kernel, stride)
    if after < before or before > kernel // 2:
        return None
    out = -(-(size + 2 * before - kernel) // stride) + 1  # PyTorch's pooling_output_shape
    if (out - 1) * stride >= size + before:
        out -= 1
    return before if out == math.ceil(size / stride) else None


def pad_same(x: torch.Tensor, kernel, stride, dilation=1, value: float = 0.0) -> torch.Tensor:
    """Pad ``x`` (N, C, H, W) so that a VALID op afterwards equals TF's SAME op."""
    (kh, kw), (sh, sw), (dh, dw) = _pair(kernel), _pair(stride), _pair(dilation)
    height, width = _spatial(x)
    top, bottom = same_padding(height, kh, sh, dh)
    left, right = same_padding(width, kw, sw, dw)
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


def _spatial(x: torch.Tensor) -> tuple[int, int]:
    """H and W as Python ints (exports fix the spatial size; only the batch stays dynamic)."""
    return int(x.shape[-2]), int(x.shape[-1])


def _is_static(kernel, stride, dilation) -> bool:
    """At stride 1 SAME padding is symmetric and does not depend on the input size."""
    return all(s == 1 for s in _pair(stride)) and all(
        ((k - 1) * d) % 2 == 0 for k, d in zip(_pair(kernel), _pair(dilation), strict=True)
    )


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding (static where possible), no bias."""

    def __init__(self, c_in, c_out, kernel, stride=1, dilation=1, groups=1, bias=False):
        self._static = _is_static(kernel, stride, dilation)
        padding = (
            tuple((k - 1) * d // 2 for k, d in zip(_pair(kernel), _pair(dilation), strict=True))
            if self._static
            else 0
        )
        super().__init__(c_in, c_out, kernel, stride, padding, dilation, groups, bias)
        self._depthwise = groups == c_in == c_out and not bias

        self._pointwise = self.kernel_size == (1, 1) and self._static and groups == 1
        self._strided_1x1 = self.kernel_size == (1, 1) and not self._static and groups == 1
        wide = self._depthwise and self.dilation == (1, 1) and self.kernel_size[1] > 3
        self._column_grad = wide and self._static
        self._strided_column_grad = wide and self.stride[1] == 2 and self.kernel_size[1] % 2 == 1
        self._native_grad = self._depthwise and self.dilation == (1, 1)

    def _unit_stride(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, 1, 0, 1, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._pointwise:
            return pointwise(x, self.weight, super().forward)
        if self._strided_1x1:  # SAME pads nothing here; see subsample() for why not stride 2
            return pointwise(subsample(x, self.stride), self.weight, self._unit_stride)
        native_grad = self._native_grad and _native_grad_applies(x, self.weight)
        if self._depthwise and not native_grad and fast("small_depthwise", x):
            height, width = _spatial(x)
            (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
            out_h, out_w = math.ceil(height / sh), math.ceil(width / sw)
            pairs = out_h * out_w * height * width
            if pairs <= DENSE_DEPTHWISE_PAIRS[0] or (
                pairs <= DENSE_DEPTHWISE_PAIRS[1] and min(kh, kw) > 3
            ):
                index = _depthwise_index(height, width, kh, kw, sh, sw, dh, dw)
                bmm = pairs > DENSE_DEPTHWISE_PAIRS[0]
                return _dense_depthwise(x, self.weight, index, out_h, out_w, bmm)
        if self._static:
            y = self._depthwise_grad(x, native_grad, self._column_grad, (1, 1), self.padding)
            if y is not None:
                return y
        else:
            if fast("native_padding"):
                padding = _symmetric_same(x, self.kernel_size, self.stride, self.dilation)
                if padding is not None:  # at stride 2 the weight gradient pads a copy itself
                    wide = self._strided_column_grad
                    y = self._depthwise_grad(x, native_grad, wide, self.stride, padding)
                    if y is not None:
                        return y
                    s, d, g = self.stride, self.dilation, self.groups
                    return F.conv2d(x, self.weight, self.bias, s, padding, d, g)
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)  # keeps the layout
            y = self._depthwise_grad(x, native_grad, self._strided_column_grad, self.stride, (0, 0))
            if y is not None:
                return y
        return super().forward(x)

    def _depthwise_grad(
        self, x, native_grad: bool, wide: bool, stride, padding
    ) -> torch.Tensor | None:
        """This depthwise convolution (``padding`` its own) through
        :class:`_NativeDepthwise` where ``native_grad`` (that fast path applies), else
        through :class:`_DepthwiseColumnGrad` where ``wide`` (its kernel qualifies), that
        fast path is on and the map is large enough to pay; ``None`` otherwise."""
        if native_grad:
            return _NativeDepthwise.apply(x, self.weight, stride, padding)
        if wide and fast("depthwise_column_grad", x) and _column_grad_pays(x):
            return _DepthwiseColumnGrad.apply(*autocast_operands(x, self.weight), stride, padding)
        return None


#: The column-wise depthwise weight gradient pays for its extra calls and shifted copies on
#: maps at least 8 wide with at least this many elements (measured at batch 32-64, 8-80
#: channels: 1.3x-1.8x there, 0.5x-0.9x on smaller maps).
COLUMN_GRAD_MIN_ELEMENTS = 2**17


def _column_grad_pays(x: torch.Tensor) -> bool:
    return x.shape[-1] >= 8 and x.numel() >= COLUMN_GRAD_MIN_ELEMENTS


def _native_grad_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        fast("native_depthwise", x)
        and weight.requires_grad
        and torch.is_grad_enabled()
        and _native_ready(x, weight)
    )


class _DepthwiseGradients(torch.autograd.Function):
    """A depthwise convolution (``x`` channels_last, ``padding`` its own) whose subclass
    names, in its forward, the functions ``(grad, x, weight, stride, padding) -> tensor``
    that give its input and weight gradients."""

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        input_grad, weight_grad = ctx.gradients
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = input_grad(grad, x, weight, ctx.stride, ctx.padding)
        if ctx.needs_input_grad[1]:
            grad_w = weight_grad(grad, x, weight, ctx.stride, ctx.padding)
        return grad_x, grad_w, None, None


class _NativeDepthwise(_DepthwiseGradients):
    """A depthwise convolution through the kernels of :mod:`nasnet.native`: its output, its
    input gradient at stride 1 (the convolution of the output gradient with the kernel
    rotated half a turn) and its weight gradient; oneDNN's input gradient at other strides.

    On NASNet children's maps (12-48 channels, 3x3-7x7 kernels, batch 32-64, cold caches)
    oneDNN (torch 2.13, AVX-512) runs these 1.5x-3x slower, the weight gradient of kernels
    wider than 3 columns 3x-6x (1.5x-3x even through :class:`_DepthwiseColumnGrad`): channel
    counts that are not a multiple of its 16-channel block, and per-call costs on small maps.
    Sums run in another order than oneDNN's: results agree to float32 rounding, and are the
    same from run to run at a given thread count.
    """

    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        ctx.gradients = (_native_input_grad, _native_weight_grad)
        kh, kw = weight.shape[2:]
        out_size = tuple(
            (size + 2 * p - k) // s + 1
            for size, p, k, s in zip(x.shape[2:], padding, (kh, kw), stride, strict=True)
        )
        y = native.depthwise_conv(x, weight, stride, padding, out_size)
        return y if y is not None else F.conv2d(x, weight, None, stride, padding, 1, x.shape[1])


def _native_input_grad(grad, x, weight, stride, padding) -> torch.Tensor:
    if stride == (1, 1):
        kh, kw = weight.shape[2:]
        flipped = (kh - 1 - padding[0], kw - 1 - padding[1])
        grad_x = native.depthwise_conv(grad, weight, (1, 1), flipped, x.shape[2:], flip=True)
        if grad_x is not None:
            return grad_x
    return _onednn_input_grad(grad, x, weight, stride, padding)


def _native_weight_grad(grad, x, weight, stride, padding) -> torch.Tensor:
    # The library loaded before the forward (_native_grad_applies), so this is never None.
    return native.depthwise_weight_grad(grad, x, tuple(weight.shape[2:]), stride, padding)


def _onednn_input_grad(grad, x, weight, stride, padding) -> torch.Tensor:
    return _depthwise_backward(grad, x, weight, padding, True, stride)


class _DepthwiseColumnGrad(_DepthwiseGradients):
    """A depthwise convolution (kernel wider than 3) whose weight gradient is assembled from
    kernels three columns wide.

    oneDNN (torch 2.13, AVX2) runs the depthwise weight gradient in its fast depthwise kernel
    only for kernels at most 3 wide with at most one column of padding; 5x5 and 7x7 fall to a
    generic grouped kernel, 1.3x-3x slower than three narrow calls.

    At stride 1 (symmetric padding), a window of columns ``pw - 1 - s .. pw + 1 - s`` (``pw``
    the padding) is the narrow kernel's gradient against the output gradient shifted by ``s``
    columns; the shift drops the products at one edge, which are padding for the window's
    outer columns, so only those are taken from it.

    At stride 2 along the width (odd kernel), on a padded copy - the convolution's own, or,
    where "SAME" padding is symmetric (odd maps) and the forward and input gradient take it
    themselves, one made for the weight gradient alone (oneDNN's 7x7 stride-2 weight gradient
    of 96 channels at 31x31 costs 9.2 ms, the copy and narrow kernels 5.3) - the kernel
    columns ``2d .. 2d + 2`` are the gradient of a 3-wide kernel at the same stride against
    the output gradient moved ``d`` columns right on a zero canvas as wide as that kernel's
    output: every product lands on the same pixel pair, and none of the 3-wide kernel's extra
    output columns meets a nonzero gradient. Measured for 5x5 and 7x7 kernels on padded maps
    11-37 pixels wide: the weight gradient 2x-3x faster, forward + backward 1.2x-1.45x (1
    thread) and 1.03x-1.27x (2 threads).
    """

    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        ctx.gradients = (_onednn_input_grad, _column_weight_grad)
        return F.conv2d(x, weight, None, stride, padding, 1, x.shape[1])


def _column_weight_grad(grad, x, weight, stride, padding) -> torch.Tensor:
    if stride == (1, 1):
        return _depthwise_weight_grad_by_columns(grad, x, weight.shape[2], padding)
    pad_h, pad_w = padding
    if pad_h or pad_w:  # the narrow kernels take no padding of their own here
        x = F.pad(x, (pad_w, pad_w, pad_h, pad_h))
    return _strided_weight_grad_by_columns(grad, x, weight.shape, stride)


def _depthwise_backward(grad, x, weight, padding, data: bool, stride=(1, 1)) -> torch.Tensor:
    """oneDNN's input (``data``) or weight gradient of a depthwise convolution."""
    mask = [data, not data, False]
    result = torch.ops.aten.convolution_backward(
        grad, x, weight, None, list(stride), list(padding), [1, 1], False, [0, 0], x.shape[1],
        mask,
    )  # fmt: skip
    return result[0] if data else result[1]


def _strided_weight_grad_by_columns(grad, x, weight_shape, stride) -> torch.Tensor:
    height, width = weight_shape[2], weight_shape[3]
    narrow = x.new_empty(x.shape[1], 1, height, 3)  # only its shape is read
    spare = (x.shape[3] - 3) // 2 + 1 - grad.shape[3]  # extra output columns of a 3-wide kernel
    columns = []
    for d in range((width - 1) // 2):  # kernel columns 2d .. 2d + 2; the first is in the last
        moved = F.pad(grad, (d, spare - d))
        window = _depthwise_backward(moved, x, narrow, (0, 0), False, stride)
        columns.append(window if d == 0 else window[..., 1:])
    return torch.cat(columns, dim=3)


def _depthwise_weight_grad_by_columns(grad, x, height: int, padding) -> torch.Tensor:
    pad_h, pad_w = padding
    narrow = x.new_empty(x.shape[1], 1, height, 3)  # only its shape is read

    def window(shift: int) -> torch.Tensor:  # columns pad_w - 1 - shift .. pad_w + 1 - shift
        return _depthwise_backward(_shift_columns(grad, shift), x, narrow, (pad_h, 1), False)

    shifts = range(pad_w - 1, 0, -2)  # the window at +s (-s) adds min(2, s) columns left (right)
    left = [window(s)[..., : min(2, s)] for s in shifts]
    right = [window(-s)[..., 3 - min(2, s) :] for s in reversed(shifts)]
    return torch.cat([*left, window(0), *right], dim=3)


def _shift_columns(grad: torch.Tensor, shift: int) -> torch.Tensor:
    """``grad[..., w + shift]``, zero where that is outside the map."""
    if abs(shift) >= grad.shape[3]:
        return torch.zeros_like(grad)
    if shift == 0:
        return grad
    # not F.pad, which zero-fills the whole result before copying all but |shift| columns in
    moved = torch.empty_like(grad, memory_format=_layout(grad))
    if shift > 0:
        moved[..., -shift:].zero_()
        moved[..., :-shift].copy_(grad[..., shift:])
    else:
        moved[..., :-shift].zero_()
        moved[..., -shift:].copy_(grad[..., :shift])
    return moved


def _symmetric_same(x: torch.Tensor, kernel, stride, dilation) -> tuple[int, int] | None:
    """(top, left) "SAME" padding if it is symmetric on both axes for ``x``, else ``None``."""
    height, width = _spatial(x)
    top, bottom = same_padding(height, kernel[0], stride[0], dilation[0])
    left, right = same_padding(width, kernel[1], stride[1], dilation[1])
    return (top, left) if top == bottom and left == right else None


#: Depthwise convolutions with at most ``[0]`` (output pixel, input pixel) pairs - 2x2 maps
#: at stride 1 (16 pairs), 4x4 -> 2x2 at stride 2 (64) - run as a dense per-channel product
#: by broadcasting, and kernels over 3x3 with at most ``[1]`` pairs (4x4 maps at stride 1)
#: as a batched matrix product. oneDNN's depthwise weight gradient (AVX2) costs 10-25x its
#: forward on such maps; the dense forms cost 2-3x. For 3x3 kernels on 4x4 maps oneDNN's own
#: depthwise kernel is faster. Where :class:`_NativeDepthwise` runs, it runs on these maps too:
#: a separable convolution (both halves, forward + backward, 20-80 channels, batch 32) takes
#: 0.71x-0.91x the time it takes with the dense forms on 2x2 and 4x4 maps.
DENSE_DEPTHWISE_PAIRS = (64, 256)

#: 1x1 convolutions of channels_last maps with at most this many pixels (batch x H x W) run as
#: ``F.linear`` of the (pixels, channels) view (same products, per-call cost of a matmul).
POINTWISE_MATMUL_PIXELS = 4096


def pointwise(x: torch.Tensor, weight: torch.Tensor, conv: Callable) -> torch.Tensor:
    """A 1x1 convolution (stride 1, no padding, no bias) of ``x``: ``conv(x)``, or the same
    product as a matmul of the channels_last (pixels, channels) view of small maps."""
    n, c, height, width = x.shape
    if _native_pointwise_applies(x, weight):
        return _NativePointwise.apply(x, weight)
    if (  # fast() first: while exporting, the size test would guard a dynamic batch
        fast("pointwise_matmul", x)
        and n * height * width <= POINTWISE_MATMUL_PIXELS
        and (x.stride(1) == 1 or x.is_contiguous(memory_format=torch.channels_last))
    ):
        out = F.linear(x.permute(0, 2, 3, 1), weight.reshape(weight.shape[0], c))
        return out.permute(0, 3, 1, 2)  # channels_last strides
    if (
        fast("pointwise_matmul_grad", x)
        and weight.shape[0] <= POINTWISE_GRAD_MAX_OUT
        and 2 * weight.shape[0] <= c
        and (x.requires_grad or weight.requires_grad)
        and torch.is_grad_enabled()
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        return _PointwiseMatmulGrad.apply(*autocast_operands(x, weight))
    return conv(x)


#: 1x1 convolutions (channels_last, larger than :data:`POINTWISE_MATMUL_PIXELS`) to at most
#: this many output channels, from at least twice as many input channels, differentiate as
#: matrix products: oneDNN's backward (torch 2.13, AVX-512) runs output channels below its
#: 16-channel block 1.2x-3.3x slower than the two products (measured cold-cache for 5-12
#: output and 10-96 input channels, 8,192-65,536 pixels; 15 and more output channels, or
#: as many inputs as outputs, lose: 0.5x-1.1x).
POINTWISE_GRAD_MAX_OUT = 12


#: 1x1 convolutions with at most this many input and output channels run through
#: :class:`_NativePointwise` (the native kernel keeps up to 8 vectors of outputs in registers),
#: on maps of more than :data:`POINTWISE_MATMUL_PIXELS` pixels: on smaller ones it is no
#: faster than the matmul (0.85x-1.08x forward + backward, 2x2-8x8 maps of 20-80 channels).
NATIVE_POINTWISE_MAX_CHANNELS = 128


def _native_pointwise_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        fast("native_pointwise", x)
        and x.numel() > POINTWISE_MATMUL_PIXELS * x.shape[1]
        and weight.requires_grad
        and torch.is_grad_enabled()
        and max(weight.shape[0], weight.shape[1]) <= NATIVE_POINTWISE_MAX_CHANNELS
        and _native_ready(x, weight)
    )


class _NativePointwise(torch.autograd.Function):
    """A 1x1 convolution (stride 1, no bias) of a channels_last float32 ``x`` through
    :func:`nasnet.native.pointwise`: the output and (with the weight transposed) the input
    gradient; the weight gradient as one product of the (pixels, channels) views."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return native.pointwise(x, weight.view(weight.shape[0], weight.shape[1]))

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        c_out, c = weight.shape[:2]
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = native.pointwise(grad, weight.view(c_out, c), transposed=True)
        if ctx.needs_input_grad[1]:
            grad_w = _pointwise_weight_grad(grad.permute(0, 2, 3, 1).reshape(-1, c_out), x)
        return grad_x, grad_w


def _pointwise_weight_grad(rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The weight gradient (C_out, C, 1, 1) of a 1x1 convolution of the channels_last ``x``,
    given ``rows``, its output gradient as (pixels, C_out): ``rows^T x``."""
    pixels = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    return (rows.t() @ pixels).view(rows.shape[1], x.shape[1], 1, 1)


class _PointwiseMatmulGrad(torch.autograd.Function):
    """A 1x1 convolution (stride 1, no bias) of a channels_last ``x``: oneDNN's forward, and
    the gradients as products of the (pixels, channels) views, ``grad_x = g W`` (returned
    channels_last) and ``grad_W = g^T x``."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        n, c, height, width = x.shape
        c_out = weight.shape[0]
        rows = grad.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        rows = rows.reshape(-1, c_out)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = (rows @ weight.reshape(c_out, c)).view(n, height, width, c)
            grad_x = grad_x.permute(0, 3, 1, 2)  # channels_last strides
        if ctx.needs_input_grad[1]:
            grad_w = _pointwise_weight_grad(rows, x)
        return grad_x, grad_w


class Pointwise(nn.Conv2d):
    """``nn.Conv2d(c_in, c_out, 1, bias=False)`` that runs small maps as a matmul."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise(x, self.weight, super().forward)


def whole_map_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A VALID convolution (no bias) whose kernel is exactly the map: one output pixel, so a
    linear layer on the flattened map, flattened in the weight's memory order (views only)."""
    n, c_out = x.shape[0], weight.shape[0]
    if weight.is_contiguous():
        flat_x, flat_w = x.reshape(n, -1), weight.view(c_out, -1)
    else:  # channels_last weights: flatten (H, W, C) on both sides
        flat_x = x.permute(0, 2, 3, 1).reshape(n, -1)
        flat_w = weight.permute(0, 2, 3, 1).reshape(c_out, -1)
    return F.linear(flat_x, flat_w).view(n, c_out, 1, 1)


class WholeMapConv(nn.Conv2d):
    """``nn.Conv2d(c_in, c_out, kernel, bias=False)`` for maps of exactly the kernel's size (the
    aux head's second convolution), run as :func:`whole_map_linear` (fast path
    ``whole_map_linear``: oneDNN's convolution of such maps is 3x-7x slower, measured for 1x1
    to 4x4 maps with 128 to 768 channels, forward + backward)."""

    def __init__(self, c_in: int, c_out: int, kernel: int):
        super().__init__(c_in, c_out, kernel, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fast("whole_map_linear") and tuple(x.shape[-2:]) == self.kernel_size:
            return whole_map_linear(x, self.weight)
        return super().forward(x)


def _constant_cache(maxsize: int):
    """``lru_cache`` for functions that build constant tensors, built outside inference mode:
    a tensor first built while evaluating under ``torch.inference_mode`` would be an inference
    tensor, which a later training step cannot save for its backward."""

    def wrap(build):
        @lru_cache(maxsize=maxsize)
        @functools.wraps(build)
        def cached(*args):
            with torch.inference_mode(False):
                return build(*args)

        return cached

    return wrap


@_constant_cache(maxsize=256)
def _depthwise_index(height, width, kh, kw, sh, sw, dh, dw) -> torch.Tensor:
    """For TF "SAME" depthwise convolution: (output pixel, input pixel) -> kernel tap index,
    ``kh * kw`` where the pair is not connected; shape (out_h * out_w, height * width)."""
    top = same_padding(height, kh, sh, dh)[0]
    left = same_padding(width, kw, sw, dw)[0]
    out_h, out_w = math.ceil(height / sh), math.ceil(width / sw)
    index = torch.full((out_h * out_w, height * width), kh * kw, dtype=torch.long)
    for oh in range(out_h):
        for ow in range(out_w):
            for i in range(kh):
                for j in range(kw):
                    ih, iw = oh * sh - top + i * dh, ow * sw - left + j * dw
                    if 0 <= ih < height and 0 <= iw < width:
                        index[oh * out_w + ow, ih * width + iw] = i * kw + j
    return index


def _dense_depthwise(
    x: torch.Tensor, weight: torch.Tensor, index: torch.Tensor, out_h: int, out_w: int, bmm: bool
) -> torch.Tensor:
    """Depthwise convolution of a tiny map as ``out[n, q, c] = sum_p x[n, p, c] * M[c, q, p]``
    with ``M`` gathered from the kernel (zero where pixels are not connected): the padding
    never enters, so the result equals the padded convolution (the products with padded
    zeros are exact zeros)."""
    x, weight = autocast_operands(x, weight)
    n, c, height, width = x.shape
    taps = torch.cat([weight.reshape(c, -1), weight.new_zeros(c, 1)], 1)  # (C, taps + 1)
    index = index.to(x.device)
    if bmm:
        return _PerChannelMatmul.apply(x, taps[:, index], out_h, out_w)
    layout = _layout(x)
    matrix = taps.t()[index]  # (Q, P, C)
    pixels = x.permute(0, 2, 3, 1).reshape(n, 1, height * width, c)
    out = (pixels * matrix).sum(2).view(n, out_h, out_w, c).permute(0, 3, 1, 2)
    return out.contiguous(memory_format=layout)  # a no-op for channels_last: its strides already


class _PerChannelMatmul(torch.autograd.Function):
    """``out[n, c, q] = sum_p x[n, c, p] * matrix[c, q, p]`` (``p``, ``q`` pixels of the input and
    output maps) as batched matrix products over channels, every operand copied once into the
    (channel, batch, pixel) order BLAS takes.

    ``torch.bmm`` on the strided views of a channels_last map instead clones each channel's
    matrix separately, forward and backward (2.5x-5.7x slower at 4x4 maps with 48-672
    channels, batch 32-64, and slower at two threads than at one)."""

    @staticmethod
    def forward(ctx, x, matrix, out_h, out_w):
        n, c, height, width = x.shape
        pixels = x.permute(1, 0, 2, 3).reshape(c, n, height * width).contiguous()
        out = torch.bmm(pixels, matrix.transpose(1, 2)).view(c, n, out_h, out_w)
        ctx.save_for_backward(pixels, matrix)
        ctx.layout, ctx.input_hw = _layout(x), (height, width)
        return out.permute(1, 0, 2, 3).contiguous(memory_format=ctx.layout)

    @staticmethod
    def backward(ctx, grad):
        pixels, matrix = ctx.saved_tensors
        c, n, _ = pixels.shape
        grad = grad.permute(1, 0, 2, 3).reshape(c, n, -1).contiguous()  # (C, N, Q)
        grad_x = grad_matrix = None
        if ctx.needs_input_grad[0]:
            grad_pixels = torch.bmm(grad, matrix).view(c, n, *ctx.input_hw)
            grad_x = grad_pixels.permute(1, 0, 2, 3).contiguous(memory_format=ctx.layout)
        if ctx.needs_input_grad[1]:
            grad_matrix = torch.bmm(grad.transpose(1, 2), pixels)  # (C, Q, P)
        return grad_x, grad_matrix, None, None


class MaxPool2dSame(nn.Module):
    """Max pooling with "SAME" padding (padded cells never win)."""

    def __init__(self, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel, self.stride
        if _is_static(k, s, 1):
            return F.max_pool2d(x, k, s, k // 2)
        if fast("pool_ceil_mode"):
            height, width = _spatial(x)
            pads = ceil_mode_padding(height, k, s), ceil_mode_padding(width, k, s)
            if None not in pads:
                return F.max_pool2d(x, k, s, pads, ceil_mode=True)
        return F.max_pool2d(
            pad_same(x, self.kernel, self.stride, value=-math.inf), self.kernel, self.stride
        )


class AvgPool2dSame(nn.Module):
    """Average pooling with "SAME" padding that excludes padded cells from the average.

    ``count_pad_strided=True`` reproduces timm's port instead, whose strided pools average
    over explicitly zero-padded cells (a border difference from TensorFlow).
    """

    def __init__(self, kernel: int, stride: int, count_pad_strided: bool = False):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.count_pad_strided = count_pad_strided

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel, self.stride
        if s == 1 and k % 2 == 1 and fast("avg_pool_as_conv", x) and _window_sum_pays(x):
            return window_mean(x, k)
        height, width = _spatial(x)
        top, bottom = same_padding(height, k, s)
        left, right = same_padding(width, k, s)
        count_pad = self.count_pad_strided and s > 1
        if fast("pool_ceil_mode"):
            pads = ceil_mode_padding(height, k, s), ceil_mode_padding(width, k, s)
            if None not in pads:  # timm's zero-padded windows: every window divides by k * k
                if count_pad:
                    return F.avg_pool2d(x, k, s, pads, ceil_mode=True, divisor_override=k * k)
                return F.avg_pool2d(x, k, s, pads, ceil_mode=True, count_include_pad=False)
        if count_pad:
            return F.avg_pool2d(F.pad(x, (left, right, top, bottom)), k, s)
        if top == bottom and left == right and top <= k // 2 and left <= k // 2:
            return F.avg_pool2d(x, k, s, (top, left), count_include_pad=False)
        summed = F.avg_pool2d(F.pad(x, (left, right, top, bottom)), k, s, divisor_override=1)
        ones = x.new_ones((1, 1, height, width))
        counts = F.avg_pool2d(F.pad(ones, (left, right, top, bottom)), k, s, divisor_override=1)
        return summed / counts


#: A stride-1 average pool runs as a depthwise convolution on channels_last CPU maps at least
#: this wide with fewer channels than ``[1]``: ATen's channels_last pool is slow per element
#: at few channels (1.3x-2x the convolution's time for forward + backward at 16x16 and 32x32,
#: 8-36 channels; about equal at 96 channels, and on 8x8 maps, where the pool stays).
WINDOW_SUM_SHAPE = (16, 64)


def _window_sum_pays(x: torch.Tensor) -> bool:
    min_width, max_channels = WINDOW_SUM_SHAPE
    return (
        x.dim() == 4
        and x.shape[-1] >= min_width
        and x.shape[1] < max_channels
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def window_mean(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """Stride-1 "SAME" average pool (odd ``kernel``, padding excluded from the average) as a
    depthwise convolution with an all-ones kernel times the reciprocal of each window's size."""
    channels, (height, width) = x.shape[1], _spatial(x)
    ones = x.new_ones(channels, 1, kernel, kernel)
    summed = F.conv2d(x, ones, None, 1, kernel // 2, 1, channels)
    return summed.mul_(_reciprocal_window_sizes(height, width, kernel, x.device, x.dtype))


@_constant_cache(maxsize=64)
def _reciprocal_window_sizes(height, width, kernel, device, dtype) -> torch.Tensor:
    """(1, 1, H, W): 1 / the number of input cells in each stride-1 "SAME" window."""
    half = kernel // 2

    def along(size: int) -> torch.Tensor:
        i = torch.arange(size)
        return (i + half).clamp(max=size - 1) - (i - half).clamp(min=0) + 1

    sizes = along(height)[:, None] * along(width)[None, :]
    return (1.0 / sizes.to(dtype)).to(device).view(1, 1, height, width)


class ReLUConvBN(nn.Sequential):
    """ReLU -> convolution ("SAME") -> BN."""

    def __init__(self, c_in, c_out, kernel, stride, bn: BNConfig, dilation=1):
        super().__init__(
            nn.ReLU(),
            Conv2dSame(c_in, c_out, kernel, stride, dilation),
            bn.make(c_out),
        )


class ConvBN(nn.Sequential):
    """1x1 convolution -> BN without activation (the projection after pools)."""

    def __init__(self, c_in, c_out, bn: BNConfig):
        super().__init__(Pointwise(c_in, c_out), bn.make(c_out))


class SeparableConv2d(nn.Sequential):
    """Depthwise KxK convolution then pointwise 1x1, with nothing in between."""

    def __init__(self, c_in, c_out, kernel, stride):
        super().__init__(
            Conv2dSame(c_in, c_in, kernel, stride, groups=c_in),
            Pointwise(c_in, c_out),
        )


class SepConvTwice(nn.Sequential):
    """A NASNet separable op: [ReLU, sep-conv (stride s), BN] then [ReLU, sep-conv, BN].

    The first pointwise convolution already maps ``c_in`` to ``c_out``. In training, each
    half at stride 1 runs as one :class:`_SeparableHalf` where that applies (fast path
    ``fused_separable``).
    """

    def __init__(self, c_in, c_out, kernel, stride, bn: BNConfig):
        super().__init__(
            nn.ReLU(),
            SeparableConv2d(c_in, c_out, kernel, stride),
            bn.make(c_out),
            nn.ReLU(inplace=True),  # on the BN output, which nothing else reads
            SeparableConv2d(c_out, c_out, kernel, 1),
            bn.make(c_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_first_layer(self[0](x))

    def after_first_layer(self, x_relu: torch.Tensor) -> torch.Tensor:
        """The op from its second layer on, given ``x_relu``, its first layer's output."""
        y = separable_half(self[1], self[2], x_relu, relu=False)
        if y is None:
            y = self[2](self[1](x_relu))
        out = separable_half(self[4], self[5], y, relu=True)
        return out if out is not None else self[5](self[4](self[3](y)))


def separable_half(
    sep: SeparableConv2d, bn: nn.BatchNorm2d, x: torch.Tensor, relu: bool
) -> torch.Tensor | None:
    """``bn(sep(relu(x) if relu else x))`` in training as one :class:`_SeparableHalf`, the
    BatchNorm's running statistics updated as its own forward would; ``None`` where that
    does not apply (then the caller runs the layers)."""
    depthwise, point = sep
    if not (
        fast("fused_separable", x)
        and isinstance(bn, BatchNorm2d)
        and bn._training_step(x)
        and depthwise._native_grad
        and depthwise._static
        and depthwise.kernel_size[1] in (3, 5, 7)  # the native kernels' row loops
        and torch.is_grad_enabled()
        and all(t.requires_grad for t in (depthwise.weight, point.weight, bn.weight, bn.bias))
        and all(t.is_contiguous() for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var))
        and _native_ready(x, depthwise.weight, point.weight, bn.weight, bn.running_mean)
    ):
        return None
    bn.num_batches_tracked.add_(1)
    running = (bn.running_mean, bn.running_var, bn._momentum_now())
    weights = (depthwise.weight, point.weight, bn.weight, bn.bias)
    return _SeparableHalf.apply(x, relu, *weights, bn.eps, *running)


class _SeparableHalf(torch.autograd.Function):
    """One half of a separable op in training - [ReLU,] depthwise convolution (stride 1),
    1x1 convolution, BatchNorm - as one autograd node: :mod:`nasnet.native`'s depthwise
    kernels, its 1x1 kernel (at most 128 channels, on maps of any size: 1.3x-1.6x a matrix
    product's speed on 2x2-8x8 maps of 20-80 channels, one thread, where as a node of its own
    it gained nothing) or a matrix product, and the BatchNorm that fast path
    ``native_batch_norm`` would pick (its own or ATen's), without the bookkeeping of four
    modules and five nodes. A separable op on 2x2-8x8 maps of 20-80 channels (batch 32, 1 and
    2 threads) trains 1.13x-1.17x faster so; large64's step 1.04x-1.06x, the CIFAR child's
    1.00x. ``x`` is channels_last float32; the running statistics move in the forward."""

    @staticmethod
    def forward(ctx, x, relu: bool, dw_weight, pw_weight, bn_weight, bn_bias, eps: float,
                running_mean, running_var, factor: float):  # fmt: skip
        r = torch.relu(x) if relu else x
        kh, kw = dw_weight.shape[2:]
        padding = ((kh - 1) // 2, (kw - 1) // 2)
        d = native.depthwise_conv(r, dw_weight, (1, 1), padding, r.shape[2:])
        p = _pointwise_product(d, pw_weight.view(pw_weight.shape[:2]))
        ctx.native_bn = _native_batch_norm_channels(p)  # any size: no node of its own here
        if ctx.native_bn:
            y, mean, invstd = native.batch_norm_forward(
                p, bn_weight, bn_bias, eps, running_mean, running_var, factor
            )
        else:
            y, mean, invstd = torch.native_batch_norm(
                p, bn_weight, bn_bias, running_mean, running_var, True, factor, eps
            )
        ctx.save_for_backward(r, d, p, dw_weight, pw_weight, bn_weight, mean, invstd)
        ctx.relu, ctx.padding, ctx.eps = relu, padding, eps
        return y

    @staticmethod
    def backward(ctx, grad_y):
        r, d, p, dw_weight, pw_weight, bn_weight, mean, invstd = ctx.saved_tensors
        grad_y = grad_y.contiguous(memory_format=torch.channels_last)
        if ctx.native_bn:
            grad_p, grad_bn_w, grad_bn_b = native.batch_norm_backward(
                grad_y, p, bn_weight, mean, invstd
            )
        else:
            grad_p, grad_bn_w, grad_bn_b = torch.ops.aten.native_batch_norm_backward(
                grad_y, p, bn_weight, None, None, mean, invstd, True, ctx.eps, [True] * 3
            )
        grad_p = grad_p.contiguous(memory_format=torch.channels_last)
        c_out, c = pw_weight.shape[:2]
        grad_d = _pointwise_product(grad_p, pw_weight.view(c_out, c), transposed=True)
        grad_pw = _pointwise_weight_grad(grad_p.permute(0, 2, 3, 1).reshape(-1, c_out), d)
        grad_dw = _native_weight_grad(grad_d, r, dw_weight, (1, 1), ctx.padding)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = _native_input_grad(grad_d, r, dw_weight, (1, 1), ctx.padding)
            if ctx.relu:
                grad_x = torch.ops.aten.threshold_backward(grad_x, r, 0)
        return grad_x, None, grad_dw, grad_pw, grad_bn_w, grad_bn_b, None, None, None, None


def _pointwise_product(x: torch.Tensor, weight: torch.Tensor, transposed: bool = False):
    """The 1x1 convolution of the channels_last float32 ``x`` with ``weight`` (M x K; applied
    as its transpose where ``transposed``): :mod:`nasnet.native`'s kernel where the fast path
    ``native_pointwise`` is on and ``weight`` has at most
    :data:`NATIVE_POINTWISE_MAX_CHANNELS` rows and columns (on maps of any size), else a
    matrix product of the (pixels, channels) view."""
    n, k, height, width = x.shape
    if fast("native_pointwise", x) and max(weight.shape) <= NATIVE_POINTWISE_MAX_CHANNELS:
        out = native.pointwise(x, weight, transposed)
        if out is not None:
            return out
    rows = x.permute(0, 2, 3, 1).reshape(-1, k)
    out = rows @ (weight if transposed else weight.t())
    return out.view(n, height, width, -1).permute(0, 3, 1, 2)  # channels_last strides


class FactorizedConv(nn.Sequential):
    """ReLU -> 1xK conv -> Kx1 conv -> BN (the paper's "1xK then Kx1" op)."""

    def __init__(self, c_in, c_out, k, stride, bn: BNConfig):
        super().__init__(
            nn.ReLU(),
            Conv2dSame(c_in, c_out, (1, k), (1, stride)),
            Conv2dSame(c_out, c_out, (k, 1), (stride, 1)),
            bn.make(c_out),
        )


class Pool(nn.Sequential):
    """A pool, followed by a 1x1 projection with BN when the channel count must change."""

    def __init__(self, kind: str, kernel: int, c_in, c_out, stride, bn: BNConfig):
        layers: list[nn.Module] = [
            MaxPool2dSame(kernel, stride) if kind == "max" else AvgPool2dSame(kernel, stride)
        ]
        if c_in != c_out:
            layers.append(ConvBN(c_in, c_out, bn))
        super().__init__(*layers)


def identity_op(c_in, c_out, stride, bn: BNConfig) -> nn.Module:
    """A true identity, or ReLU -> 1x1 conv (strided) -> BN where shapes must change."""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return ReLUConvBN(c_in, c_out, 1, stride, bn)


class FactorizedReduction(nn.Module):
    """Halve H and W without losing half the pixels: two shifted stride-2 paths, concatenated.

    Path 1 takes pixels at even positions; path 2 pads one zero row/column at the bottom/right
    and drops the first row/column (a one-pixel diagonal shift) before the same subsampling.
    With ``stride=1`` it is a 1x1 convolution with BN.
    """

    def __init__(self, c_in, c_out, bn: BNConfig, stride: int = 2):
        super().__init__()
        self.stride = stride
        if stride == 1:
            self.conv = Pointwise(c_in, c_out)
        else:
            self.path_1 = Pointwise(c_in, c_out // 2)  # of the even pixels
            self.path_2 = Pointwise(c_in, c_out - c_out // 2)  # of the odd pixels
        self.bn = bn.make(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return self.bn(self.conv(x))
        if fast("strided_factorized"):
            return self.bn(factorized_1x1(x, self.path_1, self.path_2))
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]  # the plain form: a padded copy
        paths = self.path_1(subsample(x, (2, 2))), self.path_2(subsample(shifted, (2, 2)))
        return self.bn(torch.cat(paths, dim=1))


def _zero_edge(odd: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The odd pixels of ``x`` with the zero row/column that odd sizes of ``x`` reach."""
    height, width = _spatial(x)
    return F.pad(odd, (0, width % 2, 0, height % 2)) if height % 2 or width % 2 else odd


def factorized_1x1(x: torch.Tensor, conv_even: Callable, conv_odd: Callable) -> torch.Tensor:
    """The factorized reduction's two paths, concatenated: ``conv_even`` (a 1x1 convolution,
    no bias) of the pixels at even positions, and ``conv_odd`` of the even pixels after a
    one-pixel diagonal shift that brings in zeros at the bottom/right edge: the view
    ``x[:, :, 1::2, 1::2]``, padded with the zero row/column that odd sizes reach (a 4x smaller
    copy than padding ``x``; the zeros are convolved, as in the reference, whose mult-adds the
    published counts include)."""
    if fast("paired_subsample") and fast("layout_preserving_subsample") and x.requires_grad:
        even, odd = _EvenOddPixels.apply(x)
    else:
        even, odd = subsample(x, (2, 2)), subsample(x, (2, 2), offset=1)
    return torch.cat([conv_even(even), conv_odd(_zero_edge(odd, x))], dim=1)


class _EvenOddPixels(torch.autograd.Function):
    """``(x[:, :, ::2, ::2], x[:, :, 1::2, 1::2])``; the gradient is written into one tensor
    with the strides of ``x`` (zeros only where neither view reads)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor):
        ctx.geometry = (x.shape, _layout(x))
        return x[:, :, ::2, ::2], x[:, :, 1::2, 1::2]

    @staticmethod
    def backward(ctx, grad_even: torch.Tensor, grad_odd: torch.Tensor):
        shape, layout = ctx.geometry
        grad_x = torch.empty(
            shape, dtype=grad_even.dtype, device=grad_even.device, memory_format=layout
        )
        grad_x[:, :, ::2, 1::2] = 0
        grad_x[:, :, 1::2, ::2] = 0
        grad_x[:, :, ::2, ::2] = grad_even  # autograd passes zeros for an unused output
        grad_x[:, :, 1::2, 1::2] = grad_odd
        return grad_x


def concat_of_sums(parts: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    """``torch.cat([sum(part) for part in parts], dim=1)`` for parts of one or two tensors,
    each sum written straight into its slice of the result."""
    arity = tuple(len(part) for part in parts)
    return _ConcatOfSums.apply(arity, *(t for part in parts for t in part))


class _ConcatOfSums(torch.autograd.Function):
    """See :func:`concat_of_sums`; the gradient of each part is its slice of the output's,
    copied into the output's layout: a channel slice is strided, and ATen's BatchNorm backward
    (which most parts reach first, through a separable convolution's last BatchNorm) runs
    several times slower on a strided gradient beside a channels_last input than the copy and
    a dense gradient together (about 7x at 24x16x16, batch 64)."""

    @staticmethod
    def forward(ctx, arity: tuple[int, ...], *tensors: torch.Tensor) -> torch.Tensor:
        parts, start = [], 0
        for k in arity:
            parts.append(tensors[start : start + k])
            start += k
        widths = [part[0].shape[1] for part in parts]
        n, _, height, width = tensors[0].shape
        dtype = reduce(torch.promote_types, (t.dtype for t in tensors))  # as cat
        out = torch.empty(
            (n, sum(widths), height, width), dtype=dtype, device=tensors[0].device,
            memory_format=_layout(tensors[0]),
        )  # fmt: skip
        offset = 0
        for part, c in zip(parts, widths, strict=True):
            target = out[:, offset : offset + c]
            if len(part) == 2:
                torch.add(*part, out=target)
            else:
                target.copy_(part[0])
            offset += c
        ctx.arity, ctx.widths = arity, widths
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grads: list[torch.Tensor | None] = [None]
        layout, offset = _layout(grad), 0
        for k, c in zip(ctx.arity, ctx.widths, strict=True):
            grads += [grad[:, offset : offset + c].contiguous(memory_format=layout)] * k
            offset += c
        return tuple(grads)


class DropPath(nn.Module):
    """Per-example DropPath whose keep probability is set from outside (ScheduledDropPath).

    The network sets :attr:`keep_prob` each step; surviving examples are divided by it. Under
    ``torch.compile`` the probability is read from a tensor (a non-persistent buffer), so that
    its change at every step does not recompile the graph: only switching DropPath on or off
    does.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("_keep", torch.ones(()), persistent=False)
        self.keep_prob = 1.0

    @property
    def keep_prob(self) -> float:
        return self._keep_prob

    @keep_prob.setter
    def keep_prob(self, value: float) -> None:
        self._keep_prob = float(value)
        self._active = self._keep_prob < 1.0  # compiled graphs guard on this bool, not the float
        self._keep.fill_(self._keep_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self._active:
            return x
        shape = (x.shape[0], 1, 1, 1)
        if _compiling():  # drawn at the buffer's precision, as bernoulli_ draws at the float's
            keep = self._keep
            mask = (torch.rand(shape, dtype=keep.dtype, device=x.device) < keep) / keep
            return x * mask.to(x.dtype)
        mask = torch.empty(shape, dtype=x.dtype, device=x.device)
        mask.bernoulli_(self._keep_prob)
        if fast("fused_drop_path"):  # one pass over x forward and backward, not two
            return x * mask.div_(self._keep_prob)
        return x * mask / self._keep_prob


def starts_with_relu(module: nn.Module) -> bool:
    """Whether ``module`` is a sequence whose first layer is a (not in-place) ReLU."""
    return (
        isinstance(module, nn.Sequential)
        and len(module) > 1
        and isinstance(module[0], nn.ReLU)
        and not module[0].inplace
    )


def after_first_layer(module: nn.Sequential, y: torch.Tensor) -> torch.Tensor:
    """Run ``module`` from its second layer on, given ``y``, its first layer's output."""
    if isinstance(module, SepConvTwice):
        return module.after_first_layer(y)
    for i, layer in enumerate(module):
        if i:
            y = layer(y)
    return y


def after_relu(module: nn.Sequential, x_relu: torch.Tensor) -> torch.Tensor:
    """Run ``module`` (see :func:`starts_with_relu`) on ``x_relu = relu(x)`` from its second
    layer on: equals ``module(x)``, without computing the ReLU again."""
    return after_first_layer(module, x_relu)


OpFactory = Callable[[int, int, int, BNConfig], nn.Module]

#: Op name -> constructor ``(c_in, c_out, stride, bn) -> nn.Module``.
OP_FACTORIES: dict[str, OpFactory] = {
    "identity": identity_op,
    "conv_1x3_3x1": lambda ci, co, s, bn: FactorizedConv(ci, co, 3, s, bn),
    "conv_1x7_7x1": lambda ci, co, s, bn: FactorizedConv(ci, co, 7, s, bn),
    "dil_conv_3x3": lambda ci, co, s, bn: ReLUConvBN(ci, co, 3, s, bn, dilation=2),
    "avg_pool_3x3": lambda ci, co, s, bn: Pool("avg", 3, ci, co, s, bn),
    "max_pool_3x3": lambda ci, co, s, bn: Pool("max", 3, ci, co, s, bn),
    "max_pool_5x5": lambda ci, co, s, bn: Pool("max", 5, ci, co, s, bn),
    "max_pool_7x7": lambda ci, co, s, bn: Pool("max", 7, ci, co, s, bn),
    "conv_1x1": lambda ci, co, s, bn: ReLUConvBN(ci, co, 1, s, bn),
    "conv_3x3": lambda ci, co, s, bn: ReLUConvBN(ci, co, 3, s, bn),
    "sep_conv_3x3": lambda ci, co, s, bn: SepConvTwice(ci, co, 3, s, bn),
    "sep_conv_5x5": lambda ci, co, s, bn: SepConvTwice(ci, co, 5, s, bn),
    "sep_conv_7x7": lambda ci, co, s, bn: SepConvTwice(ci, co, 7, s, bn),
}

#: Ops whose output is never dropped by DropPath.
UNDROPPED_OPS = frozenset({"identity"})
