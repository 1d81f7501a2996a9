"""Counting parameters and multiply-adds the way the paper reports them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


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

    ``input_size`` is ``(C, H, W)`` or an image side (3 channels assumed). Pools, BN and
    activations are not counted, as in the paper's tables.
    """
    if isinstance(input_size, int):
        input_size = (3, input_size, input_size)
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
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, *input_size, dtype=param.dtype, device=param.device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total
