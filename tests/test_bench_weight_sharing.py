"""bench/weight_sharing.py's equal-wall-time comparison: a standalone search stopped on time."""

from __future__ import annotations

import pytest

from nasnet.store import Store
from nasnet.trials import TrialStatus
from tests.conftest import bench_module


@pytest.fixture(scope="module")
def bench():
    """The benchmark as the module ``weight_sharing`` (it imports ``search_quality``)."""
    with bench_module("weight_sharing") as module:
        yield module


def test_a_timed_standalone_search_stops_cleanly_and_keeps_its_children(bench, tmp_path):
    cache = bench.sq.JobCache(str(tmp_path / "jobs.jsonl"))
    directory = str(tmp_path / "random-seed0")
    assert bench.standalone_search(directory, "random", 0, 0.0, cache)["architectures"] == 0

    result = bench.standalone_search(directory, "random", 0, 30.0, cache)  # resumes the store
    with Store.open(directory, readonly=True) as store:
        trials = store.trials()
    done = [t for t in trials if t.status is TrialStatus.DONE]
    assert 0 < result["architectures"] == len(done) < bench.STANDALONE_BUDGET
    assert not [t for t in trials if t.status is TrialStatus.RUNNING]
    assert 30.0 <= result["seconds"] < 120.0
    assert bench.top_cells(directory, 1)[0].proxy == max(t.reward for t in done)

    again = bench.standalone_search(directory, "random", 0, 30.0, cache)  # cached: not re-run
    assert again == result


def test_fidelity_of_a_reused_search_scores_with_its_final_weights(bench, tmp_path, monkeypatch):
    import torch

    import nasnet.evaluators
    from nasnet.search import run_search
    from tests.test_weight_sharing import tiny_config

    directory = str(tmp_path / "ws")
    run_search(directory, tiny_config())
    evaluator = bench.final_evaluator(directory)  # the one that ran the search
    weights, steps = evaluator.state_dict()["params"], evaluator.steps
    assert steps > 0

    monkeypatch.setattr(nasnet.evaluators, "_BUILT", {})  # as in a later process (--out rerun)
    restored = bench.final_evaluator(directory)
    assert restored is not evaluator
    assert restored.steps == steps
    assert torch.equal(restored.state_dict()["params"], weights)
