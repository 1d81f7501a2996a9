"""Weight-sharing search (``--evaluator shared``): a tiny search to a final ranking through
the CLI, exact resume after an interruption, and the executor check."""

from __future__ import annotations

import json

import pytest

from nasnet.cli import main
from nasnet.evaluators.shared import SharedOptions
from nasnet.options import OptionError
from nasnet.search import run_search
from nasnet.search_config import SearchConfig
from nasnet.store import Store
from nasnet.train import TrainConfig

DATA = "synthetic:classes=4,size=8,train=64,val=32,test=16"
EVALUATOR = {"warmup_steps": 2, "train_steps": 1, "batch_size": 16}


def tiny_config(**overrides) -> SearchConfig:
    child = TrainConfig(dataset=DATA, cells=1, filters=4, epochs=1, eval_test=False)
    options = {"strategy": "random", "evaluator": "shared", "evaluator_options": EVALUATOR,
               "executor": "inprocess", "executor_options": {"threads": 1}, "child": child,
               "budget": 6, "workers": 2, "seed": 3, "blocks": 2,
               "strategy_options": {"checkpoint_every": 2}}  # fmt: skip
    options.update(overrides)
    return SearchConfig(**options)


def trials_of(directory: str) -> list[tuple]:
    with Store.open(directory, readonly=True) as store:
        return [(t.id, t.hash, t.status.value, t.reward, t.metrics.get("search_reward"))
                for t in store.trials()]  # fmt: skip


def test_cli_search_to_a_final_ranking(tmp_path, capsys) -> None:
    out = str(tmp_path / "ws")
    # no --executor: the shared evaluator picks the in-process one
    code = main(["search", "--out", out, "--evaluator", "shared", "--executor-option",
                 "threads=1", "--strategy", "random", "--budget", "4", "--blocks", "2",
                 "--dataset", DATA, "--child-filters", "4", "--seed", "1",
                 "--evaluator-option", "warmup_steps=2",
                 "--evaluator-option", "batch_size=16"])  # fmt: skip
    assert code == 0
    capsys.readouterr()
    assert main(["show", out, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["finished"] == 4
    board = summary["leaderboard"]
    assert board and [e["rank"] for e in board] == list(range(1, len(board) + 1))
    assert [e["reward"] for e in board] == sorted((e["reward"] for e in board), reverse=True)
    with Store.open(out, readonly=True) as store:
        assert store.config()["executor"] == "inprocess"
        # a new search writes down its new-search options; the one given wins
        options = SharedOptions.parse(store.config()["evaluator_options"])
        assert options.normalize_free_ops is True and options.warmup_steps == 2
        for trial in store.trials():
            m = trial.metrics
            assert m["shared_weights"] is True
            assert trial.reward == m["final_val_accuracy"] == m["val_accuracy"]
            assert m["final_val_images"] == 32 and "search_reward" in m
    cells = tmp_path / "cells.json"
    assert main(["export", out, "--top", "2", "-o", str(cells)]) == 0
    exported = json.loads(cells.read_text())
    assert [e["hash"] for e in exported] == [e["hash"] for e in board[:2]]


def _interrupt_after(n: int):
    def on_event(kind, stats, trial) -> None:
        if kind in ("done", "failed") and stats.finished_this_session >= n:
            raise KeyboardInterrupt

    return on_event


@pytest.mark.filterwarnings("error")  # a re-measured child must give its stored reward
def test_interrupted_weight_sharing_search_resumes_exactly(tmp_path) -> None:
    reference = str(tmp_path / "reference")
    run_search(reference, tiny_config())
    resumed = str(tmp_path / "resumed")
    for stop in (3, 1):  # once after a saved state (replays 1 result), once right after one
        with pytest.raises(KeyboardInterrupt):
            run_search(resumed, tiny_config(), on_event=_interrupt_after(stop))
    run_search(resumed, tiny_config())
    expected = trials_of(reference)
    assert trials_of(resumed) == expected
    assert len({t[1] for t in expected}) > 1 and all(t[2] == "done" for t in expected)


def test_stateful_evaluator_needs_an_in_process_executor() -> None:
    with pytest.raises(OptionError) as err:
        tiny_config(executor="local", executor_options={}).check()
    assert err.value.field == "executor"
    assert "inprocess" in str(err.value) and "\n" not in str(err.value)
    tiny_config().check()


@pytest.mark.filterwarnings("error")
def test_extending_a_finished_search_tells_the_search_time_rewards(tmp_path) -> None:
    # the final re-scoring rewrote the rewards of a finished search; a larger budget resumes
    # it from its last saved state (3 results) and replays the 4th result's told reward
    options = {"strategy_options": {"checkpoint_every": 3}}
    reference = str(tmp_path / "reference")
    run_search(reference, tiny_config(budget=6, **options))
    extended = str(tmp_path / "extended")
    run_search(extended, tiny_config(budget=4, **options))
    run_search(extended, tiny_config(budget=6, **options))
    assert trials_of(extended) == trials_of(reference)


def test_a_ranking_near_chance_is_flagged(tmp_path, capsys) -> None:
    from nasnet.evaluators import evaluator_for
    from nasnet.evaluators.base import Task

    config = tiny_config()
    task = Task(trial_id=0, genotype={}, seed=0, evaluator="shared", options=EVALUATOR,
                child=config.child.to_dict(), space=config.space.to_dict())  # fmt: skip
    evaluator = evaluator_for(task)  # 4 classes: chance 0.25, the line is at a median of 0.5
    near_chance = [{"val_accuracy": v} for v in (0.2, 0.3, 0.45, 0.9)]
    warning = evaluator.ranking_warning(near_chance)
    assert warning is not None and "median cell 0.450 (chance 0.250)" in warning
    assert evaluator.ranking_warning([{"val_accuracy": v} for v in (0.3, 0.5, 0.9)]) is None
    assert evaluator.ranking_warning([]) is None

    # the search passes every distinct cell's final score and the CLI prints the line
    out = str(tmp_path / "ws")
    assert main(["search", "--out", out, "--evaluator", "shared", "--strategy", "random",
                 "--budget", "4", "--blocks", "2", "--dataset", DATA, "--child-filters", "4",
                 "--evaluator-option", "warmup_steps=2", "--evaluator-option",
                 "batch_size=16", "--executor-option", "threads=1"]) == 0  # fmt: skip
    printed = capsys.readouterr()
    with Store.open(out, readonly=True) as store:
        finals = {t.hash: {"val_accuracy": t.metrics["final_val_accuracy"]}
                  for t in store.trials()}  # fmt: skip
    expected = evaluator.ranking_warning(list(finals.values()))
    assert "warning:" not in printed.out  # warnings go to stderr
    if expected is None:
        assert "warning:" not in printed.err
    else:
        assert f"nasnet search: warning: {expected}\n" in printed.err


def test_a_resume_replays_children_with_their_thread_count_not_the_driver_s(
    tmp_path, monkeypatch
) -> None:
    """Children run with the executor's ``threads`` (1 here); a driver with another thread
    count must replay them, and score the final ranking, with that same count: float sums,
    hence the shared weights, depend on it."""
    import torch

    from nasnet.evaluators.shared import SharedEvaluator
    from nasnet.runtime import torch_threads

    seen = []
    for name in ("measure", "final_metrics"):
        original = getattr(SharedEvaluator, name)

        def recording(self, *args, _original=original, _name=name):
            seen.append((_name, torch.get_num_threads()))
            return _original(self, *args)

        monkeypatch.setattr(SharedEvaluator, name, recording)
    no_saved_state = {"budget": 4, "strategy_options": {"checkpoint_every": 100}}
    out = str(tmp_path / "resumed")
    with torch_threads(2):
        with pytest.raises(KeyboardInterrupt):  # then all 3 results are replayed
            run_search(out, tiny_config(**no_saved_state), on_event=_interrupt_after(3))
        run_search(out, tiny_config(**no_saved_state))
    assert [n for n, _ in seen].count("measure") == 3 + 3 + 1  # run, replayed, the last one
    assert "final_metrics" in {n for n, _ in seen}
    assert {threads for _, threads in seen} == {1}
