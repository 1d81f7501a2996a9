"""``nasnet export-model`` (ONNX / TorchScript) and ``nasnet import-weights`` (timm / Cadene).

Parsing and printing only: the weight-file format and preset inference live in
:mod:`nasnet.pretrained`, the export and its check in :mod:`nasnet.export`.
"""

from __future__ import annotations

import argparse
import os

from nasnet.cli import UserError, check_output_file, write_failed
from nasnet.data import MAX_IMAGE_SIZE
from nasnet.export import FORMATS, export_model, resolve_format, verify_export
from nasnet.pretrained import (
    SOURCES,
    PresetInferenceError,
    WeightFileError,
    WeightMappingError,
    import_weights,
    load_imported,
    save_imported,
)
from nasnet.registry import PRESETS, create_model, list_models
from nasnet.train import RUN_FILES


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export-model",
        help="export a trained run or a preset to ONNX or TorchScript",
        description="Export a model and check the export against PyTorch on random inputs "
        "of two batch sizes (max |difference| <= 1e-4 x max(1, |logits|)).",
    )
    p.add_argument("run", help="a 'nasnet train' / 'nasnet transfer' run directory, or a preset")
    p.add_argument("--format", choices=FORMATS, help="default: from the extension of -o")
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
        if weights is None:
            model = create_model(source)
        else:
            try:
                model = load_imported(weights, source)
            except WeightFileError as err:
                raise UserError(f"--weights {err}") from None
        return model.eval(), model.config.image_size
    if os.path.isdir(source):
        from nasnet.train import load_model as load_run_model

        try:
            model = load_run_model(source)
        except ValueError as err:
            raise UserError(str(err)) from None
        return model.eval(), model.config.image_size
    raise UserError(f"{source}: not a run directory nor a preset ({', '.join(list_models())})")


def run_export(args: argparse.Namespace) -> int:
    if args.weights is not None and args.run not in PRESETS:
        raise UserError(f"--weights: applies to a preset, not to the run {args.run}; leave it out")
    if args.image_size is not None and not 4 <= args.image_size <= MAX_IMAGE_SIZE:
        raise UserError(f"--image-size: must be in [4, {MAX_IMAGE_SIZE}], got {args.image_size}")
    run_files = RUN_FILES if os.path.isdir(args.run) else ()
    weights = (args.weights,) if args.weights else ()
    check_output_file(args.output, tuple(os.path.join(args.run, n) for n in run_files), weights)
    try:
        fmt = resolve_format(args.output, args.format)
    except ValueError as err:
        raise UserError(f"--format: {err}") from None
    model, size = load_model(args.run, args.weights)
    size = args.image_size or size
    try:
        export_model(model, args.output, fmt, size)
    except OSError as err:
        raise write_failed(args.output, err) from None
    print(f"wrote {args.output} ({fmt}, input Nx{model.config.in_chans}x{size}x{size})")
    if not args.no_check:
        check = verify_export(model, args.output, fmt, size)
        status = "ok" if check.ok else "MISMATCH"
        batches = " and ".join(map(str, check.batch_sizes))
        print(f"check: max |difference| {check.max_diff:.2e} over batch sizes {batches}: {status}")
        if not check.ok:
            raise UserError(
                f"the export differs from the model by {check.max_diff:.2e} "
                f"(tolerance {check.tolerance:.2e})"
            )
    return 0


def run_import(args: argparse.Namespace) -> int:
    check_output_file(args.output, inputs=(args.file,))
    try:
        name, model = import_weights(args.file, args.source, args.model, args.num_classes)
    except PresetInferenceError as err:
        raise UserError(f"{err} with --model nasnet_a_large|nasnet_a_mobile") from None
    except (WeightFileError, WeightMappingError) as err:
        raise UserError(str(err)) from None
    try:
        save_imported(model, name, args.output)
    except OSError as err:
        raise write_failed(args.output, err) from None
    print(
        f"wrote {args.output}: {name}, {model.num_classes} classes, "
        f"pool padding {model.config.pool_padding!r}"
    )
    return 0
