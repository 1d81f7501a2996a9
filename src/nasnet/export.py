"""Export a network to ONNX or TorchScript and check the export against the PyTorch model.

Exports take normalized images of a fixed spatial size (the padding of strided ops is
resolved for it) and a dynamic batch size. :func:`verify_export` compares an export with the
model and holds the difference to ``1e-4 x max(1, |logits|)``.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from nasnet.files import atomic_write_bytes
from nasnet.runtime import module_mode

FORMATS = ("onnx", "torchscript")


def _example(model: nn.Module, image_size: int, batch: int = 2) -> torch.Tensor:
    in_chans = model.config.in_chans if hasattr(model, "config") else 3
    return torch.randn(batch, in_chans, image_size, image_size)


def export_onnx(model: nn.Module, path: str, image_size: int, opset: int = 17) -> str:
    """Write ``model`` (in eval mode; its mode is restored) as ONNX with input ``images`` and
    output ``logits``."""
    buffer = io.BytesIO()  # then one atomic write: a full disk leaves no partial file
    with module_mode(model, False), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about fixed spatial sizes
        torch.onnx.export(
            model,
            (_example(model, image_size),),
            buffer,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    atomic_write_bytes(path, buffer.getvalue())
    return path


def export_torchscript(model: nn.Module, path: str, image_size: int) -> str:
    """Trace ``model`` (in eval mode; its mode is restored) to TorchScript and save it,
    without the aux head."""
    with module_mode(model, False), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        inference = _without_aux_head(model)
        traced = torch.jit.trace(inference, _example(inference, image_size))
    buffer = io.BytesIO()  # torch.jit.save aborts the process when the disk fills
    torch.jit.save(traced, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _without_aux_head(model: nn.Module) -> nn.Module:
    """``model`` without its auxiliary head, which only training uses: a shallow copy sharing
    every other module and weight (a traced module keeps every submodule's parameters, used or
    not; an ONNX export already leaves unused ones out)."""
    if getattr(model, "aux_head", None) is None:
        return model
    inference = copy.copy(model)
    inference._modules = dict(model._modules)  # its own table: ``model`` keeps its aux head
    inference.aux_head = None
    return inference


#: File extensions of each format (the first is the usual one).
EXTENSIONS = {"onnx": (".onnx",), "torchscript": (".pt", ".pth", ".ts")}


def resolve_format(path: str, fmt: str | None = None) -> str:
    """The format to write ``path`` in: ``fmt``, or the one its extension names. A ``fmt``
    that contradicts the extension is a :class:`ValueError` (a ``model.onnx`` holding
    TorchScript would fail in whatever reads it); so is no ``fmt`` and an unknown extension."""
    suffix = os.path.splitext(path)[1].lower()
    named = next((f for f, suffixes in EXTENSIONS.items() if suffix in suffixes), None)
    known = "; ".join(f"{', '.join(s)}: {f}" for f, s in EXTENSIONS.items())
    if fmt is None and named is None:
        raise ValueError(f"cannot tell the format of {path} from its extension ({known})")
    if fmt is not None and named is not None and fmt != named:
        raise ValueError(
            f"{fmt} does not match the extension of {path} ({named}); name the file "
            f"{EXTENSIONS[fmt][0]} or leave the format out"
        )
    return fmt or named


def export_model(model: nn.Module, path: str, fmt: str, image_size: int) -> str:
    """Write ``model`` to ``path`` as ``fmt`` (``onnx`` or ``torchscript``)."""
    if fmt not in FORMATS:
        raise ValueError(f"format: unknown {fmt!r}; choose onnx or torchscript")
    if fmt == "onnx":
        return export_onnx(model, path, image_size)
    return export_torchscript(model, path, image_size)


#: An export passes when max |difference| <= RELATIVE_TOLERANCE x max(1, max |logits|).
RELATIVE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportCheck:
    """The outcome of :func:`verify_export`: the largest |difference| between the export and
    the model, the tolerance it is held to, and whether it is within it."""

    max_diff: float
    tolerance: float
    ok: bool
    batch_sizes: tuple[int, ...]


def check_export(
    model: nn.Module, path: str, fmt: str, image_size: int, batch_sizes=(1, 3), seed: int = 0
) -> float:
    """Max |difference| between the export and ``model`` over inputs of several batch sizes."""
    return _compare(model, path, fmt, image_size, batch_sizes, seed)[0]


def verify_export(
    model: nn.Module, path: str, fmt: str, image_size: int, batch_sizes=(1, 3), seed: int = 0
) -> ExportCheck:
    """Compare the export at ``path`` with ``model`` on seeded random inputs of each batch
    size; the tolerance is ``1e-4 x max(1, max |logits|)`` over those same inputs."""
    diff, scale = _compare(model, path, fmt, image_size, batch_sizes, seed)
    tolerance = RELATIVE_TOLERANCE * max(1.0, scale)
    return ExportCheck(diff, tolerance, diff <= tolerance, tuple(batch_sizes))


@torch.no_grad()
def _compare(
    model: nn.Module, path: str, fmt: str, image_size: int, batch_sizes, seed: int
) -> tuple[float, float]:
    """(max |export - model|, max |model logits|) over one input per batch size."""
    if fmt not in FORMATS:
        raise ValueError(f"format: unknown {fmt!r}; choose onnx or torchscript")
    with module_mode(model, False):
        return _compare_in_eval(model, path, fmt, image_size, batch_sizes, seed)


def _compare_in_eval(
    model: nn.Module, path: str, fmt: str, image_size: int, batch_sizes, seed: int
) -> tuple[float, float]:
    generator = torch.Generator().manual_seed(seed)
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

        def run(x):
            return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    else:
        loaded = torch.jit.load(path)

        def run(x):
            return loaded(x)

    worst = scale = 0.0
    for batch in batch_sizes:
        x = _example(model, image_size, batch).normal_(generator=generator)
        logits = model(x)
        worst = max(worst, float((run(x) - logits).abs().max()))
        scale = max(scale, float(logits.abs().max()))
    return worst, scale
