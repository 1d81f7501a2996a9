"""Memory checks: a training run, a search or a dataset that would not fit in this machine's
memory is refused in one line before it starts, instead of being killed by the kernel."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import nasnet.data as data_module
import nasnet.memory as memory_module
import nasnet.train as train_module
from nasnet.cli import main
from nasnet.data import DatasetError, DatasetShape, check_dataset_spec, load_folder
from nasnet.genotypes import NASNET_A
from nasnet.memory import GIB, available_bytes, evaluation_bytes, training_step_bytes
from nasnet.network import build_network
from nasnet.options import OptionError
from nasnet.train import CONFIG_FILE, TrainConfig, check_training_memory, train

SRC = str(Path(__file__).resolve().parents[1] / "src")
SMALL = dataclasses.replace(
    TrainConfig(), dataset="synthetic:train=64,size=16", cells=1, filters=4, batch_size=32,
    eval_batch_size=32, epochs=1, threads=1,
)  # fmt: skip


def _limit_memory(monkeypatch, available: int) -> None:
    for module in (train_module, data_module):
        monkeypatch.setattr(module, "available_bytes", lambda device="cpu": available)


def _estimate(size: int, batch: int) -> int:
    with torch.device("meta"):
        model = build_network(NASNET_A, cells=2, filters=12, image_size=size, auxiliary=True)
    return training_step_bytes(model.to(memory_format=torch.channels_last), batch, (3, size, size))


# VmHWM, the peak resident memory of this process image (ru_maxrss would include the parent's
# peak, which Linux carries across fork and exec)
MEASURE = """
import dataclasses, sys, torch
from nasnet.train import evaluate_model
from nasnet.data import make_synthetic
from nasnet.genotypes import NASNET_A
from nasnet.train import ChildTrainer, TrainConfig
size, batch, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(1)
data = make_synthetic(size=size, train=batch, val=8, test=8)
config = dataclasses.replace(TrainConfig(), cells=2, filters=12, batch_size=batch)
trainer = ChildTrainer(NASNET_A, config, data)
def peak():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
before = peak()
if mode == "train":
    for step in range(2):
        trainer.step(torch.arange(batch), step)
else:
    evaluate_model(trainer.model, data.train_x, data.train_y, trainer.augment, batch)
print(peak() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("mode, batch", [("train", 32), ("evaluate", 128)])
def test_the_estimate_is_close_to_what_real_steps_take(mode: str, batch: int) -> None:
    size = 48
    grown = int(subprocess.run(
        [sys.executable, "-c", MEASURE, str(size), str(batch), mode], capture_output=True,
        text=True, check=True, env={"PYTHONPATH": SRC, "PATH": ""},
    ).stdout.split()[-1])  # fmt: skip
    if mode == "train":
        assert 0.7 < _estimate(size, batch) / grown < 1.4
    else:
        with torch.device("meta"):
            model = build_network(NASNET_A, cells=2, filters=12, image_size=size, auxiliary=True)
        model = model.to(memory_format=torch.channels_last)
        assert 0.7 < evaluation_bytes(model, batch, (3, size, size)) / grown < 1.5


def test_the_estimate_grows_with_the_batch_and_the_image_area() -> None:
    base = _estimate(32, 16)
    assert 1.8 < _estimate(32, 32) / base < 2.1
    assert 3.5 < _estimate(64, 16) / base < 4.2


def test_this_machine_reports_its_free_memory() -> None:
    available = available_bytes("cpu")
    if sys.platform.startswith("linux"):
        assert available is not None and 0 < available < 2**50


def test_a_run_that_does_not_fit_is_refused_naming_the_batch_size(monkeypatch) -> None:
    shape = check_dataset_spec(SMALL.dataset)
    check_training_memory(NASNET_A, SMALL, shape)  # fits in the real memory
    _limit_memory(monkeypatch, GIB // 100)
    with pytest.raises(OptionError) as caught:
        check_training_memory(NASNET_A, SMALL, shape)
    assert caught.value.field == "batch_size"
    assert "at batch 32 on 3x16x16 images, it needs about" in caught.value.problem
    assert caught.value.problem.endswith("more than the 0.0 GiB available; lower it")
    with pytest.raises(OptionError, match="2 runs at once need"):
        check_training_memory(NASNET_A, SMALL, shape, runs=2)


def test_the_batch_is_capped_by_the_training_images_as_training_does(monkeypatch) -> None:
    big_batch = dataclasses.replace(SMALL, batch_size=100_000)
    _limit_memory(monkeypatch, 200 * GIB)
    check_training_memory(NASNET_A, big_batch, check_dataset_spec(SMALL.dataset))  # 64 images


def test_train_fails_before_writing_anything(monkeypatch, tmp_path) -> None:
    _limit_memory(monkeypatch, GIB // 100)
    result = train(NASNET_A, SMALL, out_dir=str(tmp_path / "run"))
    assert result["status"] == "failed" and "batch_size: training at batch 32" in result["reason"]
    assert not (tmp_path / "run" / CONFIG_FILE).exists()


def test_nasnet_train_refuses_in_one_line_and_a_fixed_rerun_starts(monkeypatch, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--dataset", SMALL.dataset, "--cells", "1", "--filters", "4", "--epochs",
            "1", "--threads", "1", "--eval-batch-size", "8", "--quiet",
            "--out", str(out)]  # fmt: skip
    _limit_memory(monkeypatch, 20 * _estimate_small(batch=8) // 10)
    assert main([*argv, "--batch-size", "32"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: --batch-size: training at batch 32" in err
    assert not (out / CONFIG_FILE).exists()
    assert main([*argv, "--batch-size", "8"]) == 0
    assert json.loads((out / CONFIG_FILE).read_text())["batch_size"] == 8


def _estimate_small(batch: int) -> int:
    with torch.device("meta"):
        model = train_module.build_model(NASNET_A, SMALL, check_dataset_spec(SMALL.dataset))
    return training_step_bytes(model, batch, (3, 16, 16))


def test_a_search_whose_children_do_not_fit_together_is_refused(monkeypatch, tmp_path, capsys):
    directory = tmp_path / "search"
    argv = ["search", "--out", str(directory), "--dataset", SMALL.dataset, "--budget", "2",
            "--child-cells", "1", "--child-filters", "4", "--child-batch-size", "32",
            "--child-eval-batch-size", "32", "--quiet"]  # fmt: skip
    _limit_memory(monkeypatch, GIB // 100)
    assert main([*argv, "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--child-batch-size: training at batch 32" in err
    assert "2 runs at once need" in err and "or use fewer workers" in err
    assert not directory.exists()


def test_digits_too_large_for_memory_is_refused_before_resizing(monkeypatch) -> None:
    _limit_memory(monkeypatch, 100 * 2**20)
    with pytest.raises(DatasetError, match=r"digits: 1797 images of 1x256x256 need 0\.1 GiB"):
        data_module.load_digits(256)


def test_a_folder_too_large_for_memory_is_refused_before_decoding(monkeypatch, tmp_path) -> None:
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / label / "0.png")
    monkeypatch.setattr(data_module, "_decode_image", lambda *a: pytest.fail("decoded"))
    _limit_memory(monkeypatch, 1000)
    with pytest.raises(DatasetError, match="2 images of 3x64x64 need"):
        load_folder(str(tmp_path), 64)


def test_resizing_and_statistics_by_chunks_equal_the_whole_batch_at_once() -> None:
    images = torch.randint(0, 256, (70, 1, 8, 8), dtype=torch.uint8)
    resized = data_module._resize_uint8(images, 1024)  # 64 images per chunk
    whole = F.interpolate(images.float(), size=(1024, 1024), mode="bilinear", align_corners=False)
    assert torch.equal(resized, whole.round_().clamp_(0, 255).to(torch.uint8))
    mean, std = data_module._channel_stats(resized)  # 32 images per chunk
    values = resized.double() / 255
    assert mean[0] == pytest.approx(values.mean().item(), rel=1e-9)
    assert std[0] == pytest.approx(values.std(unbiased=False).item(), rel=1e-9)


def test_every_dataset_spec_gives_its_shape_without_loading(tmp_path) -> None:
    n_val, n_test = data_module._digits_holdout(data_module.DIGITS_IMAGES)
    digits = data_module.load_digits(16)
    assert check_dataset_spec("digits") == digits.shape == DatasetShape(1, 16, 10, 1258)
    assert len(digits.val_y) == n_val and len(digits.test_y) == n_test
    assert check_dataset_spec("synthetic:classes=3,channels=2,train=40", 12) == DatasetShape(
        2, 12, 3, 40
    )
    for label in ("a", "b", "c"):
        (tmp_path / "train" / label).mkdir(parents=True)
    (tmp_path / "other").mkdir()
    assert check_dataset_spec(f"folder:{tmp_path}") == DatasetShape(3, 32, 2, None)  # no test/
    (tmp_path / "val").mkdir()
    assert check_dataset_spec(f"folder:{tmp_path}") == DatasetShape(3, 32, 3, None)
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(np.zeros(4, np.uint8).tobytes())
    assert check_dataset_spec(f"cifar10:{archive}") == DatasetShape(3, 32, 10, 45_000)


def test_evaluation_that_does_not_fit_is_refused_naming_the_eval_batch_size(monkeypatch, tmp_path):
    config = dataclasses.replace(SMALL, batch_size=2, eval_batch_size=256)
    shape = check_dataset_spec(config.dataset)
    with torch.device("meta"):
        model = train_module.build_model(NASNET_A, config, shape)
    train_need = training_step_bytes(model, 2, (3, 16, 16))
    eval_need = evaluation_bytes(model, 256, (3, 16, 16))
    assert eval_need > 2 * train_need
    _limit_memory(monkeypatch, (train_need + eval_need) // 2)
    with pytest.raises(OptionError) as caught:
        check_training_memory(NASNET_A, config, shape)
    assert caught.value.field == "eval_batch_size"
    assert caught.value.problem.startswith("evaluating at batch 256 on 3x16x16 images")
    check_training_memory(NASNET_A, dataclasses.replace(config, eval_batch_size=8), shape)


def test_the_limit_of_this_process_own_cgroup_and_its_ancestors_counts(monkeypatch, tmp_path):
    assert memory_module._own_cgroups("4:cpu,memory:/job/7\n0::/slurm/job/7\n")[:4] == [
        ("/sys/fs/cgroup/memory/job/7", "memory.limit_in_bytes", "memory.usage_in_bytes"),
        ("/sys/fs/cgroup/memory/job", "memory.limit_in_bytes", "memory.usage_in_bytes"),
        ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes"),
        ("/sys/fs/cgroup/slurm/job/7", "memory.max", "memory.current"),
    ]
    levels = []
    for name, limit, usage in (("job", "2147483648", 2**30), ("slurm", "max", 5 * 2**30),
                               ("root", str(2**62), 0)):  # fmt: skip
        (tmp_path / name).mkdir()
        (tmp_path / name / "memory.max").write_text(limit + "\n")
        (tmp_path / name / "memory.current").write_text(f"{usage}\n")
        levels.append((str(tmp_path / name), "memory.max", "memory.current"))
    monkeypatch.setattr(memory_module, "_own_cgroups", lambda: levels)
    assert memory_module._cgroup_headroom() == 2**30  # the job's 2 GiB limit, 1 GiB used
    monkeypatch.setattr(memory_module, "_meminfo_available", lambda: 20 * GIB)
    assert available_bytes("cpu") == 2**30


def test_a_transfer_that_does_not_fit_is_refused_before_writing_anything(
    monkeypatch, tmp_path, capsys
):
    source = tmp_path / "cell.json"
    source.write_text(NASNET_A.to_json())
    out = tmp_path / "transfer"
    _limit_memory(monkeypatch, GIB // 100)
    argv = ["transfer", str(source), "--dataset", SMALL.dataset, "--cells", "1", "--filters",
            "4", "--epochs", "1", "--eval-batch-size", "32", "--quiet",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    assert "error: --batch-size: training at batch 64" in capsys.readouterr().err
    assert not out.exists()


def test_batches_of_one_image_are_refused_before_training(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--batch-size", "1", "--quiet"]) == 2
    assert "--batch-size: must be in [2, 1000000], got 1" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--dataset", "synthetic:train=1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--dataset: 1 training image: BatchNorm trains on batches of at least 2" in err
    assert not (out / CONFIG_FILE).exists()
