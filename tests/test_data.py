"""Datasets (digits, CIFAR archives, image folders, synthetic) and batch augmentation."""

from __future__ import annotations

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from nasnet.data import (
    Augment,
    DatasetError,
    cutout,
    load_dataset,
    make_synthetic,
    random_crop,
    random_flip,
)

# --------------------------------------------------------------------------- CIFAR fixtures


def _cifar_rows(n: int, start: int, classes: int) -> tuple[np.ndarray, list[int]]:
    """``n`` CIFAR rows whose pixels encode (label, global index) so tests can trace them."""
    rng = np.random.default_rng(start)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [(start + i) % classes for i in range(n)]
    for i, label in enumerate(labels):
        data[i, 0] = label  # R channel, pixel (0, 0)
        data[i, 1024 + 33] = (start + i) % 256  # G channel, pixel (1, 1): example id
    return data, labels


def _pickle(obj: dict) -> bytes:
    """Protocol 2 with numpy's pre-2.0 module path, as in the real (Python 2) archive."""
    blob = pickle.dumps(obj, protocol=2)
    return blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _cifar10_members(per_batch: int = 20) -> dict[str, bytes]:
    members = {}
    for b in range(1, 6):
        data, labels = _cifar_rows(per_batch, (b - 1) * per_batch, 10)
        members[f"data_batch_{b}"] = _pickle(
            {b"batch_label": b"training batch", b"labels": labels, b"data": data}
        )
    data, labels = _cifar_rows(per_batch, 5 * per_batch, 10)
    members["test_batch"] = _pickle({b"labels": labels, b"data": data})
    names = [n.encode() for n in ("plane", "car", "bird", "cat", "deer", "dog", "frog")]
    names += [b"horse", b"ship", b"truck"]
    members["batches.meta"] = _pickle({b"label_names": names, b"num_vis": 3072})
    return members


def _write_tar(path: str, folder: str, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def _write_dir(path: str, members: dict[str, bytes]) -> None:
    os.makedirs(path)
    for name, blob in members.items():
        with open(os.path.join(path, name), "wb") as fh:
            fh.write(blob)


@pytest.fixture
def cifar10_tar(tmp_path) -> str:
    path = str(tmp_path / "cifar-10-python.tar.gz")
    _write_tar(path, "cifar-10-batches-py", _cifar10_members())
    return path


def _check_cifar10(data) -> None:
    assert data.num_classes == 10 and data.channels == 3 and data.image_size == 32
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (90, 10, 20)
    assert data.train_x.dtype == torch.uint8 and data.train_x.shape == (90, 3, 32, 32)
    # each image keeps its own label (the label is written into its R pixel (0, 0))
    for x, y in ((data.train_x, data.train_y), (data.val_x, data.val_y)):
        assert torch.equal(x[:, 0, 0, 0].long(), y)
    ids = torch.cat([data.train_x[:, 1, 1, 1], data.val_x[:, 1, 1, 1]]).long()
    assert sorted(ids.tolist()) == list(range(100))  # train + val = the 5 batches, disjoint
    assert sorted(data.test_x[:, 1, 1, 1].tolist()) == list(range(100, 120))
    assert data.classes[0] == "plane" and data.classes[9] == "truck"


@pytest.mark.filterwarnings("error::DeprecationWarning")
def test_cifar10_tar_gz_loads_with_shapes_labels_and_split(cifar10_tar):
    data = load_dataset(f"cifar10:{cifar10_tar}")
    _check_cifar10(data)
    again = load_dataset(f"cifar10:{cifar10_tar}")
    assert torch.equal(again.val_x, data.val_x)  # the split is fixed


def test_cifar10_extracted_folder_and_parent_folder_give_the_same_split(tmp_path, cifar10_tar):
    folder = tmp_path / "extracted" / "cifar-10-batches-py"
    _write_dir(str(folder), _cifar10_members())
    from_tar = load_dataset(f"cifar10:{cifar10_tar}")
    for path in (folder, folder.parent, tmp_path):  # tmp_path holds the .tar.gz
        data = load_dataset(f"cifar10:{path}")
        _check_cifar10(data)
        assert torch.equal(data.val_x, from_tar.val_x) and torch.equal(data.val_y, from_tar.val_y)


def test_cifar100_archive_uses_fine_labels(tmp_path):
    train, train_labels = _cifar_rows(50, 0, 100)
    test, test_labels = _cifar_rows(10, 50, 100)
    members = {
        "train": _pickle(
            {b"data": train, b"fine_labels": train_labels, b"coarse_labels": [0] * 50}
        ),
        "test": _pickle({b"data": test, b"fine_labels": test_labels, b"coarse_labels": [0] * 10}),
        "meta": _pickle({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}),
    }
    path = str(tmp_path / "cifar-100-python.tar.gz")
    _write_tar(path, "cifar-100-python", members)
    data = load_dataset(f"cifar100:{path}")
    assert data.num_classes == 100 and len(data.test_y) == 10
    assert (len(data.train_y), len(data.val_y)) == (45, 5)
    assert torch.equal(data.train_x[:, 0, 0, 0].long(), data.train_y)


def _one_line_error(spec: str) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset(spec)
    message = str(info.value)
    assert "\n" not in message and message
    return message


def test_truncated_archive_is_a_one_line_error(tmp_path, cifar10_tar):
    with open(cifar10_tar, "rb") as fh:
        blob = fh.read()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    message = _one_line_error(f"cifar10:{cut}")
    assert "truncated" in message and "cifar-10-python.tar.gz" in message


def test_foreign_files_are_one_line_errors(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an archive\n")
    assert "not a tar archive" in _one_line_error(f"cifar10:{text}")
    other = tmp_path / "other.tar.gz"
    _write_tar(str(other), "stuff", {"readme": b"hello"})
    assert "no data_batch_1" in _one_line_error(f"cifar10:{other}")
    bad_pickle = _cifar10_members()
    bad_pickle["data_batch_3"] = b"garbage, not a pickle"
    _write_dir(str(tmp_path / "bad"), bad_pickle)
    assert "data_batch_3" in _one_line_error(f"cifar10:{tmp_path / 'bad'}")
    assert "no such file" in _one_line_error(f"cifar10:{tmp_path / 'missing.tar.gz'}")
    assert "needs a path" in _one_line_error("cifar10")


def test_pickle_with_arbitrary_objects_is_refused(tmp_path):
    members = _cifar10_members()
    members["data_batch_1"] = pickle.dumps({"data": os.getcwd, "labels": []})
    _write_dir(str(tmp_path / "evil"), members)
    assert "not a cifar10 pickle" in _one_line_error(f"cifar10:{tmp_path / 'evil'}")


def test_wrong_shape_data_is_an_error(tmp_path):
    members = _cifar10_members()
    members["test_batch"] = _pickle({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4})
    _write_dir(str(tmp_path / "shape"), members)
    assert "3072" in _one_line_error(f"cifar10:{tmp_path / 'shape'}")


@pytest.mark.parametrize("labels, problem", [
    (None, "labels are not integers"), ([b"cat"] * 20, "labels are not integers"),
    ([1.7] * 20, "labels are not integers"), ([2**70] + [0] * 19, "beyond 64-bit"),
    ([[0]] * 20, "labels of shape (20, 1) for 20 images"),
])  # fmt: skip
def test_cifar_labels_that_are_not_one_integer_per_image_are_refused(tmp_path, labels, problem):
    members = _cifar10_members()
    data, _ = _cifar_rows(20, 0, 10)
    members["data_batch_1"] = _pickle({b"labels": labels, b"data": data})
    _write_dir(str(tmp_path / "labels"), members)
    message = _one_line_error(f"cifar10:{tmp_path / 'labels'}")
    assert "data_batch_1" in message and problem in message


def test_a_cifar_batch_without_images_is_refused(tmp_path):
    members = _cifar10_members()
    members["test_batch"] = _pickle({b"labels": [], b"data": np.zeros((0, 3072), np.uint8)})
    _write_dir(str(tmp_path / "empty"), members)
    assert "test_batch holds no images" in _one_line_error(f"cifar10:{tmp_path / 'empty'}")


def test_cifar_pickled_with_the_newest_protocol_loads(tmp_path):
    members = _cifar10_members()
    for name, blob in list(members.items()):
        obj = pickle.loads(blob, encoding="bytes")
        members[name] = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    _write_dir(str(tmp_path / "p5"), members)
    _check_cifar10(load_dataset(f"cifar10:{tmp_path / 'p5'}"))


def test_a_tiny_cifar_still_has_a_validation_image(tmp_path):
    _write_dir(str(tmp_path / "tiny"), _cifar10_members(per_batch=1))
    data = load_dataset(f"cifar10:{tmp_path / 'tiny'}")
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (4, 1, 1)


# --------------------------------------------------------------------------- folder, digits, ...


def _write_images(root, classes: dict[str, int], size=(10, 12)) -> None:
    for k, (name, count) in enumerate(classes.items()):
        os.makedirs(root / name, exist_ok=True)
        for i in range(count):
            pixels = np.full((*size, 3), 40 * k + i, dtype=np.uint8)
            fmt = "PNG" if i % 2 else "JPEG"
            Image.fromarray(pixels).save(root / name / f"img{i}.{fmt.lower()}", fmt)


def test_folder_dataset_resizes_and_splits(tmp_path):
    _write_images(tmp_path, {"cats": 10, "dogs": 10, "eels": 10})
    (tmp_path / "dogs" / "notes.txt").write_text("ignored")
    data = load_dataset(f"folder:{tmp_path}", image_size=8)
    assert data.classes == ("cats", "dogs", "eels") and data.num_classes == 3
    assert data.train_x.shape[1:] == (3, 8, 8)
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (24, 3, 3)
    assert torch.bincount(torch.cat([data.train_y, data.val_y, data.test_y])).tolist() == [10] * 3
    # class k's images are grey 40k + i: the label is recoverable from the pixels
    assert torch.equal((data.train_x[:, 0, 4, 4].long() + 5) // 40, data.train_y)


def test_folder_dataset_with_train_and_test_subfolders(tmp_path):
    _write_images(tmp_path / "train", {"a": 10, "b": 10})
    _write_images(tmp_path / "test", {"a": 3, "b": 2})
    data = load_dataset(f"folder:{tmp_path}", image_size=16)
    assert data.image_size == 16 and len(data.test_y) == 5 and len(data.val_y) == 2


def test_folder_errors(tmp_path):
    assert "no such folder" in _one_line_error(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "a-file").write_text("")
    assert "is a file, not a folder" in _one_line_error(f"folder:{tmp_path / 'a-file'}")
    _write_images(tmp_path / "one", {"only": 3})
    assert "class subfolders" in _one_line_error(f"folder:{tmp_path / 'one'}")
    _write_images(tmp_path / "broken", {"a": 2, "b": 2})
    (tmp_path / "broken" / "a" / "zz.png").write_bytes(b"not a png")
    assert "zz.png" in _one_line_error(f"folder:{tmp_path / 'broken'}")


def test_a_png_with_a_broken_chunk_is_a_one_line_error(tmp_path):
    _write_images(tmp_path, {"a": 4, "b": 4})
    png = tmp_path / "a" / "img1.png"
    pixels = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(png)
    blob = bytearray(png.read_bytes())
    blob[36] ^= 0x40  # Pillow raises SyntaxError for this one
    png.write_bytes(bytes(blob))
    assert "img1.png: cannot decode image" in _one_line_error(f"folder:{tmp_path}")


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (16, 1))
    for name in ("a", "b"):
        os.makedirs(tmp_path / name)
        for i in range(5):
            Image.fromarray(ramp).save(tmp_path / name / f"{i}.png")
    data = load_dataset(f"folder:{tmp_path}", image_size=16)
    expected = ((ramp[0].astype(np.int64) + 128) // 257).tolist()
    assert data.train_x[0, 0, 0].tolist() == expected and data.train_x[0, 0, 0, 1] == 17


def test_folder_layouts_users_bring(tmp_path):
    _write_images(tmp_path / "three" / "train", {"a": 10, "b": 10})
    _write_images(tmp_path / "three" / "val", {"a": 2, "b": 2})
    _write_images(tmp_path / "three" / "test", {"a": 3, "b": 3})
    data = load_dataset(f"folder:{tmp_path / 'three'}", image_size=8)
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (20, 4, 6)
    _write_images(tmp_path / "caps" / "Train", {"a": 10, "b": 10})
    _write_images(tmp_path / "caps" / "Test", {"a": 2, "b": 2})
    assert load_dataset(f"folder:{tmp_path / 'caps'}", image_size=8).classes == ("a", "b")
    _write_images(tmp_path / "extra" / "train", {"a": 4, "b": 4})
    _write_images(tmp_path / "extra" / "test", {"a": 2, "b": 2, "fish": 2})
    assert "class 'fish' is not in train/" in _one_line_error(f"folder:{tmp_path / 'extra'}")
    _write_images(tmp_path / "alone" / "train", {"a": 4, "b": 4})
    assert "no test/ or val/" in _one_line_error(f"folder:{tmp_path / 'alone'}")
    mac = tmp_path / "mac"  # an archive unzipped on a Mac, with other image formats beside
    _write_images(mac, {"a": 5, "b": 5})
    Image.new("RGB", (9, 9)).save(mac / "a" / "img9.bmp")
    (mac / "a" / "._img0.png").write_bytes(b"AppleDouble metadata, not an image")
    _write_images(mac / "__MACOSX", {"a": 1})
    data = load_dataset(f"folder:{mac}", image_size=8)
    assert (
        data.classes == ("a", "b") and len(data.train_y) + len(data.val_y) + len(data.test_y) == 11
    )


def test_synthetic_specs_refuse_what_they_cannot_honour():
    assert "bad option 'size=²'" in _one_line_error("synthetic:size=²")
    assert "below 2**63" in _one_line_error("synthetic:seed=99999999999999999999")
    assert "size=2 is not in [4, 1024]" in _one_line_error("synthetic:size=2")
    with pytest.raises(DatasetError, match="size=16 but an image size of 8; give one"):
        load_dataset("synthetic:size=16", image_size=8)
    assert load_dataset("synthetic:size=16", image_size=16).image_size == 16


def test_digits_default_split_and_scaling():
    data = load_dataset("digits")
    assert data.channels == 1 and data.image_size == 16 and data.num_classes == 10
    assert len(data.train_y) + len(data.val_y) + len(data.test_y) == 1797
    assert (len(data.val_y), len(data.test_y)) == (180, 359)
    assert not data.flip  # digits are not mirror-symmetric
    raw = load_dataset("digits", image_size=8)
    assert raw.train_x.max() == 255 and torch.equal(raw.test_y, data.test_y)
    with pytest.raises(DatasetError):
        load_dataset("digits:extra")


def test_synthetic_spec_and_unknown_specs():
    data = load_dataset("synthetic:classes=3,train=30,val=6,test=9,channels=2", image_size=12)
    assert (data.num_classes, data.channels, data.image_size) == (3, 2, 12)
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (30, 6, 9)
    assert torch.equal(make_synthetic(seed=3).train_x, make_synthetic(seed=3).train_x)
    assert not torch.equal(make_synthetic(seed=3).train_x, make_synthetic(seed=4).train_x)
    assert "bad option" in _one_line_error("synthetic:colour=3")
    assert "unknown dataset" in _one_line_error("imagenet:/data")


# --------------------------------------------------------------------------- augmentation


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6) + 1
    out = random_crop(x, 2, _gen())
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, a : a + 6, b : b + 6] for a in range(5) for b in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    assert torch.equal(random_crop(x, 0, _gen()), x)


def test_random_crop_offsets_cover_all_shifts():
    x = torch.zeros(400, 1, 4, 4)
    x[:, :, 0, 0] = 1.0  # find where the top-left pixel lands
    out = random_crop(x, 1, _gen())
    positions = {tuple(p) for p in out[:, 0].nonzero()[:, 1:].tolist()}
    assert positions == {(0, 0), (0, 1), (1, 0), (1, 1)}  # a shift of -1 moves it out of view
    assert (out.sum(dim=(1, 2, 3)) == 0).any()


def test_flip_mirrors_about_half_the_batch():
    x = torch.rand(200, 3, 5, 5)
    out = random_flip(x, _gen())
    flipped = [torch.equal(o, xi.flip(2)) for o, xi in zip(out, x, strict=True)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 60 < sum(flipped) < 140


def test_cutout_zeroes_one_clipped_square():
    x = torch.ones(300, 2, 10, 10)
    out = cutout(x, 4, _gen())
    zeros = (out[:, 0] == 0).sum(dim=(1, 2))
    assert zeros.min() >= 4 and zeros.max() == 16  # clipped at a corner: at least 2x2
    assert torch.equal(out[:, 0], out[:, 1])  # same square in every channel


def test_augment_is_seeded_normalises_and_returns_channels_last():
    data = make_synthetic(train=64, size=16)
    aug = Augment.for_dataset(data, cutout=4)
    assert aug.flip and aug.padding == 2
    a, b = aug(data.train_x, _gen(1)), aug(data.train_x, _gen(1))
    assert torch.equal(a, b) and not torch.equal(a, aug(data.train_x, _gen(2)))
    assert a.is_contiguous(memory_format=torch.channels_last)
    plain = aug.normalize(data.train_x)
    assert plain.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (plain.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-2
    nchw = Augment.for_dataset(data, channels_last=False)(data.train_x, _gen(1))
    assert nchw.is_contiguous()


def test_digits_augmentation_never_flips():
    data = load_dataset("digits")
    aug = Augment(data.mean, data.std, padding=0, flip=data.flip, cutout=0)
    assert torch.equal(aug(data.train_x[:50], _gen()), aug.normalize(data.train_x[:50]))


def test_a_missing_cifar_path_is_named_before_the_image_size(tmp_path):
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_dataset(f"cifar10:{tmp_path / 'missing'}", image_size=8)


def test_a_corrupt_gzip_is_caught_by_its_checksum(tmp_path, cifar10_tar):
    with open(cifar10_tar, "rb") as fh:
        blob = bytearray(fh.read())
    blob[len(blob) // 2] ^= 0xFF  # inside the compressed data: only the CRC can tell
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(bytes(blob))
    message = _one_line_error(f"cifar10:{bad}")
    assert "truncated or corrupt archive" in message and "download it again" in message


def test_a_missing_batch_is_named_from_the_parent_folder_too(tmp_path):
    members = _cifar10_members()
    del members["data_batch_3"]
    _write_dir(str(tmp_path / "cifar-10-batches-py"), members)
    message = _one_line_error(f"cifar10:{tmp_path}")
    assert "cifar-10-batches-py: not a cifar10 folder (no data_batch_3)" in message
