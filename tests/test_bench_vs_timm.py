"""bench/vs_timm.py compares the same network on both sides, and its comparison runs."""

from __future__ import annotations

import argparse

import pytest

import nasnet
from tests import oracles
from tests.conftest import bench_module


@pytest.fixture(scope="module")
def bench():
    oracles.timm_module()  # the bench takes timm from the oracle cache
    with bench_module("vs_timm") as module:
        yield module


@pytest.mark.parametrize("config", ["large64", "cifar"])
def test_both_sides_are_the_same_network(bench, config):
    timm_nasnet = bench.load_timm()
    ours, size, batch = bench.build(config, "ours", nasnet, timm_nasnet)
    theirs, size_timm, batch_timm = bench.build(config, "timm", None, timm_nasnet)
    assert (size, batch) == (size_timm, batch_timm)
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(ours) == count(theirs)
    assert bench.forward_flops(ours, size) == bench.forward_flops(theirs, size) > 0


def test_the_comparison_reports_the_same_layout_ratio(bench, capsys):
    args = argparse.Namespace(
        compile=False, skip_nchw=True, batch=2, device="cpu", amp=False, warmup=1, rounds=1,
        seconds=0.0, min_steps=1,
    )  # fmt: skip
    sides = {"ours": (nasnet, bench.load_timm()), "timm": (None, bench.load_timm())}
    result = bench.compare("cifar", 1, args, sides)
    assert result["ours, channels_last / timm, channels_last"] > 0
    assert "params ours 219,118, timm 219,118" in capsys.readouterr().out
