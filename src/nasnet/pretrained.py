"""Loading published NASNet-A weights from the two common PyTorch ports.

timm's ``nasnetalarge`` and Cadene's ``nasnetalarge`` / ``nasnetamobile`` share one naming
scheme (``conv0``, ``cell_stem_K``, ``cell_K``, ``reduction_cell_K``; per cell ``conv_1x1``,
``conv_prev_1x1`` or ``path_1``/``path_2``/``final_path_bn``, ``comb_iter_K_left``/``_right``;
the classifier ``last_linear``). Block ``K``'s
left op is our ``ops.{2K}``, its right op ``ops.{2K+1}``. Nothing is downloaded: pass a
state_dict you have on disk.
"""

from __future__ import annotations

import re

import torch

from nasnet.network import NASNet

SOURCES = ("timm", "cadene")

_CLASSIFIERS = ("last_linear.", "classifier.")
_CELL = re.compile(r"^(cell_stem_(\d+)|cell_(\d+)|reduction_cell_(\d+))\.(.*)$")

# Parameter paths inside one branch or projection: port name -> ours.
_SEPARABLE = {
    "separable_1.depthwise_conv2d": "1.0",
    "separable_1.pointwise_conv2d": "1.1",
    "bn_sep_1": "2",
    "separable_2.depthwise_conv2d": "4.0",
    "separable_2.pointwise_conv2d": "4.1",
    "bn_sep_2": "5",
}


class WeightMappingError(ValueError):
    """A state_dict does not fit the model it is loaded into."""


def map_state_dict(model: NASNet, state_dict: dict, source: str = "timm") -> dict:
    """Rename a port's state_dict to this package's parameter names (no copying)."""
    if source not in SOURCES:
        raise WeightMappingError(f"source: unknown {source!r}; choose 'timm' or 'cadene'")
    cell_names = _ordered_cell_names(state_dict, model.config.cells)
    if len(cell_names) != len(model.cells):
        raise WeightMappingError(
            f"the state_dict has {len(cell_names)} cells, the model {len(model.cells)}; "
            "build the matching preset (nasnet_a_large or nasnet_a_mobile)"
        )
    cell_index = {name: i for i, name in enumerate(cell_names)}
    mapped = {}
    for key, value in state_dict.items():
        if key.startswith("conv0."):
            ours = "stem." + _conv_bn(key[len("conv0.") :], key, first=0)
        elif key.startswith(_CLASSIFIERS):
            ours = "classifier." + key.split(".", 1)[1]
        else:
            match = _CELL.match(key)
            if not match:
                raise WeightMappingError(f"{key}: not a NASNet-A {source} parameter")
            ours = f"cells.{cell_index[match.group(1)]}." + _map_in_cell(match.group(5), key)
        mapped[ours] = value
    return mapped


def _ordered_cell_names(state_dict: dict, cells_per_stage: int) -> list[str]:
    """Cell prefixes in forward order: stem cells, then normal cells with reduction ``r``
    after the ``(r + 1) * N``-th normal cell (Cadene's mobile numbering skips indices)."""
    stems, normals, reductions = {}, {}, {}
    for key in state_dict:
        match = _CELL.match(key)
        if match:
            name, stem, normal, reduction = match.group(1, 2, 3, 4)
            if stem is not None:
                stems[name] = int(stem)
            elif normal is not None:
                normals[name] = int(normal)
            else:
                reductions[int(reduction)] = name
    ordered = sorted(stems, key=stems.get)
    for position, name in enumerate(sorted(normals, key=normals.get)):
        if position and position % cells_per_stage == 0:
            ordered.append(reductions.pop(position // cells_per_stage - 1, "missing_reduction"))
        ordered.append(name)
    return ordered + [reductions[r] for r in sorted(reductions)]


def _map_in_cell(rest: str, key: str) -> str:
    head, _, tail = rest.partition(".")
    if head == "conv_1x1":
        return "pre_i." + _conv_bn(tail, key)
    if head == "conv_prev_1x1":
        return "pre_prev." + _conv_bn(tail, key)
    if head in ("path_1", "path_2"):
        return f"pre_prev.1.{head}." + tail.split(".", 1)[1]  # path_1.conv.weight
    if head == "final_path_bn":
        return "pre_prev.1.bn." + tail
    match = re.match(r"comb_iter_(\d)_(left|right)$", head)
    if match:
        op = 2 * int(match.group(1)) + (match.group(2) == "right")
        for port, ours in _SEPARABLE.items():
            if tail.startswith(port + "."):
                return f"ops.{op}.{ours}." + tail[len(port) + 1 :]
    raise WeightMappingError(f"{key}: no matching layer in the NASNet-A cell")


def _conv_bn(tail: str, key: str, first: int = 1) -> str:
    """``conv.X`` / ``bn.X`` -> ``{first}.X`` / ``{first + 1}.X`` (ReLU at index 0 in cells)."""
    part, _, param = tail.partition(".")
    if part == "conv":
        return f"{first}." + param
    if part == "bn":
        return f"{first + 1}." + param
    raise WeightMappingError(f"{key}: expected a conv or bn parameter")


def load_pretrained(
    model: NASNet, state_dict: dict, source: str = "timm", match_source: bool = True
) -> NASNet:
    """Load a timm or Cadene NASNet-A state_dict into ``model`` (strict).

    A 1001-class checkpoint (index 0 = background) loads into a 1000-class model by
    dropping the background row, as Cadene's ``imagenet`` setting does. With
    ``match_source`` the model's pooling follows the port (``pool_padding="timm"`` for timm,
    TensorFlow's for Cadene), so its logits equal the source model's.
    """
    mapped = map_state_dict(model, state_dict, source)
    if match_source:
        model.set_pool_padding("timm" if source == "timm" else "tf")
    weight = mapped.get("classifier.weight")
    if weight is not None and weight.shape[0] == model.num_classes + 1:
        mapped["classifier.weight"] = weight[1:]
        mapped["classifier.bias"] = mapped["classifier.bias"][1:]
    own = model.state_dict()
    for name, value in mapped.items():
        if name in own and own[name].shape != value.shape:
            raise WeightMappingError(
                f"{name}: shape {tuple(value.shape)} in the checkpoint, "
                f"{tuple(own[name].shape)} in the model; check the preset and num_classes"
            )
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    missing = [m for m in missing if not m.startswith("aux_head.")]
    if missing or unexpected:
        raise WeightMappingError(
            f"weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model


def load_state_dict_file(path: str) -> dict:
    """Read a ``.pth`` / ``.pt`` state_dict (or a checkpoint dict holding one) from disk."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise WeightMappingError(f"{path}: not a state_dict")
    return data
