"""``nasnet export-model`` (ONNX / TorchScript) and ``nasnet import-weights`` (timm / Cadene)."""

from __future__ import annotations

import argparse
import os

import torch

from nasnet.cli import UserError
from nasnet.export import FORMATS, check_export, export_model
from nasnet.pretrained import SOURCES, WeightMappingError, load_pretrained, load_state_dict_file
from nasnet.registry import PRESETS, create_model, list_models


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export-model",
        help="export a trained run or a preset to ONNX or TorchScript",
        description="Export a model and check the export against PyTorch on random inputs "
        "of two batch sizes (max |difference| <= 1e-4 x max(1, |logits|)).",
    )
    p.add_argument("run", help="a 'nasnet train' / 'nasnet transfer' run directory, or a preset")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("-o", "--output", required=True, help="file to write (.onnx / .pt)")
    p.add_argument("--image-size", type=int, help="input side (default: the model's)")
    p.add_argument("--weights", help="for a preset: a file written by 'nasnet import-weights'")
    p.add_argument("--no-check", action="store_true", help="skip the comparison")
    p.set_defaults(func=run_export)

    p = subparsers.add_parser(
        "import-weights",
        help="map a timm or Cadene NASNet-A state_dict onto nasnet_a_large / nasnet_a_mobile",
        description="Rename the parameters of a published NASNet-A checkpoint (a local file) "
        "to this package's names and save them with the preset they fit.",
    )
    p.add_argument("file", help="the source state_dict (.pth / .pt)")
    p.add_argument("--from", dest="source", choices=SOURCES, required=True)
    p.add_argument(
        "--model",
        choices=("nasnet_a_large", "nasnet_a_mobile"),
        help="target preset (default: inferred from the number of cells)",
    )
    p.add_argument(
        "--num-classes",
        type=int,
        choices=(1000, 1001),
        help="1000 drops the background row of a 1001-class checkpoint "
        "(default: as in the checkpoint)",
    )
    p.add_argument("-o", "--output", required=True, help="where to write the mapped weights")
    p.set_defaults(func=run_import)


def load_model(source: str, weights: str | None = None):
    """A run directory or a preset name -> (model in eval mode, image size)."""
    if source in PRESETS:
        model = create_model(source) if weights is None else load_imported(weights, source)
        return model.eval(), model.config.image_size
    if os.path.isdir(source):
        from nasnet.train import load_model as load_run_model

        model = load_run_model(source)
        return model.eval(), model.config.image_size
    raise UserError(f"{source}: not a run directory nor a preset ({', '.join(list_models())})")


def run_export(args: argparse.Namespace) -> int:
    model, size = load_model(args.run, args.weights)
    size = args.image_size or size
    export_model(model, args.output, args.format, size)
    print(f"wrote {args.output} ({args.format}, input Nx{model.config.in_chans}x{size}x{size})")
    if not args.no_check:
        diff = check_export(model, args.output, args.format, size)
        with torch.no_grad():
            scale = max(
                1.0, float(model(torch.randn(2, model.config.in_chans, size, size)).abs().max())
            )
        status = "ok" if diff <= 1e-4 * scale else "MISMATCH"
        print(f"check: max |difference| {diff:.2e} over batch sizes 1 and 3: {status}")
        if status != "ok":
            raise UserError(f"the export differs from the model by {diff:.2e}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    try:
        state_dict = load_state_dict_file(args.file)
    except (OSError, RuntimeError) as err:
        raise UserError(f"{args.file}: cannot read a state_dict ({err})") from None
    name = args.model or _infer_preset(state_dict)
    model = create_model(name, num_classes=args.num_classes or _classifier_rows(state_dict))
    try:
        load_pretrained(model, state_dict, args.source)
    except WeightMappingError as err:
        raise UserError(str(err)) from None
    torch.save(
        {"model": name, "config": model.config.to_dict(), "state_dict": model.state_dict()},
        args.output,
    )
    print(
        f"wrote {args.output}: {name}, {model.num_classes} classes, "
        f"pool padding {model.config.pool_padding!r}"
    )
    return 0


def load_imported(path: str, name: str | None = None):
    """Rebuild the model saved by ``nasnet import-weights``."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or "state_dict" not in data or "model" not in data:
        raise UserError(f"{path}: not a file written by 'nasnet import-weights'")
    if name is not None and data["model"] != name:
        raise UserError(f"{path}: holds {data['model']} weights, not {name}")
    config = data["config"]
    model = create_model(
        data["model"], num_classes=config["num_classes"], pool_padding=config["pool_padding"]
    )
    model.load_state_dict(data["state_dict"], strict=False)
    return model


def _infer_preset(state_dict: dict) -> str:
    cells = {k.split(".")[0] for k in state_dict if k.startswith(("cell_", "reduction_cell_"))}
    by_count = {22: "nasnet_a_large", 16: "nasnet_a_mobile"}
    if len(cells) not in by_count:
        raise UserError(f"found {len(cells)} cells; pass --model nasnet_a_large|nasnet_a_mobile")
    return by_count[len(cells)]


def _classifier_rows(state_dict: dict) -> int:
    for key in ("last_linear.weight", "classifier.weight"):
        if key in state_dict:
            return int(state_dict[key].shape[0])
    return 1000
