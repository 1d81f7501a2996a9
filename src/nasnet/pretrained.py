"""Loading published NASNet-A weights from the two common PyTorch ports.

timm's ``nasnetalarge`` and Cadene's ``nasnetalarge`` / ``nasnetamobile`` share one naming
scheme (``conv0``, ``cell_stem_K``, ``cell_K``, ``reduction_cell_K``; per cell ``conv_1x1``,
``conv_prev_1x1`` or ``path_1``/``path_2``/``final_path_bn``, ``comb_iter_K_left``/``_right``;
the classifier ``last_linear``). Block ``K``'s
left op is our ``ops.{2K}``, its right op ``ops.{2K+1}``. Nothing is downloaded: pass a
state_dict you have on disk.

Files: :func:`import_weights` reads a port's checkpoint and returns the preset it fits
(:func:`infer_preset`) with the weights loaded; :func:`save_imported` / :func:`load_imported`
write and read the converted file (``{"model": preset, "config": ..., "state_dict": ...}``,
what ``nasnet import-weights`` writes). Every file is read by :func:`read_torch_file`:
tensors and plain containers only (nothing in a file is ever run), and a damaged or foreign
file is a one-line :class:`WeightFileError` naming it and the fix.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings

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


class PresetInferenceError(WeightMappingError):
    """The preset a state_dict fits cannot be told from its number of cells."""


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


def import_weights(
    path: str, source: str, name: str | None = None, num_classes: int | None = None
) -> tuple[str, NASNet]:
    """Read a timm or Cadene NASNet-A checkpoint from ``path`` and load it into the preset
    ``name`` (default: :func:`infer_preset`) with ``num_classes`` (default: the checkpoint's).

    Returns ``(name, model)``. Raises :class:`WeightFileError` when ``path`` is not a readable
    state_dict and :class:`WeightMappingError` (naming ``path``) when it does not fit.
    """
    from nasnet.registry import create_model

    data = read_torch_file(path, _STATE_DICT, _STATE_DICT_FIX)
    if _is_imported(data):
        raise WeightFileError(
            f"{path}: is already converted (written by 'nasnet import-weights'); "
            "use it as it is (load_imported)"
        )
    state_dict = _state_dict_in(data, path)
    try:
        name = name or infer_preset(state_dict)
        model = create_model(name, num_classes=num_classes or classifier_rows(state_dict))
        load_pretrained(model, state_dict, source)
    except WeightMappingError as err:
        raise type(err)(f"{path}: {err}") from None
    return name, model


def infer_preset(state_dict: dict) -> str:
    """``nasnet_a_large`` (22 cells) or ``nasnet_a_mobile`` (16) from a port's state_dict."""
    cells = {k.split(".")[0] for k in state_dict if k.startswith(("cell_", "reduction_cell_"))}
    by_count = {22: "nasnet_a_large", 16: "nasnet_a_mobile"}
    if not cells:
        raise WeightMappingError(
            "no NASNet-A cells (cell_K, reduction_cell_K): not a timm or Cadene NASNet-A state_dict"
        )
    if len(cells) not in by_count:
        raise PresetInferenceError(
            f"found {len(cells)} cells, not 22 (nasnet_a_large) or 16 (nasnet_a_mobile); "
            "name the target preset"
        )
    return by_count[len(cells)]


def classifier_rows(state_dict: dict) -> int:
    """Rows of a port's classifier (1000 or 1001), 1000 when it has none."""
    for key in ("last_linear.weight", "classifier.weight"):
        value = state_dict.get(key)
        if isinstance(value, torch.Tensor) and value.dim() == 2:
            return int(value.shape[0])
    return 1000


# --------------------------------------------------------------------------- weight files


class WeightFileError(ValueError):
    """A weights or checkpoint file cannot be used; the message names the file and the fix."""


_STATE_DICT = "a PyTorch state_dict (.pth / .pt)"
_STATE_DICT_FIX = "pass the timm or Cadene NASNet-A checkpoint as saved by torch.save"
_IMPORTED = "a weights file written by 'nasnet import-weights'"
_IMPORTED_FIX = "convert the published checkpoint with 'nasnet import-weights' and use its output"


def read_torch_file(path: str, expected: str, fix: str) -> object:
    """``torch.load(path)`` on the CPU with ``weights_only=True``: only tensors and plain
    containers are unpickled, nothing in the file is ever run.

    Any failure (missing, a directory, empty, text, truncated, damaged, foreign or unsafe
    pickles) is a one-line :class:`WeightFileError` naming ``path``, what it should be
    (``expected``) and the ``fix``; torch's own advice (such as reloading with
    ``weights_only=False``) never reaches the message.
    """
    problem = _plainly_not_torch(path)
    if problem is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4"
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            if "GLOBAL" in str(err):  # a class or function to import: refused, not run
                problem = "holds Python objects besides tensors (refused; nothing was run)"
            elif _is_plain_pickle(path):
                problem = "is a plain Python pickle (refused; nothing was run)"
            else:
                problem = "is damaged or not a PyTorch file"
        except MemoryError:
            problem = "is damaged (it claims more memory than there is)"
        except Exception as err:
            truncated = isinstance(err, EOFError) or "central directory" in str(err)
            problem = "is truncated" if truncated else "is damaged or not a PyTorch file"
    if problem == "not found":
        raise WeightFileError(f"{path}: not found; {fix}")
    raise WeightFileError(f"{path}: {problem}, not {expected}; {fix}")


def _plainly_not_torch(path: str) -> str | None:
    """Why ``path`` is plainly no PyTorch file (missing, a directory, empty, JSON or text),
    or None when only loading it will tell."""
    if os.path.isdir(path):
        return "is a directory"
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except FileNotFoundError:
        return "not found"
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if not head:
        return "is empty"
    if head[:2] == b"PK" or head[:1] == b"\x80":  # a zip archive (torch.save) or a pickle
        return None
    text = head.decode("utf-8", errors="replace")
    if len(head) == 4096:
        text = text[:-4]  # a character cut at the end of the sample
    if "\ufffd" in text or not all(c.isprintable() or c in "\t\r\n\f" for c in text):
        return None
    return "is a JSON file" if text.lstrip()[:1] in ("{", "[") else "is a text file"


def _is_plain_pickle(path: str) -> bool:
    """A pickle that is not PyTorch's legacy format (which starts with a pickled magic
    number: protocol 2, LONG1 of 10 bytes)."""
    with open(path, "rb") as fh:
        head = fh.read(3)
    return head[:1] == b"\x80" and head != b"\x80\x02\x8a"


def load_state_dict_file(path: str) -> dict:
    """Read a ``.pth`` / ``.pt`` state_dict (or a checkpoint dict holding one under
    ``state_dict``) from disk: tensors and plain containers only, nothing is run.

    :class:`WeightFileError` naming ``path`` when it is not a readable state_dict.
    """
    return _state_dict_in(read_torch_file(path, _STATE_DICT, _STATE_DICT_FIX), path)


def _state_dict_in(data: object, path: str) -> dict:
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not data:
        kind = "an empty dict" if isinstance(data, dict) else _a(type(data).__name__)
        raise WeightFileError(f"{path}: holds {kind}, not {_STATE_DICT}; {_STATE_DICT_FIX}")
    for key, value in data.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightFileError(
                f"{path}: entry {key!r} holds {_a(type(value).__name__)}, not a tensor: "
                f"not {_STATE_DICT}; {_STATE_DICT_FIX}"
            )
    return data


def _a(noun: str) -> str:
    """``noun`` with its indefinite article: "an int", "a list"."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def save_imported(model: NASNet, name: str, path: str) -> str:
    """Save ``model`` (built from the preset ``name``) as ``nasnet import-weights`` does:
    ``{"model": name, "config": model.config.to_dict(), "state_dict": ...}``."""
    from nasnet.files import atomic_torch_save

    data = {"model": name, "config": model.config.to_dict(), "state_dict": model.state_dict()}
    atomic_torch_save(data, path)
    return path


def load_imported(path: str, name: str | None = None) -> NASNet:
    """Rebuild the model saved by :func:`save_imported` / ``nasnet import-weights``.

    With ``name``, the file must hold that preset's weights. :class:`WeightFileError` naming
    ``path`` for anything else.
    """
    from nasnet.registry import PRESETS, create_model

    if os.path.isfile(os.path.join(path, "checkpoint.pt")):
        raise WeightFileError(
            f"{path}: is a training run, not {_IMPORTED}; export the run itself, or pass a "
            "file written by 'nasnet import-weights'"
        )
    data = read_torch_file(path, _IMPORTED, _IMPORTED_FIX)
    if not _is_imported(data):
        raise WeightFileError(f"{path}: not {_IMPORTED}; {_IMPORTED_FIX}")
    assert isinstance(data, dict)
    preset, config = data["model"], data["config"]
    if preset not in PRESETS:
        raise WeightFileError(f"{path}: model: unknown preset {preset!r}; {_IMPORTED_FIX}")
    if name is not None and preset != name:
        raise WeightFileError(
            f"{path}: holds {preset} weights, not {name}; use {preset} or convert "
            f"{name} weights with 'nasnet import-weights'"
        )
    try:
        model = create_model(
            preset, num_classes=config["num_classes"], pool_padding=config["pool_padding"]
        )
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise WeightFileError(f"{path}: config: unusable ({err}); {_IMPORTED_FIX}") from None
    problem = state_dict_mismatch(model.state_dict(), data["state_dict"], ignore=("aux_head.",))
    if problem:
        raise WeightFileError(f"{path}: does not fit {preset} ({problem}); {_IMPORTED_FIX}")
    model.load_state_dict(data["state_dict"], strict=False)
    return model


def _is_imported(data: object) -> bool:
    return (
        isinstance(data, dict)
        and isinstance(data.get("model"), str)
        and isinstance(data.get("config"), dict)
        and isinstance(data.get("state_dict"), dict)
    )


def state_dict_mismatch(expected: dict, given: dict, ignore: tuple[str, ...] = ()) -> str | None:
    """What keeps ``given`` from loading strictly where ``expected`` (a model's state_dict)
    does: missing or unexpected keys, a wrong shape or a non-tensor; None when it fits. Keys
    starting with a prefix in ``ignore`` may be missing."""
    missing = [k for k in expected if k not in given and not k.startswith(ignore)]
    unexpected = [k for k in given if k not in expected]
    if missing or unexpected:
        parts = [f"missing {', '.join(map(str, missing[:3]))}"] if missing else []
        parts += [f"unexpected {', '.join(map(str, unexpected[:3]))}"] if unexpected else []
        return "; ".join(parts)
    for key, value in given.items():
        if not isinstance(value, torch.Tensor):
            return f"{key} is {_a(type(value).__name__)}, not a tensor"
        if value.shape != expected[key].shape:
            return (
                f"{key} has shape {tuple(value.shape)} in the file, "
                f"{tuple(expected[key].shape)} in the model"
            )
    return None
