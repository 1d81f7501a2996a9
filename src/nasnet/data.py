"""Datasets for child training, each with a fixed, seeded train / validation / test split.

A dataset is named by a spec string (:func:`load_dataset`):

* ``digits`` - scikit-learn's bundled 8x8 handwritten digits (1,797 images, works offline),
  upsampled to 16x16 by default (``image_size`` changes that). Split: 359 test, 180 validation,
  the rest (1,258) train.
* ``cifar10:PATH`` / ``cifar100:PATH`` - the "python version" archive (``cifar-10-python.tar.gz``,
  ``cifar-100-python.tar.gz``), its extracted folder, or a folder holding either. The official test
  set is the test split; 5,000 training images are held out for validation (as the paper holds out
  5,000 images for the controller's reward). Nothing is ever downloaded.
* ``folder:PATH`` - one subfolder per class holding JPEG/PNG files, resized to ``image_size``
  (default 32). If ``PATH`` has ``train/`` and ``test/`` (or ``val/``) subfolders they are used as
  the splits; otherwise 10 % of each class is held out for validation and 10 % for test.
* ``synthetic`` or ``synthetic:key=value,...`` - class templates plus noise, learnable, for tests
  and benchmarks. Keys: ``classes``, ``channels``, ``size``, ``train``, ``val``, ``test``, ``seed``.

Images are kept as uint8 tensors of shape ``(N, C, H, W)``; :class:`Augment` turns a batch into
normalised float tensors (random crop with zero padding, horizontal flip, Cutout) on the fly.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import io
import os
import pickle
import tarfile
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from nasnet.memory import available_bytes, gib

#: Fixed seed of every split, so that the same spec always gives the same split.
SPLIT_SEED = 20180101

#: Images held out of CIFAR's training set for validation (the paper's 5,000).
CIFAR_VAL_SIZE = 5000

#: Images in CIFAR-10's and CIFAR-100's training sets.
CIFAR_TRAIN_IMAGES = 50_000

#: Images in scikit-learn's digits.
DIGITS_IMAGES = 1797

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

#: Folders an archive tool or an OS adds beside the class folders, never classes.
NOT_CLASSES = ("__MACOSX",)


class DatasetError(ValueError):
    """A dataset spec or file is unusable; the message names the problem and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))  # always one line


@dataclass
class Dataset:
    """Train / validation / test images (uint8 ``N x C x H x W``) and int64 labels."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool = True
    classes: tuple[str, ...] | None = None

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[2])

    @property
    def crop_padding(self) -> int:
        """Padding of the random crop: 4 px at 32x32, scaled with the image size."""
        return max(1, self.image_size // 8)

    @functools.cached_property
    def digest(self) -> str:
        """A fingerprint of the splits: their sizes, labels and each image's pixel sum. A run
        records it, so that resuming or evaluating on data that changed (an image added to a
        folder reshuffles its splits) is refused rather than silently measured."""
        h = hashlib.blake2b(digest_size=16)
        for name in ("train", "val", "test"):
            x, y = self.split(name)
            h.update(f"{name}:{tuple(x.shape)}".encode())
            h.update(y.numpy().tobytes())
            h.update(x.reshape(len(x), -1).sum(1, dtype=torch.int64).numpy().tobytes())
        return h.hexdigest()

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` of ``train``, ``val`` or ``test``."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; choose train, val or test")
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")

    @property
    def shape(self) -> DatasetShape:
        return DatasetShape(self.channels, self.image_size, self.num_classes, len(self.train_y))

    def summary(self) -> str:
        return (
            f"{self.name}: {len(self.train_y)} train / {len(self.val_y)} val / "
            f"{len(self.test_y)} test, {self.num_classes} classes, "
            f"{self.channels}x{self.image_size}x{self.image_size}"
        )


@dataclass(frozen=True)
class DatasetShape:
    """What sizes a network for a dataset, known from its spec without reading an image."""

    channels: int
    image_size: int
    num_classes: int
    #: Training images, where known without listing files (None for folder datasets).
    train_images: int | None = None


# --------------------------------------------------------------------------- spec parsing


def load_dataset(spec: str, image_size: int | None = None) -> Dataset:
    """Parse ``spec`` (``digits``, ``cifar10:PATH``, ``cifar100:PATH``, ``folder:PATH``,
    ``synthetic[:k=v,...]``) and load the dataset; ``image_size`` resizes where allowed."""
    loader, arg = _parse_spec(spec)
    dataset = loader(arg, image_size, False)
    assert isinstance(dataset, Dataset)
    return dataset


def check_dataset_spec(spec: str, image_size: int | None = None) -> DatasetShape:
    """The shape of the dataset ``spec`` names, or :class:`DatasetError` if it names none:
    unknown kind, bad options, a missing path. Cheap: no image is read (a damaged file is
    found by loading)."""
    loader, arg = _parse_spec(spec)
    shape = loader(arg, image_size, True)
    assert isinstance(shape, DatasetShape)
    return shape


#: Dataset kinds whose argument is a path.
_PATH_KINDS = ("cifar10", "cifar100", "folder")


def absolute_spec(spec: str) -> str:
    """``spec`` with its path made absolute (``cifar10:``, ``cifar100:``, ``folder:``): a saved
    run then finds its data from any working directory. Other specs are returned unchanged."""
    kind, _, arg = spec.partition(":")
    if kind.strip().lower() not in _PATH_KINDS or not arg:
        return spec
    return f"{kind}:{os.path.abspath(os.path.expanduser(arg))}"


def given_spec(given: str, saved: str | None) -> str:
    """The dataset spec to record for ``given`` when a run, transfer or search saved ``saved``:
    ``saved`` itself when both name the same data (``folder:f3``, ``folder:./f3/`` and
    ``folder:/abs/f3`` do, from the folder holding ``f3``), so that runs saved with a relative
    path resume; else ``given`` made absolute."""
    absolute = absolute_spec(given)
    return saved if saved is not None and absolute_spec(saved) == absolute else absolute


def _parse_spec(spec: str) -> tuple[_SpecLoader, str]:
    kind, _, arg = spec.partition(":")
    loader = _LOADERS.get(kind.strip().lower())
    if loader is None:
        raise DatasetError(
            f"unknown dataset {spec!r}; use digits, cifar10:PATH, cifar100:PATH, folder:PATH "
            "or synthetic"
        )
    return loader, os.path.expanduser(arg) if arg else arg


def _load_digits_spec(arg: str, image_size: int | None, check_only: bool) -> _Loaded:
    if arg:
        raise DatasetError(f"digits takes no argument, got 'digits:{arg}'; use 'digits'")
    if check_only:
        n_val, n_test = _digits_holdout(DIGITS_IMAGES)
        return DatasetShape(1, image_size or 16, 10, DIGITS_IMAGES - n_val - n_test)
    return load_digits(image_size or 16)


def _load_cifar_spec(classes: int) -> _SpecLoader:
    def load(arg: str, image_size: int | None, check_only: bool) -> _Loaded:
        layout = _CIFAR[classes]
        if not arg:
            raise DatasetError(
                f"cifar{classes} needs a path: cifar{classes}:PATH to "
                f"{layout.archive} or its extracted folder (download from {CIFAR_URL})"
            )
        if not os.path.exists(arg):
            raise DatasetError(
                f"{arg}: no such file or folder; pass the path of {layout.archive} or of "
                f"its extracted folder {layout.folder} (download from {CIFAR_URL})"
            )
        if image_size not in (None, 32):
            raise DatasetError(f"cifar{classes} images are 32x32; drop the image size option")
        if check_only:
            return DatasetShape(3, 32, classes, CIFAR_TRAIN_IMAGES - CIFAR_VAL_SIZE)
        return load_cifar(arg, classes)

    return load


def _load_folder_spec(arg: str, image_size: int | None, check_only: bool) -> _Loaded:
    if not arg:
        raise DatasetError("folder needs a path: folder:PATH with one subfolder per class")
    if check_only:
        _require_class_folder(arg)
        split = _split_folders(arg)
        classes = _class_names(split["train"] if split else arg)
        return DatasetShape(3, image_size or 32, len(classes))
    return load_folder(arg, image_size or 32)


def _require_class_folder(path: str) -> None:
    if not os.path.isdir(path):
        what = "is a file, not a folder" if os.path.exists(path) else "no such folder"
        raise DatasetError(f"{path}: {what}; folder:PATH needs one subfolder per class")


def _load_synthetic_spec(arg: str, image_size: int | None, check_only: bool) -> _Loaded:
    options: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in arg.split(","))):
        key, sep, value = item.partition("=")
        value = value.strip()
        if not sep or key not in _SYNTHETIC_KEYS or not (value.isascii() and value.isdigit()):
            raise DatasetError(
                f"synthetic: bad option {item!r}; use key=integer with keys "
                f"{', '.join(_SYNTHETIC_KEYS)}"
            )
        options[key] = int(value)
    if image_size is not None and options.get("size", image_size) != image_size:
        raise DatasetError(
            f"synthetic: size={options['size']} but an image size of {image_size}; give one"
        )
    if image_size is not None:
        options["size"] = image_size
    defaults = inspect.signature(make_synthetic).parameters
    options = {key: options.get(key, p.default) for key, p in defaults.items()}
    _check_synthetic_size(options)
    if check_only:
        return DatasetShape(
            options["channels"], options["size"], options["classes"], options["train"]
        )
    return make_synthetic(**options)


def _check_synthetic_size(options: dict[str, int]) -> None:
    """Refuse sizes that would allocate absurd amounts of memory (``options``: every
    argument of :func:`make_synthetic`)."""
    if options["seed"] >= 2**63:
        raise DatasetError(
            f"synthetic: seed={options['seed']} is not below 2**63; use a smaller one"
        )
    if not 4 <= options["size"] <= MAX_IMAGE_SIZE:
        raise DatasetError(f"synthetic: size={options['size']} is not in [4, {MAX_IMAGE_SIZE}]")
    n = options["train"] + options["val"] + options["test"]
    pixels = (
        (n + 4 * options["classes"]) * options["channels"] * options["size"] ** 2
    )  # + templates
    if pixels > MAX_SYNTHETIC_BYTES:
        raise DatasetError(
            f"synthetic: {n} images of side {options['size']} need "
            f"{pixels / 2**30:.1f} GiB; keep it under {MAX_SYNTHETIC_BYTES / 2**30:.0f} GiB "
            f"and the side at most {MAX_IMAGE_SIZE}"
        )


_Loaded = Dataset | DatasetShape
_SpecLoader = Callable[[str, "int | None", bool], _Loaded]

#: Largest image side any loader produces.
MAX_IMAGE_SIZE = 1024

#: Largest source image a folder dataset decodes (Pillow's own bomb limit is about 89 M).
MAX_SOURCE_PIXELS = 50_000_000

#: Largest synthetic dataset (bytes of uint8 pixels; the float noise needs 4x more briefly).
MAX_SYNTHETIC_BYTES = 2 * 2**30


_SYNTHETIC_KEYS = ("classes", "channels", "size", "train", "val", "test", "seed")

_LOADERS: dict[str, _SpecLoader] = {
    "digits": _load_digits_spec,
    "cifar10": _load_cifar_spec(10),
    "cifar100": _load_cifar_spec(100),
    "folder": _load_folder_spec,
    "synthetic": _load_synthetic_spec,
}


# --------------------------------------------------------------------------- helpers


def _permutation(n: int, seed: int = SPLIT_SEED) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in units of the 0..1 range."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    per_chunk = max(1, 2**25 // images[0].numel())  # float64 copies of at most 256 MiB
    for chunk in images.split(per_chunk):
        values = chunk.to(torch.float64).div_(255.0)
        total += values.sum(dim=(0, 2, 3))
        squares += values.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(max(s, 1e-3) for s in std.tolist())


def _resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize, a chunk of images at a time: the float copy stays under 256 MiB."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = torch.empty(len(images), images.shape[1], size, size, dtype=torch.uint8)
    chunk = max(1, 2**28 // (4 * images.shape[1] * size * size))
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].float()
        scaled = F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False)
        out[start : start + chunk] = scaled.round_().clamp_(0, 255)
    return out


def _check_fits_in_memory(name: str, images: int, channels: int, size: int) -> None:
    """Refuse a dataset whose uint8 pixels would not fit in the memory this machine has free."""
    need, available = images * channels * size * size, available_bytes("cpu")
    if available is not None and need > available:
        raise DatasetError(
            f"{name}: {images} images of {channels}x{size}x{size} need {gib(need)} of memory, "
            f"more than the {gib(available)} available; use a smaller image size"
        )


def _holdout_split(
    x: torch.Tensor, y: torch.Tensor, n_val: int, n_test: int
) -> tuple[torch.Tensor, ...]:
    """Shuffle with the fixed split seed and cut off ``n_test`` then ``n_val`` examples."""
    order = _permutation(len(y))
    x, y = x[order], y[order]
    test, val, train = n_test, n_test + n_val, slice(n_test + n_val, None)
    return x[train], y[train], x[test:val], y[test:val], x[:test], y[:test]


def _build(name: str, parts: tuple[torch.Tensor, ...], num_classes: int, **kw) -> Dataset:
    train_x, train_y, val_x, val_y, test_x, test_y = parts
    if min(len(train_y), len(val_y), len(test_y)) == 0:
        raise DatasetError(
            f"{name}: too few images for a train / val / test split ({len(train_y)} / "
            f"{len(val_y)} / {len(test_y)}); add images"
        )
    mean, std = _channel_stats(train_x)
    return Dataset(
        name, train_x.contiguous(), train_y.long(), val_x.contiguous(), val_y.long(),
        test_x.contiguous(), test_y.long(), num_classes, mean, std, **kw,
    )  # fmt: skip


# --------------------------------------------------------------------------- digits


def load_digits(image_size: int = 16) -> Dataset:
    """scikit-learn's 8x8 digits, scaled to 0..255 and resized (bilinear) to ``image_size``.

    16x16 is the default: at 8x8 the CIFAR stem's two reductions leave 2x2 feature maps,
    while 16x16 still trains a small NASNet-A child in about a minute on two cores.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    _check_fits_in_memory("digits", DIGITS_IMAGES, 1, image_size)
    bunch = sklearn_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    x = _resize_uint8(torch.from_numpy(pixels).unsqueeze(1), image_size)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    n_val, n_test = _digits_holdout(len(y))
    parts = _holdout_split(x, y, n_val=n_val, n_test=n_test)
    return _build("digits", parts, 10, flip=False, classes=tuple(str(d) for d in range(10)))


def _digits_holdout(images: int) -> tuple[int, int]:
    """``(validation, test)`` images held out of digits: 10 % and 20 %."""
    return round(0.1 * images), round(0.2 * images)


# --------------------------------------------------------------------------- synthetic


def make_synthetic(
    classes: int = 10,
    channels: int = 3,
    size: int = 32,
    train: int = 512,
    val: int = 128,
    test: int = 128,
    seed: int = 0,
) -> Dataset:
    """Random data: each class is a smooth random template, each image template + noise."""
    if min(classes, channels, size, train, val, test) < 1:
        raise DatasetError("synthetic: classes, channels, size, train, val, test must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(classes, channels, 4, 4, generator=gen) * 160 + 48
    templates = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    n = train + val + test
    labels = torch.randint(classes, (n,), generator=gen)
    noise = torch.randn(n, channels, size, size, generator=gen) * 40
    x = (templates[labels] + noise).round_().clamp_(0, 255).to(torch.uint8)
    parts = (x[:train], labels[:train], x[train : train + val], labels[train : train + val])
    return _build("synthetic", (*parts, x[train + val :], labels[train + val :]), classes)


# --------------------------------------------------------------------------- CIFAR


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batches hold: dicts, lists, bytes and numpy arrays."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # how protocol 5 stores an array's buffer
        ("numpy._core.numeric", "_frombuffer"),
        ("__builtin__", "bytes"),  # protocol 2 from Python 2 / numpy: an empty array's data
        ("builtins", "bytes"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core") :]
        return super().find_class(module, name)


@dataclass(frozen=True)
class _CifarLayout:
    archive: str
    folder: str
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: str
    names_key: str


_CIFAR = {
    10: _CifarLayout(
        "cifar-10-python.tar.gz", "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
        "labels", "label_names",
    ),
    100: _CifarLayout(
        "cifar-100-python.tar.gz", "cifar-100-python", ("train",), "test", "meta",
        "fine_labels", "fine_label_names",
    ),
}  # fmt: skip


def load_cifar(path: str, classes: int = 10) -> Dataset:
    """CIFAR-10/100 from the python-version archive, its folder, or a folder holding either."""
    layout, what = _CIFAR[classes], f"cifar{classes}"
    members = _read_cifar_members(path, layout, what)
    train = [_cifar_batch(members[n], n, layout.label_key, path, what) for n in layout.train]
    test_x, test_y = _cifar_batch(members[layout.test], layout.test, layout.label_key, path, what)
    x = torch.cat([b[0] for b in train])
    y = torch.cat([b[1] for b in train])
    if int(max(y.max(), test_y.max())) >= classes or int(min(y.min(), test_y.min())) < 0:
        raise DatasetError(f"{path}: labels outside 0..{classes - 1}; is this {what}?")
    order = _permutation(len(y))
    x, y = x[order], y[order]
    n_val = min(CIFAR_VAL_SIZE, max(1, len(y) // 10))
    parts = (x[n_val:], y[n_val:], x[:n_val], y[:n_val], test_x, test_y)
    names = _cifar_class_names(members[layout.meta], layout.names_key, classes)
    return _build(what, parts, classes, classes=names)


def _read_cifar_members(path: str, layout: _CifarLayout, what: str) -> dict[str, bytes]:
    names = [*layout.train, layout.test, layout.meta]
    hint = f"pass the path of {layout.archive} or of its extracted folder {layout.folder}"
    if not os.path.exists(path):
        raise DatasetError(f"{path}: no such file or folder; {hint} (download from {CIFAR_URL})")
    if not os.path.isdir(path):
        return _read_cifar_tar(path, names, what, hint)
    for base in (path, os.path.join(path, layout.folder)):
        if all(os.path.isfile(os.path.join(base, n)) for n in names):
            return {n: _read_bytes(os.path.join(base, n)) for n in names}
    if os.path.isfile(os.path.join(path, layout.archive)):
        return _read_cifar_tar(os.path.join(path, layout.archive), names, what, hint)
    inner = os.path.join(path, layout.folder)
    base = inner if os.path.isdir(inner) else path
    missing = next(n for n in names if not os.path.isfile(os.path.join(base, n)))
    raise DatasetError(f"{base}: not a {what} folder (no {missing}); {hint}")


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _read_cifar_tar(path: str, names: list[str], what: str, hint: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = os.path.basename(member.name)
                if member.isfile() and base in names and base not in found:
                    found[base] = tar.extractfile(member).read()
            while tar.fileobj.read(1 << 20):  # to the end: gzip checks its CRC only there
                pass
    except (tarfile.ReadError, EOFError, zlib.error, OSError) as err:
        if not _looks_compressed(path):
            raise DatasetError(f"{path}: not a tar archive; {hint}") from None
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DatasetError(
            f"{path}: truncated or corrupt archive ({detail}); {hint} (download it again)"
        ) from None
    missing = [n for n in names if n not in found]
    if missing:
        raise DatasetError(f"{path}: not a {what} archive (no {missing[0]} inside); {hint}")
    return found


def _looks_compressed(path: str) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(262)
    return head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[257:262] == b"ustar"


def _unpickle(blob: bytes, name: str, path: str, what: str) -> dict:
    try:
        data = _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as err:
        raise DatasetError(
            f"{path}: member {name} is not a {what} pickle ({err}); use the python version archive"
        ) from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: member {name} is not a {what} batch (not a dict)")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in data.items()}


def _cifar_batch(blob: bytes, name: str, label_key: str, path: str, what: str):
    data = _unpickle(blob, name, path, what)
    if "data" not in data or label_key not in data:
        raise DatasetError(f"{path}: member {name} lacks 'data' or '{label_key}'; is this {what}?")
    pixels = np.asarray(data["data"])
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3072:
        raise DatasetError(f"{path}: {name} has data {pixels.shape}, expected N x 3072 uint8")
    if len(pixels) == 0:
        raise DatasetError(f"{path}: {name} holds no images; is this {what}?")
    labels = _integer_labels(data[label_key], len(pixels), f"{path}: {name}", what)
    x = torch.from_numpy(pixels.reshape(-1, 3, 32, 32).copy())
    return x, torch.from_numpy(labels)


def _integer_labels(given: object, images: int, where: str, what: str) -> np.ndarray:
    """``given`` as one int64 label per image; :class:`DatasetError` for anything else (None,
    strings, fractions, nested lists, numbers past int64)."""
    try:
        labels = np.asarray(given)
    except (ValueError, OverflowError):
        labels = None
    integral = labels is not None and (
        labels.dtype.kind in "iu"
        or (labels.dtype.kind == "O" and all(isinstance(v, int) for v in labels.reshape(-1)))
    )
    if not integral:
        raise DatasetError(f"{where}: its labels are not integers; is this {what}?")
    if labels.shape != (images,):
        raise DatasetError(
            f"{where}: labels of shape {labels.shape} for {images} images (one integer each)"
        )
    if labels.dtype.kind == "O" and any(not -(2**63) <= v < 2**63 for v in labels):
        raise DatasetError(f"{where}: labels beyond 64-bit integers; is this {what}?")
    return labels.astype(np.int64)


def _cifar_class_names(blob: bytes, key: str, classes: int) -> tuple[str, ...] | None:
    try:
        meta = _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception:
        return None
    names = meta.get(key.encode(), meta.get(key)) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != classes:
        return None
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


# --------------------------------------------------------------------------- image folder


def load_folder(path: str, image_size: int = 32) -> Dataset:
    """An ImageFolder-style directory: ``PATH/<class>/*.png|jpg|...``, or ``PATH/train`` with
    ``PATH/test`` and/or ``PATH/val`` holding such class folders (any case: ``Train``); images
    are resized to ``image_size``. With both ``val`` and ``test`` each is its split; with one
    of them it is the test split and the validation split is cut from ``train``."""
    _require_class_folder(path)
    split = _split_folders(path)
    if split:
        classes = _class_names(split["train"])
        x, y = _read_images(split["train"], classes, image_size)
        held = {k: _read_images(split[k], classes, image_size, "train")
                for k in ("val", "test") if k in split}  # fmt: skip
        if len(held) == 2:
            parts = (x, y, *held["val"], *held["test"])
        else:
            (test_x, test_y), order = next(iter(held.values())), _permutation(len(y))
            n_val = max(1, len(y) // 10)
            x, y = x[order], y[order]
            parts = (x[n_val:], y[n_val:], x[:n_val], y[:n_val], test_x, test_y)
    else:
        classes = _class_names(path)
        x, y = _read_images(path, classes, image_size)
        n_hold = max(1, len(y) // 10)
        parts = _holdout_split(x, y, n_val=n_hold, n_test=n_hold)
    return _build(f"folder:{path}", parts, len(classes), classes=tuple(classes))


#: The split folders of a folder dataset (matched in any case).
SPLIT_FOLDERS = ("train", "val", "test")


def _split_folders(path: str) -> dict[str, str] | None:
    """``{"train": PATH/train, "test": ..., "val": ...}`` for the split folders present, when
    ``train`` and at least one of the others are; else None."""
    found = {e.name.lower(): e.path for e in os.scandir(path)
             if e.is_dir() and e.name.lower() in SPLIT_FOLDERS}  # fmt: skip
    if "train" not in found or len(found) < 2:
        return None
    return found


def _class_names(path: str) -> list[str]:
    names = sorted(_subfolders(path))
    if len(names) >= 2:
        return names
    if [n.lower() for n in names] == ["train"]:
        raise DatasetError(f"{path}: has train/ but no test/ or val/ beside it; add one")
    raise DatasetError(f"{path}: found {len(names)} class subfolders; need at least 2")


def _subfolders(path: str) -> list[str]:
    """The folders under ``path`` that can be classes (not hidden, not ``__MACOSX``)."""
    return [e.name for e in os.scandir(path)
            if e.is_dir() and not e.name.startswith(".") and e.name not in NOT_CLASSES]  # fmt: skip


def _read_images(
    path: str, classes: list[str], size: int, classes_from: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of ``classes`` under ``path``; ``classes_from`` names the split the classes
    come from when ``path`` must not hold others."""
    extra = sorted(set(_subfolders(path)) - set(classes)) if classes_from else []
    if extra:
        raise DatasetError(
            f"{path}: class {extra[0]!r} is not in {classes_from}/; add it there or remove it"
        )
    files, labels = _list_images(path, classes)
    _check_fits_in_memory(path, len(files), 3, size)
    images = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for i, file in enumerate(files):
        images[i] = _decode_image(file, size)
    return torch.from_numpy(images), torch.tensor(labels, dtype=torch.int64)


def _list_images(path: str, classes: list[str]) -> tuple[list[str], list[int]]:
    """The image files of every class folder under ``path`` and their labels."""
    images, labels = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(path, name)
        if not os.path.isdir(folder):
            raise DatasetError(f"{path}: class folder {name!r} is missing (it exists in train)")
        files = [f for f in sorted(os.listdir(folder))
                 if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")]  # fmt: skip
        if not files:
            raise DatasetError(
                f"{folder}: class {name!r} has no images ({', '.join(IMAGE_SUFFIXES)}); add some "
                "or remove the folder"
            )
        images += [os.path.join(folder, file) for file in files]
        labels += [label] * len(files)
    return images, labels


def _decode_image(file: str, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as img, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's advice on palette transparency
            if img.width * img.height > MAX_SOURCE_PIXELS:
                raise DatasetError(
                    f"{file}: {img.width}x{img.height} pixels, more than the limit of "
                    f"{MAX_SOURCE_PIXELS:,}; shrink the image or remove it"
                )
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale where possible
            rgb = _eight_bit(img).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as err:  # fmt: skip
        # Pillow raises SyntaxError for some broken PNG chunks
        raise DatasetError(f"{file}: cannot decode image ({err}); remove or replace it") from None
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def _eight_bit(img):
    """16-bit grayscale (Pillow's modes ``I;16*`` and ``I``) scaled to 8 bits; Pillow's own
    conversion clips those values at 255 instead."""
    from PIL import Image

    if img.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        return img
    values = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
    return Image.fromarray(((values + 128) // 257).astype(np.uint8), "L")


# --------------------------------------------------------------------------- augmentation


class Augment:
    """Batch augmentation on uint8 ``N x C x H x W`` tensors, returning normalised float32.

    Order: scale to 0..1 and normalise per channel, random crop from the image padded with
    ``padding`` zeros (the mean colour after normalisation), horizontal flip with probability
    1/2, then Cutout (one ``cutout`` x ``cutout`` square of zeros, centre uniform over the image,
    clipped at the border). Randomness comes only from the ``generator`` passed in. The result
    is in ``channels_last`` memory order when ``channels_last`` is set.
    """

    def __init__(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        padding: int = 0,
        flip: bool = False,
        cutout: int = 0,
        channels_last: bool = True,
    ) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.padding, self.flip, self.cutout = padding, flip, cutout
        self.channels_last = channels_last

    @classmethod
    def for_dataset(cls, data: Dataset, cutout: int = 0, channels_last: bool = True) -> Augment:
        """The training augmentation of ``data`` (crop padding and flip chosen per dataset)."""
        return cls(data.mean, data.std, data.crop_padding, data.flip, cutout, channels_last)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0..255 float) images -> normalised float32, without augmentation."""
        x = (images.float() / 255.0 - self.mean) / self.std
        return x.contiguous(memory_format=self._format())

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = (images.float() / 255.0 - self.mean) / self.std
        if self.padding > 0:
            x = random_crop(x, self.padding, generator)
        if self.flip:
            x = random_flip(x, generator)
        if self.cutout > 0:
            x = cutout(x, self.cutout, generator)
        return x.contiguous(memory_format=self._format())

    def _format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Per-example random ``H x W`` crop of ``x`` zero-padded by ``padding`` on every side."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding)).permute(0, 2, 3, 1)
    oy = torch.randint(0, 2 * padding + 1, (n, 1, 1), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (n, 1, 1), generator=generator)
    rows = oy + torch.arange(h).view(1, h, 1)
    cols = ox + torch.arange(w).view(1, 1, w)
    return padded[torch.arange(n).view(n, 1, 1), rows, cols].permute(0, 3, 1, 2)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each example left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero one ``size x size`` square per example, centred uniformly, clipped at the border."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1, 1), generator=generator)
    cx = torch.randint(0, w, (n, 1, 1), generator=generator)
    top, left = cy - size // 2, cx - size // 2
    ys = torch.arange(h).view(1, h, 1)
    xs = torch.arange(w).view(1, 1, w)
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return x.masked_fill(inside.unsqueeze(1), 0.0)


__all__ = [
    "CIFAR_VAL_SIZE",
    "SPLIT_SEED",
    "Augment",
    "Dataset",
    "DatasetError",
    "DatasetShape",
    "check_dataset_spec",
    "cutout",
    "load_cifar",
    "load_dataset",
    "load_digits",
    "load_folder",
    "make_synthetic",
    "random_crop",
    "random_flip",
]
