"""``nasnet train`` / ``nasnet evaluate`` end to end, including a SIGKILL and a resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nasnet.cli import main
from nasnet.train import TIMING_KEYS

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = [
    "--dataset", "synthetic:train=256,size=16,classes=4", "--cells", "1", "--filters", "4",
    "--batch-size", "32", "--threads", "1", "--seed", "3",
]  # fmt: skip


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "nasnet", "train", *TINY, *args]


def _metrics(out: Path) -> list[dict]:
    text = (out / "metrics.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def _wait_for_epochs(proc: subprocess.Popen, metrics: Path, epochs: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= epochs:
            return
        time.sleep(0.01)
    raise AssertionError(f"no epoch {epochs} in {metrics} (exit code {proc.poll()})")


@pytest.mark.slow
def test_killed_run_resumes_to_the_metrics_of_an_uninterrupted_run(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(
        _command("--epochs", "5", "--out", str(killed), "--quiet"),
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for_epochs(proc, killed / "metrics.jsonl", 2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert len(_metrics(killed)) == 2 and not (killed / "result.json").exists()

    resumed = subprocess.run(
        _command("--epochs", "5", "--out", str(killed)),
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "epoch 1/5" not in resumed.stderr and "epoch 3/5" in resumed.stderr  # resumed at 3
    uninterrupted = subprocess.run(
        _command("--epochs", "5", "--out", str(clean), "--quiet"),
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    assert _metrics(killed) == _metrics(clean) and len(_metrics(clean)) == 5
    results = [json.loads((d / "result.json").read_text()) for d in (killed, clean)]
    for key in ("val_accuracy", "test_accuracy", "loss_curve", "params", "mult_adds"):
        assert results[0][key] == results[1][key]


def test_non_finite_loss_exits_non_zero_with_one_line(tmp_path):
    out = tmp_path / "nan"
    proc = subprocess.run(
        _command("--epochs", "2", "--lr", "1e12", "--out", str(out), "--quiet"),
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if "nasnet train:" in line]
    assert errors == ["nasnet train: child failed: non-finite loss"]
    assert proc.stderr.strip().splitlines()[-1] == errors[0]
    result = json.loads((out / "result.json").read_text())
    assert (result["status"], result["reason"]) == ("failed", "non-finite loss")


def test_train_then_evaluate_in_process(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *TINY, "--epochs", "2", "--cutout", "4", "--out", out]) == 0
    printed = capsys.readouterr()
    assert "val accuracy" in printed.out and "epoch 2/2" in printed.err
    result = json.loads((Path(out) / "result.json").read_text())
    assert main(["evaluate", out]) == 0
    assert f"test accuracy {100 * result['test_accuracy']:.2f} %" in capsys.readouterr().out
    assert main(["evaluate", out, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["val_accuracy"] == result["val_accuracy"] and report["epochs_done"] == 2
    # options not repeated come from the saved run: this only re-evaluates the finished run
    assert main(["train", "--out", out, "--quiet"]) == 0
    assert (
        json.loads((Path(out) / "result.json").read_text())["val_accuracy"]
        == result["val_accuracy"]
    )


def test_user_errors_are_one_line_exit_2(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--dataset", f"cifar10:{tmp_path}/none", "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nasnet train: error: --dataset:") and "\n" not in err and "cifar" in err
    assert main(["train", "--genotype", "nasnet_q", "--out", out]) == 2
    assert "unknown genotype" in capsys.readouterr().err
    assert main(["train", *TINY, "--epochs", "1", "--out", out, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["train", *TINY, "--epochs", "1", "--filters", "8", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--filters:" in err and "holds a run with 4, not 8" in err
    assert main(["evaluate", str(tmp_path / "empty")]) == 2
    assert "not found" in capsys.readouterr().err


def test_a_second_train_on_the_same_folder_is_refused(tmp_path, capsys):
    from nasnet.lock import TRAIN_BUSY, TRAIN_LOCK_NAME, ExperimentLock

    out = tmp_path / "run"
    with ExperimentLock(str(out), TRAIN_LOCK_NAME, TRAIN_BUSY):  # as the first process holds it
        assert main(["train", *TINY, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "another 'nasnet train' is running in this folder (pid" in err
    assert sorted(os.listdir(out)) == [TRAIN_LOCK_NAME]
    assert main(["train", *TINY, "--out", str(out), "--quiet"]) == 0


def test_a_cutout_larger_than_the_images_is_refused_and_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--cutout", "17", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--cutout: 17 pixels is more than the 16-pixel images" in err
    assert not out.exists()


def test_a_relative_dataset_path_is_saved_absolute_and_resumes_in_any_spelling(
    tmp_path, capsys, monkeypatch
):
    import numpy as np
    from PIL import Image

    from nasnet.data import given_spec

    for label in ("cat", "dog"):
        (tmp_path / "pics" / label).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(
                tmp_path / "pics" / label / f"{i}.png"
            )
    monkeypatch.chdir(tmp_path)
    tiny = ["--cells", "1", "--filters", "4", "--threads", "1", "--image-size", "8",
            "--batch-size", "4", "--quiet"]  # fmt: skip
    assert main(["train", *tiny, "--dataset", "folder:pics", "--out", "run"]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["dataset"]
    assert saved == f"folder:{tmp_path / 'pics'}"
    assert main(["train", *tiny, "--dataset", "folder:./pics/", "--out", "run"]) == 0  # resumes
    monkeypatch.chdir(tmp_path / "pics")
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run")]) == 0  # from another working directory
    assert "val accuracy" in capsys.readouterr().out
    # a run saved with a relative path by an earlier nasnet keeps it, from the same folder
    monkeypatch.chdir(tmp_path)
    assert given_spec("folder:pics/", "folder:pics") == "folder:pics"


def test_a_run_refuses_data_that_changed_since_it_was_trained(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    pics = tmp_path / "pics"
    for label in ("cat", "dog"):
        (pics / label).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.full((8, 8, 3), 10 * i + 100 * (label == "dog"), np.uint8)).save(
                pics / label / f"{i}.png"
            )
    out = str(tmp_path / "run")
    tiny = ["--cells", "1", "--filters", "4", "--threads", "1", "--image-size", "8",
            "--batch-size", "4", "--epochs", "2", "--quiet", "--dataset", f"folder:{pics}",
            "--out", out]  # fmt: skip
    assert main(["train", *tiny]) == 0
    result = (tmp_path / "run" / "result.json").read_text()
    assert main(["evaluate", out]) == 0
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(pics / "cat" / "extra.png")  # reshuffles
    capsys.readouterr()
    assert main(["evaluate", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not the data this run was trained on" in err
    assert main(["train", *tiny]) == 1  # a resume fails, its result kept
    assert "not the data this run was trained on" in capsys.readouterr().err
    assert (tmp_path / "run" / "result.json").read_text() == result
