"""Named model presets and ``create_model`` in timm's style.

A preset is plain data: a genotype name and the keyword arguments of
:func:`nasnet.network.build_network`. NASNet-A models are values of the builder, not
hand-written classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nasnet.genotypes import GENOTYPES
from nasnet.network import NASNet, NASNetFeatures, build_network


@dataclass(frozen=True)
class Preset:
    """A named network: genotype, builder arguments and the input it expects."""

    genotype: str
    stem: str
    cells: int
    penultimate: int
    num_classes: int
    image_size: int
    options: dict = field(default_factory=dict)
    description: str = ""


PRESETS: dict[str, Preset] = {
    "nasnet_a_cifar": Preset(
        "nasnet_a",
        "cifar",
        6,
        768,
        10,
        32,
        {"stem_multiplier": 3.0, "drop_path_keep_prob": 0.6, "bn_eps": 1e-5},
        "NASNet-A 6 @ 768, CIFAR stem, 32x32 (paper Table 1: 3.3M params)",
    ),
    "nasnet_a_mobile": Preset(
        "nasnet_a",
        "imagenet",
        4,
        1056,
        1000,
        224,
        {"stem_multiplier": 1.0, "dropout": 0.5, "bn_eps": 1e-3},
        "NASNet-A 4 @ 1056, ImageNet stem, 224x224 (paper Table 3: 5.3M params, 564M mult-adds)",
    ),
    "nasnet_a_large": Preset(
        "nasnet_a",
        "imagenet",
        6,
        4032,
        1000,
        331,
        {
            "stem_multiplier": 3.0,
            "skip_reduction_layer_input": True,
            "drop_path_keep_prob": 0.7,
            "dropout": 0.5,
            "bn_eps": 1e-3,
        },
        "NASNet-A 6 @ 4032, ImageNet stem, 331x331 (paper Table 2: 88.9M params, 23.8B mult-adds)",
    ),
}


def list_models(pattern: str = "*") -> list[str]:
    """Names of the presets matching a shell-style ``pattern``."""
    from fnmatch import fnmatch

    return sorted(name for name in PRESETS if fnmatch(name, pattern))


def create_model(
    name: str,
    num_classes: int | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    **overrides,
) -> NASNet | NASNetFeatures:
    """Build the preset ``name``; keyword arguments override the preset's builder arguments
    (e.g. ``num_classes=10``, ``image_size=256``, ``auxiliary=True``, ``cells=4``).

    With ``features_only=True`` the model is a backbone returning the feature maps at
    ``out_indices`` of its ``feature_info`` (default: strides 4-32 for ImageNet models).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(list_models())}")
    if overrides.pop("pretrained", False):  # timm's argument; nothing is ever downloaded here
        raise ValueError(
            "pretrained: weights are never downloaded; build the model, then load a local file "
            "with nasnet.load_pretrained (or 'nasnet import-weights')"
        )
    preset = PRESETS[name]
    kwargs: dict = {
        "stem": preset.stem,
        "cells": preset.cells,
        "num_classes": preset.num_classes if num_classes is None else num_classes,
        "image_size": preset.image_size,
        **preset.options,
    }
    if "filters" not in overrides:
        kwargs["penultimate"] = preset.penultimate
    kwargs.update(overrides)
    model = build_network(GENOTYPES[preset.genotype], **kwargs)
    return NASNetFeatures(model, out_indices) if features_only else model
