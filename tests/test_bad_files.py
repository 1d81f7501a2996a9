"""Damaged and foreign files given to ``nasnet evaluate DIR``, ``nasnet export-model DIR``,
``nasnet import-weights FILE`` and ``nasnet export-model PRESET --weights FILE``: each is
refused with exit status 2 and one line naming the file and the fix, never a traceback, and
torch's "re-run with weights_only=False" advice never reaches the user. Malicious pickles are
refused without running anything. (Bad options and other inputs: tests/test_bad_inputs.py.)"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch

import nasnet
from nasnet.cli import main
from nasnet.pretrained import (
    PresetInferenceError,
    WeightFileError,
    WeightMappingError,
    import_weights,
    load_imported,
    load_state_dict_file,
    save_imported,
)
from nasnet.train import CHECKPOINT_FILE, CONFIG_FILE, TrainConfig, evaluate_run, load_model, train

TINY = dict(dataset="synthetic:classes=3,size=8,train=32,val=16,test=16", cells=1, filters=4,
            epochs=1, batch_size=16, threads=1)  # fmt: skip


class Payload:
    """Unpickling this would create the file ``MARKER`` (it must never happen)."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes/readme.txt", "not a checkpoint")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad-files")
    Payload.marker = str(root / "PWNED")
    run, wider = str(root / "run"), str(root / "run-f8")
    assert train(None, TrainConfig(**TINY), out_dir=run)["status"] == "done"
    assert train(None, TrainConfig(**{**TINY, "filters": 8}), out_dir=wider)["status"] == "done"
    with open(os.path.join(run, CHECKPOINT_FILE), "rb") as fh:
        good = fh.read()
    state = torch.load(os.path.join(run, CHECKPOINT_FILE), weights_only=True)
    name = next(k for k, v in state["model"].items() if v.dim() == 4)
    state["model"][name] = torch.zeros(7, 7)
    with open(os.path.join(run, CONFIG_FILE), encoding="utf-8") as fh:
        config = json.load(fh)
    with open(os.path.join(wider, CHECKPOINT_FILE), "rb") as fh:
        other_run = fh.read()

    paths = {"root": str(root), "run": run}
    checkpoints = {
        "ckpt_garbage": os.urandom(4096),
        "ckpt_truncated": good[: len(good) // 2],
        "ckpt_empty": b"",
        "ckpt_pickle": pickle.dumps({"epoch": 1, "model": [1, 2, 3]}),
        "ckpt_malicious_pickle": pickle.dumps(Payload()),
        "ckpt_malicious_torch": _torch_bytes({"model": Payload()}),
        "ckpt_zip": _zip_bytes(),
        "ckpt_torch_list": _torch_bytes([torch.zeros(2)]),
        "ckpt_state_dict": _torch_bytes({"weight": torch.zeros(2)}),
        "ckpt_other_run": other_run,
        "ckpt_wrong_shape": _torch_bytes(state),
        "ckpt_json": b'{"epoch": 1}',
    }
    configs = {
        "config_cells_two": json.dumps({**config, "cells": "two"}),
        "config_only_cells_two": json.dumps({"cells": "two"}),
        "config_invalid_json": '{"cells": 1,',
        "config_empty": "",
        "config_list": "[1, 2, 3]",
        "config_unknown_option": json.dumps({**config, "warp": 9}),
        "config_bad_genotype": json.dumps({**config, "genotype": {"normal": 3}}),
    }
    for key, blob in checkpoints.items():
        target = root / key
        shutil.copytree(run, target)
        (target / CHECKPOINT_FILE).write_bytes(blob)
        paths[key] = str(target)
    for key, text in configs.items():
        target = root / key
        shutil.copytree(run, target)
        (target / CONFIG_FILE).write_text(text)
        paths[key] = str(target)
    target = root / "ckpt_directory"
    shutil.copytree(run, target)
    os.remove(target / CHECKPOINT_FILE)
    (target / CHECKPOINT_FILE).mkdir()
    paths["ckpt_directory"] = str(target)

    weights = {
        "w_json": json.dumps({"last_linear.weight": [[0.0]]}).encode(),
        "w_text": b"these are not weights\nat all\n",
        "w_malicious_pickle": pickle.dumps(Payload()),
        "w_malicious_torch": _torch_bytes({"state_dict": {"conv0.conv.weight": Payload()}}),
        "w_empty": b"",
        "w_garbage": os.urandom(4096),
        "w_truncated": _torch_bytes({"conv0.conv.weight": torch.zeros(1000)})[:700],
        "w_torch_list": _torch_bytes([1, 2, 3]),
        "w_foreign_state_dict": _torch_bytes({"fc.weight": torch.zeros(2, 2)}),
        "w_three_cells": _torch_bytes(
            {f"cell_{i}.conv_1x1.conv.weight": torch.zeros(1) for i in range(3)}
        ),
    }
    for key, blob in weights.items():
        (root / key).write_bytes(blob)
        paths[key] = str(root / key)
    paths["w_run_dir"] = run
    paths["w_missing"] = str(root / "no-such-weights.pt")
    mobile = nasnet.create_model("nasnet_a_mobile", num_classes=10)
    paths["w_mobile_imported"] = save_imported(mobile, "nasnet_a_mobile", str(root / "mob.pt"))
    return paths


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except BaseException as err:  # anything escaping main would be a traceback
        pytest.fail(f"{type(err).__name__} escaped nasnet.cli.main: {err}")
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line(code: int, out: str, err: str, names: str) -> None:
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err
    assert "weights_only" not in out + err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2, err
    assert names in err, f"{names!r} not in {err!r}"
    assert not os.path.exists(Payload.marker), "a malicious pickle was run"


RUN_CASES = [
    *[(key, CHECKPOINT_FILE) for key in (
        "ckpt_garbage", "ckpt_truncated", "ckpt_empty", "ckpt_pickle", "ckpt_malicious_pickle",
        "ckpt_malicious_torch", "ckpt_zip", "ckpt_torch_list", "ckpt_state_dict",
        "ckpt_other_run", "ckpt_wrong_shape", "ckpt_json", "ckpt_directory",
    )],
    *[(key, CONFIG_FILE) for key in (
        "config_cells_two", "config_only_cells_two", "config_invalid_json", "config_empty",
        "config_list", "config_unknown_option", "config_bad_genotype",
    )],
]  # fmt: skip


@pytest.mark.parametrize("command", ["evaluate", "export-model"])
@pytest.mark.parametrize("case, damaged", RUN_CASES)
def test_damaged_run_directory(files, capsys, command, case, damaged):
    run, out = files[case], os.path.join(files["root"], f"{case}-{command}.pt")
    argv = ["evaluate", run] if command == "evaluate" else \
        ["export-model", run, "--format", "torchscript", "-o", out]  # fmt: skip
    code, stdout, stderr = _run(argv, capsys)
    _assert_one_line(code, stdout, stderr, os.path.join(run, damaged))
    assert not os.path.exists(out)


WEIGHT_CASES = [
    "w_json", "w_text", "w_malicious_pickle", "w_malicious_torch", "w_empty", "w_garbage",
    "w_truncated", "w_torch_list", "w_run_dir", "w_missing",
]  # fmt: skip


@pytest.mark.parametrize(
    "case", [*WEIGHT_CASES, "w_foreign_state_dict", "w_three_cells", "w_mobile_imported"]
)
def test_import_weights_refuses_bad_files(files, capsys, case):
    path, out = files[case], os.path.join(files["root"], f"{case}-imported.pt")
    code, stdout, stderr = _run(["import-weights", path, "--from", "timm", "-o", out], capsys)
    _assert_one_line(code, stdout, stderr, path)
    assert not os.path.exists(out)
    if case == "w_three_cells":
        assert "--model" in stderr


@pytest.mark.parametrize(
    "case, preset",
    [*[(c, "nasnet_a_mobile") for c in WEIGHT_CASES], ("w_foreign_state_dict", "nasnet_a_mobile"),
     ("w_mobile_imported", "nasnet_a_large")],
)  # fmt: skip
def test_export_model_refuses_bad_weights(files, capsys, case, preset):
    path, out = files[case], os.path.join(files["root"], f"{case}-export.onnx")
    argv = ["export-model", preset, "--weights", path, "--format", "onnx", "-o", out]
    code, stdout, stderr = _run(argv, capsys)
    _assert_one_line(code, stdout, stderr, path)
    assert "--weights" in stderr and not os.path.exists(out)


@pytest.mark.parametrize(
    "argv",
    [
        ["import-weights", "{w_malicious_pickle}", "--from", "cadene", "-o", "{root}/x.pt"],
        ["evaluate", "{ckpt_malicious_torch}"],
        ["export-model", "{ckpt_truncated}", "--format", "onnx", "-o", "{root}/x.onnx"],
    ],
)
def test_the_real_command_prints_one_line(files, argv):
    """As a user sees it: a fresh process, real stderr (warnings included)."""
    argv = [a.format(**files) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "nasnet", *argv], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "weights_only" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert argv[1] in proc.stderr
    assert not os.path.exists(Payload.marker)


@pytest.mark.parametrize(
    "output, problem",
    [("{root}/a-file/model.onnx", "is a file, not a folder"),
     ("{root}", "is a directory"),
     ("{root}/missing/model.onnx", "no such folder"),
     ("{run}/checkpoint.pt", "is the run's own checkpoint.pt")],
)  # fmt: skip
def test_export_model_refuses_outputs_it_cannot_write_or_that_are_the_runs_own(
    files, capsys, output, problem
):
    with open(os.path.join(files["root"], "a-file"), "w"):
        pass
    with open(os.path.join(files["run"], CHECKPOINT_FILE), "rb") as fh:
        checkpoint = fh.read()
    path = output.format(root=files["root"], run=files["run"])
    code, out, err = _run(["export-model", files["run"], "--format", "onnx", "-o", path], capsys)
    _assert_one_line(code, out, err, problem)
    with open(os.path.join(files["run"], CHECKPOINT_FILE), "rb") as fh:
        assert fh.read() == checkpoint


@pytest.mark.parametrize("size", ["-4", "0", "100000"])
def test_export_model_refuses_image_sizes_out_of_range(files, capsys, size):
    output = os.path.join(files["root"], "never.pt")
    argv = ["export-model", "nasnet_a_cifar", "--format", "torchscript", "-o", output]
    code, out, err = _run([*argv, "--image-size", size], capsys)
    _assert_one_line(code, out, err, "--image-size: must be in [4, 1024]")
    assert not os.path.exists(output)


def test_library_raises_value_errors_naming_the_file(files):
    """The library side: ValueError subclasses naming the file, no CLI flags."""
    for case in ("w_json", "w_malicious_pickle", "w_empty", "w_run_dir"):
        with pytest.raises(WeightFileError, match="^" + re.escape(files[case])) as info:
            load_imported(files[case])
        assert "--" not in str(info.value)
        with pytest.raises(WeightFileError, match="^" + re.escape(files[case])):
            load_state_dict_file(files[case])
    with pytest.raises(PresetInferenceError, match="3 cells") as info:
        import_weights(files["w_three_cells"], "timm")
    assert str(info.value).startswith(files["w_three_cells"]) and "--" not in str(info.value)
    with pytest.raises(WeightMappingError, match="no NASNet-A cells"):
        import_weights(files["w_foreign_state_dict"], "cadene")
    with pytest.raises(WeightFileError, match="holds nasnet_a_mobile weights, not nasnet_a_large"):
        load_imported(files["w_mobile_imported"], "nasnet_a_large")
    assert load_imported(files["w_mobile_imported"]).num_classes == 10
    for case in ("ckpt_other_run", "ckpt_wrong_shape", "config_cells_two"):
        for load in (load_model, evaluate_run):
            with pytest.raises(ValueError, match="^" + re.escape(files[case])):
                load(files[case])
    assert not os.path.exists(Payload.marker)


def test_a_weight_file_holding_a_number_names_its_type(tmp_path):
    path = str(tmp_path / "number.pth")
    torch.save(5, path)
    with pytest.raises(WeightFileError, match=f"^{re.escape(path)}: holds an int, not "):
        load_state_dict_file(path)
