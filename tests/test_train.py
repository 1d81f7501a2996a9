"""Child training: config round trip, result records, determinism, failure, resume, evaluate."""

from __future__ import annotations

import errno
import json
import math
import os
import random

import numpy as np
import pytest
import torch

import nasnet.files
from nasnet.data import make_synthetic
from nasnet.genotypes import NASNET_A
from nasnet.train import (
    EMA,
    TIMING_KEYS,
    TrainConfig,
    cosine_lr,
    evaluate_run,
    make_sgd,
    resolve_genotype,
    train,
)

DATASET = "synthetic:train=96,val=32,test=32,size=8,classes=3"


@pytest.fixture(scope="module")
def data():
    return make_synthetic(classes=3, size=8, train=96, val=32, test=32)


def tiny(**overrides) -> TrainConfig:
    options = dict(dataset=DATASET, cells=1, filters=4, epochs=2, batch_size=32, threads=1)
    options.update(overrides)
    return TrainConfig(**options)


def _read(folder, name: str) -> str:
    with open(os.path.join(folder, name), encoding="utf-8") as fh:
        return fh.read()


def _without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def test_config_json_round_trip_and_unknown_keys():
    config = tiny(ema_decay=0.99, genotype=NASNET_A.to_dict(), label_smoothing=0.1)
    again = TrainConfig.from_json(config.to_json())
    assert again == config
    with pytest.raises(ValueError, match="colour"):
        TrainConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="drop_path_keep_prob"):
        tiny(drop_path_keep_prob=0.0).check()


def test_cosine_lr_schedule():
    assert cosine_lr(0.1, 0, 100) == pytest.approx(0.1)
    assert cosine_lr(0.1, 50, 100) == pytest.approx(0.05)
    assert cosine_lr(0.1, 100, 100) == pytest.approx(0.0)
    assert cosine_lr(0.1, 25, 100) > cosine_lr(0.1, 75, 100)


def test_resolve_genotype(tmp_path):
    assert resolve_genotype("nasnet_a") is NASNET_A
    path = tmp_path / "g.json"
    path.write_text(NASNET_A.to_json())
    assert resolve_genotype(str(path)) == NASNET_A
    with pytest.raises(ValueError, match="unknown genotype"):
        resolve_genotype("nasnet_z")


def test_train_in_memory_returns_a_full_record_and_writes_nothing(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    events = []
    result = train(NASNET_A, tiny(epochs=3), dataset=data, progress=events.append)
    assert result["status"] == "done" and result["reason"] == ""
    assert result["epochs_done"] == 3 and len(result["loss_curve"]) == 3
    assert 0 <= result["val_accuracy"] <= 1 and 0 <= result["test_accuracy"] <= 1
    assert result["params"] > 0 and result["mult_adds"] > 0
    assert result["seconds"] > 0 and result["images_per_sec"] > 0
    assert os.listdir(tmp_path) == []
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "start" and kinds.count("epoch") == 3 and kinds.count("step") == 9
    assert train(NASNET_A, tiny(eval_test=False), dataset=data)["test_accuracy"] is None


def test_training_learns_the_synthetic_task(data):
    result = train(NASNET_A, tiny(epochs=6, batch_size=16, lr=0.05), dataset=data)
    assert result["loss_curve"][-1] < result["loss_curve"][0]
    assert result["val_accuracy"] > 0.6  # 3 classes: chance is 1/3


def test_same_seed_same_result_other_seed_differs(data):
    keys = ("loss_curve", "val_curve", "val_accuracy", "test_accuracy")
    a = train(NASNET_A, tiny(seed=1), dataset=data)
    b = train(NASNET_A, tiny(seed=1), dataset=data)
    c = train(NASNET_A, tiny(seed=2), dataset=data)
    assert all(a[k] == b[k] for k in keys)
    assert a["loss_curve"] != c["loss_curve"]


def test_train_leaves_the_callers_global_rng_and_threads_alone(data):
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    threads = torch.get_num_threads()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    train(NASNET_A, tiny(threads=threads + 1), dataset=data)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    assert torch.get_num_threads() == threads


def test_nchw_and_channels_last_train_the_same_network(data):
    a = train(NASNET_A, tiny(channels_last=True), dataset=data)
    b = train(NASNET_A, tiny(channels_last=False), dataset=data)
    assert a["loss_curve"] == pytest.approx(b["loss_curve"], rel=1e-3)


def test_non_finite_loss_fails_without_raising(data, tmp_path):
    result = train(NASNET_A, tiny(lr=1e12), dataset=data, out_dir=str(tmp_path))
    assert result["status"] == "failed" and result["reason"] == "non-finite loss"
    assert result["val_accuracy"] is None
    saved = json.loads((tmp_path / "result.json").read_text())  # strict JSON: no NaN
    assert saved["status"] == "failed" and saved["reason"] == "non-finite loss"


def test_errors_become_failed_records(data):
    bad = train({"normal": {"blocks": []}, "reduction": {"blocks": []}}, tiny(), dataset=data)
    assert bad["status"] == "failed" and "block" in bad["reason"]
    missing = train(NASNET_A, tiny(dataset="cifar10:/no/such/file"))
    assert missing["status"] == "failed" and "no such file" in missing["reason"]
    assert train(NASNET_A, tiny(epochs=0), dataset=data)["reason"].startswith("epochs")


def test_a_full_disk_fails_the_run_naming_the_file_and_a_rerun_resumes(data, tmp_path, monkeypatch):
    real_replace, checkpoints = os.replace, []

    def disk_full_after_the_first_checkpoint(src, dst):
        if str(dst).endswith("checkpoint.pt"):
            checkpoints.append(dst)
            if len(checkpoints) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(nasnet.files.os, "replace", disk_full_after_the_first_checkpoint)
    result = train(NASNET_A, tiny(epochs=2), dataset=data, out_dir=str(tmp_path))
    assert result["status"] == "failed"
    assert result["reason"] == (
        f"{tmp_path / 'checkpoint.pt'}: cannot write (No space left on device); "
        "free some disk space and run again"
    )
    assert not [name for name in os.listdir(tmp_path) if ".tmp" in name]
    monkeypatch.setattr(nasnet.files.os, "replace", real_replace)
    again = train(NASNET_A, tiny(epochs=2), dataset=data, out_dir=str(tmp_path))
    assert again["status"] == "done" and again["epochs_done"] == 2
    assert again["loss_curve"] == train(NASNET_A, tiny(epochs=2), dataset=data)["loss_curve"]


def test_drop_path_progress_follows_the_step_count(data, monkeypatch):
    from nasnet.network import NASNet

    seen: list[float] = []
    original = NASNet.set_drop_path_progress

    def spy(self, progress: float) -> None:
        seen.append(progress)
        original(self, progress)

    monkeypatch.setattr(NASNet, "set_drop_path_progress", spy)
    train(NASNET_A, tiny(epochs=2), dataset=data)  # 3 steps per epoch
    assert seen == pytest.approx([i / 6 for i in range(6)])


def test_ema_tracks_parameters():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.5)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update(model)
    assert torch.allclose(ema.model.weight, start + 1.0)
    assert not ema.model.weight.requires_grad


def test_ema_changes_the_evaluated_weights(data):
    plain = train(NASNET_A, tiny(), dataset=data)
    averaged = train(NASNET_A, tiny(ema_decay=0.9), dataset=data)
    assert averaged["loss_curve"] == plain["loss_curve"]  # training itself is unchanged
    assert averaged["val_loss"] != plain["val_loss"]


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_steps_like_torchs_multi_tensor_sgd(nesterov):
    """Same updates as ``foreach`` SGD, including for a parameter whose first gradient comes
    after the first step (the fused form's first step is special) and for one never used."""
    torch.manual_seed(0)
    start = [torch.randn(3, 4), torch.randn(5), torch.randn(2, 2)]
    options = dict(lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=5e-4)
    runs = []
    for make in (make_sgd, lambda ps, **o: torch.optim.SGD(ps, foreach=True, **o)):
        params = [p.clone().requires_grad_() for p in start]
        optimizer = make(params, **options)
        for step in range(4):
            optimizer.zero_grad(set_to_none=True)
            used = params[:2] if step else params[:1]  # params[1] joins at step 1; [2] never
            sum((p * (step + 1.0)).square().sum() for p in used).backward()
            optimizer.step()
        runs.append([p.detach() for p in params])
    for ours, reference in zip(*runs, strict=True):
        torch.testing.assert_close(ours, reference)
    assert torch.equal(runs[0][2], start[2])


def test_sgd_is_fused_only_where_torch_has_a_sound_kernel():
    def fused(*params, **options):
        return bool(make_sgd(list(params), lr=0.1, momentum=0.9, **options).defaults.get("fused"))

    weight = torch.zeros(4, requires_grad=True)
    assert fused(weight) is (torch.__version__ >= "2.4")  # CPU's fused SGD came in torch 2.4
    assert not fused(weight, torch.zeros(4, dtype=torch.bfloat16, requires_grad=True))
    assert not fused(weight, dampening=0.5)


def test_out_dir_files_and_evaluate(tmp_path):
    out = str(tmp_path / "run")
    result = train(None, tiny(epochs=2), out_dir=out)
    assert result["status"] == "done"
    assert sorted(os.listdir(out)) == [
        "checkpoint.pt", "config.json", "metrics.jsonl", "result.json"
    ]  # fmt: skip
    rows = [json.loads(line) for line in _read(out, "metrics.jsonl").splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    saved = json.loads(_read(out, "result.json"))
    for key in ("status", "val_accuracy", "test_accuracy", "params", "mult_adds", "seconds"):
        assert saved[key] == result[key]
    config = json.loads(_read(out, "config.json"))
    assert config["genotype"] == NASNET_A.to_dict()
    report = evaluate_run(out)
    assert report["val_accuracy"] == result["val_accuracy"]
    assert report["test_accuracy"] == result["test_accuracy"]
    assert math.isclose(report["val_loss"], rows[-1]["val_loss"], rel_tol=1e-6)


def test_interrupted_run_resumes_to_the_same_metrics(tmp_path):
    config = tiny(epochs=3, ema_decay=0.9, cutout=2)
    clean = train(None, config, out_dir=str(tmp_path / "clean"))

    def stop_after_epoch_2(event: dict) -> None:
        if event["kind"] == "step" and event["epoch"] == 3 and event["step"] == 2:
            raise KeyboardInterrupt

    out = str(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        train(None, config, out_dir=out, progress=stop_after_epoch_2)
    assert len(_read(out, "metrics.jsonl").splitlines()) == 2
    resumed = train(None, config, out_dir=out)
    assert resumed["loss_curve"] == clean["loss_curve"]
    assert resumed["test_accuracy"] == clean["test_accuracy"]
    lines = [_read(d, "metrics.jsonl") for d in (out, tmp_path / "clean")]
    rows = [_without_timing([json.loads(x) for x in text.splitlines()]) for text in lines]
    assert rows[0] == rows[1]


def test_out_dir_of_another_run_is_left_alone(tmp_path):
    out = str(tmp_path / "run")
    train(None, tiny(epochs=1), out_dir=out)
    before = _read(out, "result.json")
    other = train(None, tiny(epochs=1, filters=6), out_dir=out)
    assert other["status"] == "failed" and "filters" in other["reason"]
    assert _read(out, "result.json") == before


def test_rerunning_without_the_test_split_is_refused_and_keeps_the_test_accuracy(tmp_path):
    out = str(tmp_path / "run")
    assert train(None, tiny(epochs=1), out_dir=out)["test_accuracy"] is not None
    before = _read(out, "result.json"), _read(out, "config.json")
    again = train(None, tiny(epochs=1, eval_test=False), out_dir=out)
    assert again["status"] == "failed" and "eval_test" in again["reason"]
    assert (_read(out, "result.json"), _read(out, "config.json")) == before


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_a_damaged_checkpoint_fails_the_rerun_and_leaves_the_result_alone(tmp_path, damage):
    out = str(tmp_path / "run")
    train(None, tiny(epochs=1), out_dir=out)
    before = _read(out, "result.json")
    checkpoint = os.path.join(out, "checkpoint.pt")
    if damage == "truncated":
        with open(checkpoint, "rb") as fh:
            head = fh.read(50)
        with open(checkpoint, "wb") as fh:
            fh.write(head)
    else:  # a readable torch file that is not this run's checkpoint
        torch.save({"model": {}, "epoch": 1}, checkpoint)
    again = train(None, tiny(epochs=1), out_dir=out)
    assert again["status"] == "failed" and "checkpoint.pt" in again["reason"]
    assert _read(out, "result.json") == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_run_for_a_missing_gpu_writes_nothing_so_the_cpu_can_take_the_directory(tmp_path):
    out = str(tmp_path / "run")
    failed = train(None, tiny(epochs=1, device="cuda"), out_dir=out)
    assert failed["status"] == "failed" and "no CUDA device" in failed["reason"]
    assert not os.path.exists(out) or os.listdir(out) == []
    assert train(None, tiny(epochs=1, device="cpu"), out_dir=out)["status"] == "done"
