import copy
import errno
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nasnet
import nasnet.files
from nasnet.cli import main
from nasnet.export import ExportCheck, check_export, export_model, resolve_format, verify_export
from nasnet.search import run_search
from nasnet.search_config import SearchConfig
from nasnet.space import SearchSpace

SRC = str(Path(__file__).resolve().parents[1] / "src")


@torch.no_grad()
def calibrated(model, size):
    """BN statistics from one batch, so that an untrained model has O(1) activations."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    model.train()
    model(torch.randn(4, model.config.in_chans, size, size))
    return model.eval()


def test_torchscript_leaves_the_aux_head_out_and_the_model_keeps_it(tmp_path):
    model = nasnet.build_network(nasnet.NASNET_A, cells=1, filters=8, auxiliary=True)
    model = calibrated(model, 32)
    path = str(tmp_path / "m.pt")
    export_model(model, path, "torchscript", 32)
    exported = sum(p.numel() for p in torch.jit.load(path).parameters())
    aux = sum(p.numel() for p in model.aux_head.parameters())
    assert aux > 0 and exported == sum(p.numel() for p in model.parameters()) - aux
    assert model.aux_head is not None and "aux_head.classifier.weight" in model.state_dict()
    assert check_export(model, path, "torchscript", 32) <= 1e-4


@pytest.mark.parametrize("fmt, suffix", [("onnx", "onnx"), ("torchscript", "pt")])
def test_mobile_exports_match(tmp_path, fmt, suffix):
    model = calibrated(nasnet.create_model("nasnet_a_mobile"), 224)
    path = str(tmp_path / f"mobile.{suffix}")
    export_model(model, path, fmt, 224)
    assert check_export(model, path, fmt, 224, batch_sizes=(1, 3)) <= 1e-4


@pytest.mark.parametrize("fmt, suffix", [("onnx", "onnx"), ("torchscript", "pt")])
def test_searched_cell_exports_match(tmp_path, fmt, suffix):
    genotype = SearchSpace().sample(random.Random(7))
    model = nasnet.build_network(genotype, cells=2, filters=8, num_classes=10)
    model = calibrated(model, 32)
    path = str(tmp_path / f"child.{suffix}")
    export_model(model, path, fmt, 32)
    assert check_export(model, path, fmt, 32, batch_sizes=(1, 5)) <= 1e-4


def test_export_model_cli_checks_the_export(tmp_path, capsys):
    out = tmp_path / "cifar.onnx"
    assert main(["export-model", "nasnet_a_cifar", "--format", "onnx", "-o", str(out),
                 "--image-size", "32"]) == 0  # fmt: skip
    assert "check: max |difference|" in capsys.readouterr().out and out.stat().st_size > 1e6


def test_the_format_comes_from_the_extension_and_may_not_contradict_it():
    assert resolve_format("m.onnx") == "onnx" and resolve_format("M.PTH") == "torchscript"
    assert resolve_format("model.bin", "onnx") == "onnx"  # an unknown extension: as given
    with pytest.raises(ValueError, match=r"cannot tell the format of model.bin"):
        resolve_format("model.bin")
    with pytest.raises(
        ValueError,
        match=r"onnx does not match the extension of m.pt "
        r"\(torchscript\); name the file .onnx",
    ):
        resolve_format("m.pt", "onnx")


def test_export_model_cli_infers_the_format_and_refuses_a_contradiction(tmp_path, capsys):
    out = tmp_path / "cifar.pt"
    argv = ["export-model", "nasnet_a_cifar", "-o", str(out), "--image-size", "16", "--no-check"]
    assert main(argv) == 0
    assert "(torchscript, input Nx3x16x16)" in capsys.readouterr().out
    assert torch.jit.load(str(out))(torch.zeros(1, 3, 16, 16)).shape == (1, 10)
    wrong = tmp_path / "cifar.onnx"
    assert main([*argv[:3], str(wrong), "--format", "torchscript"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--format: torchscript does not match" in err
    assert not wrong.exists()


def test_features_only_backbone_shapes_and_gradients():
    backbone = nasnet.create_model("nasnet_a_mobile", features_only=True, cells=1, filters=8)
    assert [f["reduction"] for f in backbone.feature_info] == [4, 8, 16, 32]
    x = torch.randn(2, 3, 128, 128, requires_grad=True)
    feats = backbone(x)
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4]
    assert [f.shape[1] for f in feats] == [f["num_chs"] for f in backbone.feature_info]
    sum(f.mean() for f in feats).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    cifar = nasnet.create_model("nasnet_a_cifar", features_only=True, cells=1, filters=8)
    assert [f["reduction"] for f in cifar.feature_info] == [1, 2, 4]
    assert [f.shape[-1] for f in cifar(torch.randn(1, 3, 32, 32))] == [32, 16, 8]


def test_backbone_feature_info_has_timms_accessors():
    """Detection libraries' timm wrappers read channels() and reduction() of feature_info."""
    full = nasnet.create_model("nasnet_a_mobile", cells=1, filters=8)
    stages = full.feature_info
    backbone = nasnet.create_model(
        "nasnet_a_mobile", cells=1, filters=8, features_only=True, out_indices=(1, 3)
    )
    info = backbone.feature_info
    feats = backbone(torch.randn(1, 3, 64, 64))
    assert (
        info.channels()
        == [f.shape[1] for f in feats]
        == [stages[1]["num_chs"], stages[3]["num_chs"]]
    )
    assert info.reduction() == [4, 16] and info.module_name() == [
        stages[1]["module"],
        stages[3]["module"],
    ]
    assert info.channels(0) == stages[0]["num_chs"]  # idx numbers the full model's stages
    assert info.reduction([0, 4]) == [2, 32]
    assert info.get_dicts(keys=["reduction"]) == [{"reduction": 4}, {"reduction": 16}]
    assert info.get_dicts(idx=2) == stages[2]
    assert list(info) == [stages[1], stages[3]] and len(info) == 2  # the list: returned stages
    assert copy.deepcopy(info).channels() == info.channels()
    assert pickle.loads(pickle.dumps(info)).reduction([0]) == [2]


def test_features_only_drops_unused_cells():
    full = nasnet.create_model("nasnet_a_cifar", cells=2, filters=8)
    early = nasnet.create_model(
        "nasnet_a_cifar", cells=2, filters=8, features_only=True, out_indices=(0,)
    )
    assert len(early.body.cells) == 2 < len(full.cells)
    with pytest.raises(ValueError, match="out_indices"):
        nasnet.create_model("nasnet_a_cifar", features_only=True, out_indices=(5,))


def test_export_a_trained_run(tmp_path, capsys):
    from nasnet.train import TrainConfig, load_model, train

    run = str(tmp_path / "run")
    config = TrainConfig(dataset="synthetic", cells=1, filters=4, epochs=1, batch_size=32,
                         threads=1)  # fmt: skip
    assert train(None, config, out_dir=run)["status"] == "done"
    model = load_model(run)
    assert not model.training and model.config.filters == 4
    out = tmp_path / "run.pt"
    assert main(["export-model", run, "--format", "torchscript", "-o", str(out)]) == 0
    assert ": ok" in capsys.readouterr().out


def test_verify_export_reports_diff_tolerance_and_ok(tmp_path):
    model = calibrated(nasnet.build_network(nasnet.NASNET_A, cells=1, filters=8), 32)
    path = str(tmp_path / "child.pt")
    export_model(model, path, "torchscript", 32)
    check = verify_export(model, path, "torchscript", 32)
    assert isinstance(check, ExportCheck) and check.ok and check.batch_sizes == (1, 3)
    assert check.max_diff == check_export(model, path, "torchscript", 32) <= check.tolerance
    assert check.tolerance >= 1e-4
    with torch.no_grad():
        model.classifier.bias += 1.0  # the model moves away from its export
    check = verify_export(model, path, "torchscript", 32)
    assert not check.ok and check.max_diff > check.tolerance >= 1e-4
    with pytest.raises(ValueError, match="format"):
        verify_export(model, path, "tflite", 32)


def test_export_model_cli_refuses_a_mismatch(tmp_path, capsys, monkeypatch):
    import nasnet.cli.export as cli_export

    def broken(model, path, fmt, size):
        return ExportCheck(max_diff=1.0, tolerance=1e-4, ok=False, batch_sizes=(1, 3))

    monkeypatch.setattr(cli_export, "verify_export", broken)
    out = tmp_path / "cifar.pt"
    argv = ["export-model", "nasnet_a_cifar", "--format", "torchscript", "-o", str(out)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert ": MISMATCH" in captured.out
    assert captured.err.strip().count("\n") == 0 and "1.00e+00" in captured.err


def test_outputs_that_are_the_commands_own_input_are_refused(tmp_path, capsys):
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"imported weights")
    argv = ["export-model", "nasnet_a_mobile", "--weights", str(weights), "-o", str(weights)]
    assert main(argv) == 2
    assert "is also the file this command reads; write elsewhere" in capsys.readouterr().err
    assert main(["import-weights", str(weights), "--from", "cadene", "-o", str(weights)]) == 2
    assert "is also the file this command reads" in capsys.readouterr().err
    assert weights.read_bytes() == b"imported weights"


@pytest.mark.parametrize("argv", [
    ["export-model", "nasnet_a_cifar", "--image-size", "16", "--no-check", "-o", "{dir}/m.pt"],
    ["export-model", "nasnet_a_cifar", "--image-size", "16", "--no-check", "-o", "{dir}/m.onnx"],
    ["draw", "nasnet_a", "-o", "{dir}/cell.png"],
])  # fmt: skip
def test_a_full_disk_leaves_the_previous_file_intact(tmp_path, capsys, monkeypatch, argv):
    argv = [a.format(dir=tmp_path) for a in argv]
    output = tmp_path / os.path.basename(argv[-1])
    output.write_bytes(b"an earlier, good file")

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nasnet.files.os, "replace", disk_full)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.endswith(
        f"{output}: cannot write (No space left on device); free some disk space and run again\n"
    )
    assert output.read_bytes() == b"an earlier, good file"
    assert os.listdir(tmp_path) == [output.name]


@pytest.mark.parametrize("form", [["--json"], []])  # plain print, and rich's tables
def test_a_reader_that_goes_away_ends_show_quietly(tmp_path, form):
    directory = str(tmp_path / "exp")
    run_search(directory, SearchConfig(strategy="random", evaluator="toy", executor="inprocess",
                                       budget=80))  # fmt: skip
    env = {**os.environ, "PYTHONPATH": SRC}
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write: no race
    proc = subprocess.Popen([sys.executable, "-m", "nasnet", "show", directory, *form],
                            stdout=write_end, stderr=subprocess.PIPE, env=env)  # fmt: skip
    os.close(write_end)
    assert proc.wait(timeout=60) == 141
    assert proc.stderr.read() == b""


def test_an_export_leaves_the_model_in_its_own_mode(tmp_path):
    model = nasnet.build_network(nasnet.NASNET_A, cells=1, filters=4, auxiliary=True)
    model.train()
    model.aux_head.eval()  # each module's own mode comes back, not just the top one's
    for fmt, name in (("torchscript", "m.pt"), ("onnx", "m.onnx")):
        export_model(model, str(tmp_path / name), fmt, 16)
        verify_export(model, str(tmp_path / name), fmt, 16)
        assert model.training and model.cells[0].training and not model.aux_head.training
