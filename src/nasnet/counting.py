"""Counting parameters and multiply-adds the way the paper reports them."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import nn

from nasnet.runtime import module_mode


def count_params(model: nn.Module, include_aux: bool = False) -> int:
    """Trainable parameters of the inference network (the auxiliary head is left out,
    as in the published counts, unless ``include_aux``)."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if include_aux or not name.startswith("aux_head.")
    )


def count_mult_adds(model: nn.Module, input_size: Sequence[int] | int) -> int:
    """Multiply-adds of the convolution and linear layers for one image.

    ``input_size`` is an image side (``224``: 3 channels assumed), ``(C, H, W)`` or
    ``(N, C, H, W)``; the count is always per image (as for ``N = 1``), whatever ``N`` is. Pools,
    BN and activations are not counted, as in the paper's tables. Any other ``input_size`` is a
    :class:`ValueError`.
    """
    channels, height, width = image_shape(input_size)
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        per_output = (module.in_channels // module.groups) * kh * kw
        total += output[0].numel() * per_output

    def linear_hook(module: nn.Linear, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        total += module.in_features * module.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        param = next(model.parameters())
        with module_mode(model, False), torch.no_grad():
            model(torch.zeros(1, channels, height, width, dtype=param.dtype, device=param.device))
    finally:
        for h in handles:
            h.remove()
    return total


def image_shape(input_size: Sequence[int] | int) -> tuple[int, int, int]:
    """``(C, H, W)`` of one image from a side, ``(C, H, W)`` or ``(N, C, H, W)``; a one-line
    :class:`ValueError` for anything else."""
    dims = _whole_numbers(input_size)
    if dims is None or len(dims) not in (1, 3, 4) or min(dims) <= 0:
        raise ValueError(
            "input_size: expected an image side (e.g. 224), (C, H, W) or (N, C, H, W) of "
            f"positive whole numbers, got {input_size!r}"
        )
    if len(dims) == 1:
        return 3, dims[0], dims[0]
    return dims[-3], dims[-2], dims[-1]


def _whole_numbers(value: object) -> list[int] | None:
    """``[value]`` for one whole number, the list of a sequence of them, else None."""
    if isinstance(value, bool | str | bytes):
        return None
    try:
        return [operator.index(value)]
    except TypeError:
        pass
    try:
        items = list(value)  # type: ignore[call-overload]
        if any(isinstance(v, bool) for v in items):
            return None
        return [operator.index(v) for v in items]
    except TypeError:
        return None
