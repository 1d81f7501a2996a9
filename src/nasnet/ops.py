"""The operation table and the layers NASNet cells are made of.

``OPS[name](c_in, c_out, stride, bn)`` builds the module for one op of a block. Every op maps
``c_in`` channels to ``c_out`` and follows TF-slim's conventions: ReLU -> conv -> BN ordering,
no bias in convolutions, TensorFlow "SAME" padding (asymmetric at stride 2 on even sizes, so
published weights fit), average pooling that ignores padded cells, separable convolutions
applied twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class BNConfig:
    """BatchNorm settings shared by every layer of a network."""

    eps: float = 1e-5
    momentum: float = 0.1

    def make(self, channels: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(channels, eps=self.eps, momentum=self.momentum)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) along one axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._static:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return super().forward(x)


class MaxPool2dSame(nn.Module):
    """Max pooling with "SAME" padding (padded cells never win)."""

    def __init__(self, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _is_static(self.kernel, self.stride, 1):
            return F.max_pool2d(x, self.kernel, self.stride, self.kernel // 2)
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
        height, width = _spatial(x)
        top, bottom = same_padding(height, k, s)
        left, right = same_padding(width, k, s)
        if self.count_pad_strided and s > 1:
            return F.avg_pool2d(F.pad(x, (left, right, top, bottom)), k, s)
        if top == bottom and left == right and top <= k // 2 and left <= k // 2:
            return F.avg_pool2d(x, k, s, (top, left), count_include_pad=False)
        summed = F.avg_pool2d(F.pad(x, (left, right, top, bottom)), k, s, divisor_override=1)
        ones = x.new_ones((1, 1, height, width))
        counts = F.avg_pool2d(F.pad(ones, (left, right, top, bottom)), k, s, divisor_override=1)
        return summed / counts


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
        super().__init__(nn.Conv2d(c_in, c_out, 1, bias=False), bn.make(c_out))


class SeparableConv2d(nn.Sequential):
    """Depthwise KxK convolution then pointwise 1x1, with nothing in between."""

    def __init__(self, c_in, c_out, kernel, stride):
        super().__init__(
            Conv2dSame(c_in, c_in, kernel, stride, groups=c_in),
            nn.Conv2d(c_in, c_out, 1, bias=False),
        )


class SepConvTwice(nn.Sequential):
    """A NASNet separable op: [ReLU, sep-conv (stride s), BN] then [ReLU, sep-conv, BN].

    The first pointwise convolution already maps ``c_in`` to ``c_out``.
    """

    def __init__(self, c_in, c_out, kernel, stride, bn: BNConfig):
        super().__init__(
            nn.ReLU(),
            SeparableConv2d(c_in, c_out, kernel, stride),
            bn.make(c_out),
            nn.ReLU(),
            SeparableConv2d(c_out, c_out, kernel, 1),
            bn.make(c_out),
        )


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
            self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        else:
            self.path_1 = nn.Conv2d(c_in, c_out // 2, 1, bias=False)
            self.path_2 = nn.Conv2d(c_in, c_out - c_out // 2, 1, bias=False)
        self.bn = bn.make(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return self.bn(self.conv(x))
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        out = torch.cat(
            [self.path_1(x[:, :, ::2, ::2]), self.path_2(shifted[:, :, ::2, ::2])], dim=1
        )
        return self.bn(out)


class DropPath(nn.Module):
    """Per-example DropPath whose keep probability is set from outside (ScheduledDropPath).

    The network sets :attr:`keep_prob` each step; surviving examples are divided by it.
    """

    def __init__(self):
        super().__init__()
        self.keep_prob = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.keep_prob >= 1.0:
            return x
        mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device)
        mask.bernoulli_(self.keep_prob)
        return x * mask / self.keep_prob


OpFactory = Callable[[int, int, int, BNConfig], nn.Module]

#: Op name -> constructor ``(c_in, c_out, stride, bn) -> nn.Module``.
OPS: dict[str, OpFactory] = {
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
