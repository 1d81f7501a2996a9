"""The search loop: config resolution, reuse, failures, executors and exact resume
(in process and with SIGKILL)."""

from __future__ import annotations

import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from typing import ClassVar

import pytest

from nasnet import evaluators
from nasnet.evaluators import Task, cost_aware_reward, run_trial, toy_reward, toy_target
from nasnet.evaluators.toy import ToyEvaluator
from nasnet.executors import InProcessExecutor, LocalExecutor
from nasnet.genotypes import NASNET_A_FIGURE
from nasnet.options import OptionError
from nasnet.search import Search, SearchError, open_experiment, run_search
from nasnet.search_config import SearchConfig, resolve_config, trial_seed
from nasnet.space import Block, Cell, Genotype, SearchSpace
from nasnet.store import DB_NAME, Store, StoreError
from nasnet.strategies import STRATEGIES, Proposal, Strategy, make_strategy
from nasnet.strategies.base import state_digest, state_from_bytes
from nasnet.trials import TrialOutcome, TrialStatus


def toy_config(strategy_options=None, evaluator_options=None, **options) -> SearchConfig:
    """A toy search run in process; the parts' options go in their own dicts."""
    return SearchConfig(evaluator="toy", executor="inprocess",
                        strategy_options=strategy_options or {},
                        evaluator_options=evaluator_options or {}, **options)  # fmt: skip


def trials_of(directory: str) -> list[tuple]:
    with Store.open(directory, readonly=True) as store:
        return [(t.id, t.hash, t.status, t.reward) for t in store.trials()]


def last_state_digest(directory: str) -> tuple[int, str] | None:
    with Store.open(directory, readonly=True) as store:
        saved = store.last_state()
    return None if saved is None else (saved[0], state_digest(state_from_bytes(saved[2])))


# --------------------------------------------------------------------------- config


def test_resolve_config_new_and_resumed() -> None:
    config = resolve_config(None, {"strategy": "random", "budget": 7})
    assert (config.strategy, config.budget, config.workers) == ("random", 7, 2)
    saved = config.to_dict()
    resumed = resolve_config(saved, {"budget": 9, "workers": 1, "strategy": "random"})
    assert (resumed.budget, resumed.workers, resumed.seed) == (9, 1, 0)
    with pytest.raises(OptionError, match=r"^strategy: this experiment was created with 'random'"):
        resolve_config(saved, {"strategy": "ppo"})
    with pytest.raises(OptionError, match=r"^child.epochs: this experiment was created with 2"):
        resolve_config(saved, {"child": {"epochs": 5}})
    resumed = resolve_config(saved, {"child": {"threads": 2}, "executor": "inprocess"})
    assert resumed.child.threads == 2 and resumed.executor == "inprocess"
    ppo = resolve_config(None, {"strategy": "ppo", "strategy_options": {"settings": "paper"}})
    with pytest.raises(OptionError, match=r"^strategy_options.lr: this experiment was created "
                                          r"with 0.00035, not 0.01"):  # fmt: skip
        resolve_config(ppo.to_dict(), {"strategy_options": {"lr": 0.01}})
    assert resolve_config(ppo.to_dict(), {"strategy_options": {"lr": 0.00035}}).strategy == "ppo"


SMALL = {
    "ppo": ({"lr": 0.005, "batch_size": 10}, "lr", 0.002),
    "reinforce": ({"lr": 0.005, "batch_size": 10}, "lr", 0.002),
    "evolution": ({"population": 20, "sample_size": 5}, "population", 40),
}


@pytest.mark.parametrize("strategy", sorted(SMALL))
def test_small_budgets_get_small_budget_settings(strategy: str) -> None:
    """A new search under 2,000 children saves the strategy's small-budget values for the
    options not given; the published ones above that or on request; the saved values survive
    a resume."""
    values, name, value = SMALL[strategy]
    small = resolve_config(None, {"strategy": strategy, "budget": 300})
    assert small.strategy_options == {**values, "settings": "small"}
    opts = make_strategy(strategy, small.space, 0, **small.strategy_options).opts
    assert all(getattr(opts, k) == v for k, v in values.items())
    given = resolve_config(None, {"strategy": strategy, "strategy_options": {name: value}})
    assert given.strategy_options == {**values, name: value, "settings": "small"}
    large = resolve_config(None, {"strategy": strategy, "budget": 20000})
    assert large.strategy_options == {"settings": "paper"}
    paper = resolve_config(None, {"strategy": strategy, "strategy_options": {"settings": "paper"}})
    assert paper.strategy_options == {"settings": "paper"}
    resumed = resolve_config(small.to_dict(), {"budget": 5000})
    assert resumed.strategy_options == small.strategy_options
    with pytest.raises(OptionError, match=r"^strategy_options.settings: this experiment was "
                                          r"created with 'small', not 'paper'"):  # fmt: skip
        resolve_config(small.to_dict(), {"strategy_options": {"settings": "paper"}})
    with pytest.raises(OptionError, match=r"^strategy_options.settings: must be one of auto"):
        resolve_config(None, {"strategy": strategy, "strategy_options": {"settings": "fast"}})
    assert resolve_config(None, {"strategy": "random"}).strategy_options == {}


def test_a_small_given_population_keeps_a_small_tournament() -> None:
    config = resolve_config(None, {"strategy": "evolution", "strategy_options": {"population": 3}})
    assert config.strategy_options == {"population": 3, "sample_size": 3, "settings": "small"}


def test_config_checks_name_the_field() -> None:
    with pytest.raises(OptionError, match=r"^strategy_options.population: not an option of "
                                          r"strategy 'ppo'; its options are lr, "):  # fmt: skip
        resolve_config(None, {"strategy": "ppo", "strategy_options": {"population": 10}})
    with pytest.raises(OptionError, match=r"^budget: must be at least 1, got 0"):
        resolve_config(None, {"budget": 0})
    with pytest.raises(OptionError, match=r"^executor: inprocess cannot run children that may"):
        resolve_config(None, {"evaluator": "toy", "evaluator_options": {"crash_rate": 0.5},
                              "executor": "inprocess"})  # fmt: skip
    with pytest.raises(OptionError, match=r"^evaluator_options.noise: must be a finite number"):
        resolve_config(None, {"evaluator": "toy", "evaluator_options": {"noise": math.nan}})
    with pytest.raises(OptionError, match=r"^child.lr: must be a finite number > 0, got -1.0"):
        resolve_config(None, {"child": {"lr": -1.0}})
    with pytest.raises(OptionError, match=r"^strategy: unknown strategy 'hill'; choose ppo"):
        resolve_config(None, {"strategy": "hill"})
    config = resolve_config(
        None, {"strategy": "evolution", "strategy_options": {"population": "8", "sample_size": 3}}
    )
    assert config.build_strategy_options().population == 8  # strings from the CLI are typed


def test_saved_config_round_trips_and_old_layout_converts() -> None:
    config = toy_config(strategy_options={"lr": 0.01}, evaluator_options={"delay": 0.5})
    assert SearchConfig.from_dict(config.to_dict()) == config
    flat = {"strategy": "ppo", "dataset": "digits", "budget": 20, "workers": 2, "seed": 0,
            "blocks": 5, "evaluator": "toy", "executor": "local", "reuse": True, "threads": 1,
            "max_failures": None, "child_cells": 1, "child_filters": 8, "child_epochs": 3,
            "child_batch_size": None, "child_lr": 0.1, "image_size": None,
            "controller_lr": 0.005, "controller_batch": None, "ppo_epochs": None,
            "entropy_weight": None, "population": None, "sample_size": None,
            "mult_adds_target": None, "cost_weight": 0.0, "toy_delay": 0.0,
            "toy_fail_rate": 0.1, "toy_crash_rate": 0.0, "toy_noise": 0.0, "toy_target_seed": 0,
            "ray_address": None, "cpus_per_child": 1.0, "gpus_per_child": 0.0,
            "max_retries": 3}  # fmt: skip
    old = SearchConfig.from_dict(flat)
    assert old.strategy_options == {"lr": 0.005}
    assert old.evaluator_options == {"fail_rate": 0.1}
    assert old.executor_options == {}
    assert (old.child.epochs, old.child.lr, old.child.device) == (3, 0.1, "cpu")
    assert not old.child.eval_test


def test_trial_seeds_derive_from_experiment_seed_and_id() -> None:
    seeds = {trial_seed(0, i) for i in range(1, 200)}
    assert len(seeds) == 199
    assert trial_seed(0, 5) == trial_seed(0, 5) != trial_seed(1, 5)


def test_search_on_existing_experiment_checks_config(tmp_path) -> None:
    run_search(str(tmp_path), toy_config(strategy="random", budget=3))
    with pytest.raises(OptionError, match=r"^strategy"):
        run_search(str(tmp_path), toy_config(strategy="evolution", budget=3))


# --------------------------------------------------------------------------- rewards


def test_cost_aware_reward_formula() -> None:
    assert cost_aware_reward(0.8, 50.0, 100.0, 0.5) == 0.8  # within budget: unchanged
    assert cost_aware_reward(0.8, 400.0, 100.0, 0.5) == pytest.approx(0.8 * 0.5)
    assert cost_aware_reward(0.8, 200.0, 100.0, 1.0) == pytest.approx(0.4)
    assert cost_aware_reward(0.8, 400.0, None, 0.5) == 0.8  # no target: off
    assert cost_aware_reward(0.8, None, 100.0, 0.5) == 0.8  # unknown cost


def test_toy_reward_has_its_optimum_at_the_target() -> None:
    space = SearchSpace()
    target = toy_target(space)
    assert toy_reward(target, space) == 1.0
    rng = random.Random(0)
    others = [toy_reward(space.sample(rng), space) for _ in range(200)]
    assert max(others) < 0.6 and min(others) > 0.0
    assert toy_reward(target, space, target_seed=1) < 0.7  # another hidden target


def test_cost_aware_reward_in_a_search(tmp_path) -> None:
    options = {"mult_adds_target": 4e6, "cost_weight": 1.0}
    run_search(str(tmp_path), toy_config(strategy="random", budget=6, evaluator_options=options))
    with Store.open(str(tmp_path), readonly=True) as store:
        trials = store.trials("done")
    for t in trials:
        expected = t.metrics["val_accuracy"] * min(1.0, 4e6 / t.mult_adds)
        assert t.reward == pytest.approx(expected)
    assert any(t.reward < t.metrics["val_accuracy"] for t in trials)


# --------------------------------------------------------------------------- reuse


class RepeatStrategy(Strategy):
    """Proposes A, B, A' (A with swapped operands: the same canonical hash), A, B, ..."""

    name = "repeat"

    def __init__(self, space: SearchSpace, seed: int) -> None:
        super().__init__(space, seed)
        rng = random.Random(seed)
        a, b = space.sample(rng), space.sample(rng)
        self.cycle = [a, b, _swap_operands(a)]
        self.rewards: list[float | None] = []

    def ask(self) -> Proposal:
        genotype = self.cycle[self.asked % 3]
        proposal = Proposal(self.asked, genotype, self.space.encode(genotype))
        self.asked += 1
        return proposal

    def tell(self, proposal: Proposal, reward: float | None) -> bool:
        self._count_tell(reward)
        self.rewards.append(reward)
        return False


def _swap_operands(genotype: Genotype) -> Genotype:
    def swap(cell: Cell) -> Cell:
        return Cell(
            tuple(Block(b.input_2, b.input_1, b.op_2, b.op_1, b.combine) for b in cell.blocks)
        )

    return Genotype(swap(genotype.normal), swap(genotype.reduction))


@pytest.mark.parametrize("reuse", [True, False])
def test_equivalent_cells_reuse_the_stored_result(tmp_path, monkeypatch, reuse: bool) -> None:
    monkeypatch.setitem(STRATEGIES, "repeat", RepeatStrategy)
    calls = []

    def counting(task):
        calls.append(task.trial_id)
        return run_trial(task)

    config = toy_config(strategy="repeat", budget=7, workers=1, reuse=reuse)
    with open_experiment(str(tmp_path), config) as experiment:
        search = Search(experiment, fn=counting)
        stats = search.run()
    assert stats.finished == 7 and search.strategy.told == 7
    with Store.open(str(tmp_path), readonly=True) as store:
        trials = store.trials()
    assert len({t.hash for t in trials}) == 2
    if reuse:
        assert calls == [1, 2]
        assert [t.reused_from for t in trials] == [None, None, 1, 1, 2, 1, 1]
        assert all(t.reward == trials[t.reused_from - 1].reward for t in trials if t.reused_from)
    else:
        assert calls == list(range(1, 8))
        assert all(t.reused_from is None for t in trials)
    assert search.strategy.rewards == [t.reward for t in trials]


# --------------------------------------------------------------------------- failures


def test_failing_children_are_recorded_and_the_budget_is_reached(tmp_path) -> None:
    config = toy_config(strategy="random", budget=30, evaluator_options={"fail_rate": 0.3})
    stats = run_search(str(tmp_path), config)
    with Store.open(str(tmp_path), readonly=True) as store:
        counts, failed = store.counts(), store.trials("failed")
    assert counts["done"] == 30 == stats.finished
    assert len(failed) == counts["failed"] == stats.failed >= 3
    for trial in failed:
        assert trial.reward is None and trial.tell_seq is not None
        assert "RuntimeError: toy child failed on purpose" in trial.error


class FlakyEvaluator(ToyEvaluator):
    """Raises for its first child, gives a NaN accuracy for its second, then 0.5."""

    calls: ClassVar[list[int]] = []

    def measure(self, genotype, seed, context):
        self.calls.append(seed)
        if len(self.calls) == 1:
            raise ValueError("bad cell")
        return {"val_accuracy": math.nan if len(self.calls) == 2 else 0.5}


def test_raising_or_non_finite_evaluators_fail_their_child(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(evaluators.EVALUATORS, "flaky", FlakyEvaluator)
    monkeypatch.setattr(FlakyEvaluator, "calls", [])
    config = toy_config(strategy="random", budget=5, seed=1)
    config.evaluator = "flaky"
    stats = run_search(str(tmp_path), config)
    with Store.open(str(tmp_path), readonly=True) as store:
        errors = [t.error for t in store.trials("failed")]
    assert stats.finished == 5 and len(FlakyEvaluator.calls) == 7
    assert errors[0].startswith("ValueError: bad cell")
    assert errors[1] == "non-finite validation accuracy: nan"


def test_too_many_failures_stop_the_search(tmp_path) -> None:
    # the 8th failure is told with 2 more children asked (lookahead 3 for 2 workers), which
    # are waited for: 10, whichever finishes first
    limit = r"stopped: 10 children failed \(limit 8, max_failures\); last error: RuntimeError"
    failing = {"fail_rate": 1.0}
    with pytest.raises(SearchError, match=limit):
        run_search(str(tmp_path), toy_config(strategy="random", budget=4,
                                             evaluator_options=failing))  # fmt: skip
    statuses = [t[2] for t in trials_of(str(tmp_path))]
    assert statuses == ["failed"] * 10
    with pytest.raises(SearchError, match=r"stopped: 14 children failed \(limit 12"):
        run_search(str(tmp_path), toy_config(strategy="random", budget=4, max_failures=12,
                                             evaluator_options=failing))  # fmt: skip


# --------------------------------------------------------------------------- executors


def _toy_task(trial_id: int, delay: float, evaluator: str = "toy") -> Task:
    config = SearchConfig()
    return Task(trial_id=trial_id, genotype=NASNET_A_FIGURE.to_dict(), seed=trial_id,
                evaluator=evaluator, options={"delay": delay}, child=config.child.to_dict(),
                space=SearchSpace().to_dict())  # fmt: skip


def test_shared_data_for_remote_workers(monkeypatch) -> None:
    from nasnet.evaluators import train as train_evaluator

    monkeypatch.setattr(train_evaluator, "_DATASETS", {})
    child = SearchConfig().child.to_dict() | {"image_size": 12}
    task = Task(1, NASNET_A_FIGURE.to_dict(), 1, "train", {}, child, SearchSpace().to_dict())
    evaluator = evaluators.evaluator_for(task)
    assert evaluator.shared_data_key() == ("digits", 12)
    assert evaluators.evaluator_for(_toy_task(1, 0)).shared_data_key() is None
    marker = object()
    evaluator.use_shared_data(marker)
    assert evaluator.load_shared_data() is marker


def test_trial_outcomes_are_validated_once() -> None:
    assert TrialOutcome.done(0.5, {"params": 3}).ok
    assert TrialOutcome.done(math.nan).error == "non-finite or missing reward: nan"
    assert TrialOutcome.done(None).status is TrialStatus.FAILED
    assert TrialOutcome.failed(None).error == "no error text"
    assert TrialOutcome.from_dict({"status": "done", "reward": 1}).reward == 1.0
    assert TrialOutcome.from_dict("garbage").error == "evaluator returned 'garbage'"


def test_inprocess_executor_contract() -> None:
    executor = InProcessExecutor()
    assert executor.next_result(0) is None
    executor.submit(4, _toy_task(4, 0))
    executor.submit(5, _toy_task(5, 0, evaluator="nope"))
    assert executor.running == 2
    first, second = executor.next_result(), executor.next_result()
    assert (first.trial_id, first.outcome.status) == (4, TrialStatus.DONE)
    assert (second.trial_id, second.outcome.status) == (5, TrialStatus.FAILED)
    assert "OptionError: evaluator: unknown evaluator 'nope'" in second.outcome.error
    assert executor.running == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")
def test_local_workers_ignore_ctrl_c_from_their_first_instant() -> None:
    """A Ctrl-C at the terminal reaches the workers too: one still importing torch printed a
    traceback. They start with SIGINT ignored (the driver stops them)."""
    before = signal.getsignal(signal.SIGINT)
    executor = LocalExecutor(workers=1)
    try:
        pid = executor.workers[0].process.pid
        with open(f"/proc/{pid}/status") as f:  # at once: the worker is still importing
            ignored = int(next(ln for ln in f if ln.startswith("SigIgn:")).split()[1], 16)
        assert ignored & (1 << (signal.SIGINT - 1))
    finally:
        executor.shutdown()
    assert signal.getsignal(signal.SIGINT) is before  # the driver's own handler is back


def test_local_executor_survives_a_killed_worker() -> None:
    executor = LocalExecutor(workers=2)
    try:
        executor.submit(1, _toy_task(1, 60))
        executor.submit(2, _toy_task(2, 0.1))
        quick = executor.next_result(timeout=120)
        assert quick is not None and quick.trial_id == 2 and quick.outcome.ok
        assert quick.outcome.reward == toy_reward(NASNET_A_FIGURE, SearchSpace())
        (victim,) = [w.process.pid for w in executor.workers if w.trial and w.trial[0] == 1]
        os.kill(victim, signal.SIGKILL)
        dead = executor.next_result(timeout=60)
        assert dead is not None and dead.trial_id == 1
        assert dead.outcome.status is TrialStatus.FAILED
        assert f"worker process {victim} died (exit code -9)" in dead.outcome.error
        executor.submit(3, _toy_task(3, 0))
        again = executor.next_result(timeout=120)
        assert again is not None and again.trial_id == 3 and again.outcome.ok
        assert victim not in [w.process.pid for w in executor.workers]
    finally:
        executor.shutdown()


def test_search_goes_on_when_worker_processes_die(tmp_path) -> None:
    config = SearchConfig(strategy="random", evaluator="toy", executor="local", workers=2,
                          budget=12, seed=0, evaluator_options={"crash_rate": 0.25})  # fmt: skip
    stats = run_search(str(tmp_path), config)
    with Store.open(str(tmp_path), readonly=True) as store:
        failed = store.trials("failed")
    assert stats.finished == 12 and len(failed) == stats.failed >= 1
    assert all("died (exit code 17)" in t.error for t in failed)


# --------------------------------------------------------------------------- resume


def _interrupt_after(n: int):
    def on_event(kind, stats, trial) -> None:
        if kind in ("done", "failed") and stats.finished_this_session >= n:
            raise KeyboardInterrupt

    return on_event


def test_a_resume_refused_on_a_damaged_state_changes_nothing(tmp_path) -> None:
    options = {"strategy": "ppo", "budget": 6, "workers": 1, "seed": 4,
               "strategy_options": {"batch_size": 2}}  # fmt: skip
    run_search(str(tmp_path), toy_config(**options))
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute("UPDATE strategy_states SET state = x'00ff' WHERE id = (SELECT MAX(id) "
                     "FROM strategy_states)")  # fmt: skip

    def contents() -> list:
        with sqlite3.connect(tmp_path / DB_NAME) as conn:
            return [conn.execute(f"SELECT * FROM {table}").fetchall()
                    for table in ("config", "trials", "strategy_states", "resumes")]  # fmt: skip

    before = contents()
    with pytest.raises(StoreError, match=r"saved strategy state \d+ is damaged"):
        run_search(str(tmp_path), toy_config(**{**options, "budget": 9}))
    with Store.open(str(tmp_path), readonly=True) as store:
        assert store.config()["budget"] == 6  # the new budget was not written
    assert contents() == before


def test_interrupted_search_resumes_exactly(tmp_path) -> None:
    options = {"strategy": "ppo", "budget": 30, "workers": 3, "seed": 4,
               "strategy_options": {"batch_size": 4, "lr": 0.01},
               "evaluator_options": {"fail_rate": 0.1}}  # fmt: skip
    reference = str(tmp_path / "reference")
    run_search(reference, toy_config(**options))
    resumed = str(tmp_path / "resumed")
    expected_states = []
    for stop in (6, 9):
        with pytest.raises(KeyboardInterrupt):
            run_search(resumed, toy_config(**options), on_event=_interrupt_after(stop))
        expected_states.append(last_state_digest(resumed))
    run_search(resumed, toy_config(**options))
    assert trials_of(resumed) == trials_of(reference)
    assert last_state_digest(resumed)[1] == last_state_digest(reference)[1]
    with Store.open(resumed, readonly=True) as store:
        resumes = store.resumes()
    assert [(r["state_id"], r["state_digest"]) for r in resumes] == expected_states


class NewestFirstExecutor(InProcessExecutor):
    """Runs the newest submitted trial first: results arrive out of the order asked."""

    def next_result(self, timeout=None):
        self.queue.rotate(1)
        return super().next_result(timeout)


@pytest.mark.parametrize("strategy", ["ppo", "evolution"])
def test_the_trials_do_not_depend_on_which_child_finishes_first(tmp_path, strategy) -> None:
    options = {"strategy": strategy, "budget": 24, "workers": 3, "seed": 5,
               "strategy_options": {"batch_size": 4} if strategy == "ppo" else
               {"population": 6, "sample_size": 3}}  # fmt: skip
    run_search(str(tmp_path / "in_order"), toy_config(**options))
    run_search(str(tmp_path / "newest_first"), toy_config(**options),
               executor=NewestFirstExecutor())  # fmt: skip
    assert trials_of(str(tmp_path / "newest_first")) == trials_of(str(tmp_path / "in_order"))


def test_a_stop_while_a_result_is_recorded_leaves_no_trial_running(tmp_path, monkeypatch):
    real_tell, calls = Search._tell, []

    def tell_then_stop(self, *args):
        calls.append(1)
        if len(calls) == 3:  # inside the transaction that records the third result
            raise KeyboardInterrupt
        return real_tell(self, *args)

    monkeypatch.setattr(Search, "_tell", tell_then_stop)
    options = {"strategy": "random", "budget": 6, "workers": 2, "seed": 3}
    with pytest.raises(KeyboardInterrupt):
        run_search(str(tmp_path), toy_config(**options))
    statuses = [t[2] for t in trials_of(str(tmp_path))]
    # the third result came in its turn: it is stored with its tell, and both rolled back
    assert "running" not in statuses and statuses.count("done") == 2
    monkeypatch.setattr(Search, "_tell", real_tell)
    run_search(str(tmp_path), toy_config(**options))
    assert [t[2] for t in trials_of(str(tmp_path))] == ["done"] * 6


def test_lowering_the_budget_leaves_unfinished_trials_queued(tmp_path) -> None:
    options = {"strategy": "random", "workers": 3, "seed": 2}
    with pytest.raises(KeyboardInterrupt):
        run_search(str(tmp_path), toy_config(budget=10, **options), on_event=_interrupt_after(3))
    # 3 told, and 7 asked (lookahead 5 for 3 workers, after the second tell; the stop came
    # in the third's event); the stop marked the running ones queued: none is shown running
    statuses = [t[2] for t in trials_of(str(tmp_path))]
    assert statuses[:3] == ["done"] * 3 and len(statuses) == 7 and "running" not in statuses
    run_search(str(tmp_path), toy_config(budget=4, **options))
    with Store.open(str(tmp_path), readonly=True) as store:
        trials = store.trials()
    assert [t.status for t in trials[:4]] == ["done"] * 4 and len(trials) == 7
    assert [t.tell_seq is not None for t in trials] == [True] * 4 + [False] * 3  # 5-7 wait
    assert {t.status for t in trials[4:]} <= {"queued", "done"}
    run_search(str(tmp_path), toy_config(budget=8, **options))
    assert [t[2] for t in trials_of(str(tmp_path))] == ["done"] * 8


def _done_count(directory: str) -> int:
    try:
        conn = sqlite3.connect(f"file:{os.path.join(directory, DB_NAME)}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT COUNT(*) FROM trials WHERE status = 'done'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def _search_command(directory: str) -> list[str]:
    return [
        sys.executable, "-m", "nasnet", "search", "--out", directory, "--evaluator", "toy",
        "--executor", "inprocess", "--strategy", "ppo", "--controller-lr", "0.01",
        "--controller-batch", "5", "--budget", "40", "--workers", "2", "--seed", "3",
        "--toy-delay", "0.03", "--toy-fail-rate", "0.05", "--quiet",
    ]  # fmt: skip


@pytest.mark.slow
def test_search_killed_three_times_resumes_exactly(tmp_path) -> None:
    """SIGKILL at 3 random moments; each resume restores the last saved strategy state and
    the finished experiment equals an uninterrupted one (same ids, cells, rewards, state)."""
    reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
    subprocess.run(_search_command(reference), check=True, capture_output=True, timeout=300)
    rng = random.Random(2024)
    expected_states = []
    for low, high in ((4, 10), (14, 22), (26, 34)):
        target = rng.randint(low, high)
        process = subprocess.Popen(_search_command(killed), stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while _done_count(killed) < target and process.poll() is None:
            assert time.monotonic() < deadline, "the search made no progress"
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))
        assert process.poll() is None, "the search finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        expected_states.append(last_state_digest(killed))
    done = subprocess.run(_search_command(killed), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got, want = trials_of(killed), trials_of(reference)
    ids = [t[0] for t in got]
    assert ids == list(range(1, len(ids) + 1))  # no id duplicated or lost
    assert sum(t[2] == "done" for t in got) == 40
    assert got == want
    assert last_state_digest(killed)[1] == last_state_digest(reference)[1]
    with Store.open(killed, readonly=True) as store:
        resumes = store.resumes()
        rerun = [t for t in store.trials() if t.attempts > 1]
    assert [(r["state_id"], r["state_digest"]) for r in resumes] == expected_states
    assert all(state is not None for state in expected_states)
    assert all(r["replayed"] > 0 for r in resumes)  # asks/tells after the state were replayed
    assert len(rerun) >= 3  # the children running at each kill were trained again


def test_done_outcomes_without_a_finite_reward_fail(tmp_path) -> None:
    outcomes = iter([{"status": "done", "reward": math.inf}, {"status": "done"}])

    def fn(args):
        return next(outcomes, {"status": "done", "reward": 0.25, "metrics": {}})

    stats = run_search(str(tmp_path), toy_config(strategy="random", budget=2, workers=1), fn=fn)
    assert stats.finished == 2 and stats.failed == 2
    with Store.open(str(tmp_path), readonly=True) as store:
        errors = [t.error for t in store.trials("failed")]
    assert errors == ["non-finite or missing reward: inf", "non-finite or missing reward: None"]


def test_executor_registry() -> None:
    from nasnet.executors import executor_names, make_executor

    assert executor_names()[:2] == ("inprocess", "local") and "ray" in executor_names()
    with pytest.raises(OptionError, match="unknown executor 'nope'; choose inprocess, local"):
        make_executor("nope", 1)
    assert isinstance(make_executor("inprocess", 1), InProcessExecutor)
    with pytest.raises(OptionError, match=r"^executor_options.threads: must be in \[1, 1024\]"):
        make_executor("local", 1, options={"threads": 0})


def test_new_train_searches_stop_hopeless_children_by_default() -> None:
    """Early stopping (median rule) is saved on for new searches; none turns it off; an
    experiment saved without it (created before it was the default) keeps it off."""
    assert resolve_config(None, {}).evaluator_options == {"stop_quantile": 0.5}
    off = resolve_config(None, {"evaluator_options": {"stop_quantile": None}})
    assert off.evaluator_options == {"stop_quantile": None}
    assert resolve_config(off.to_dict(), {}).evaluator_options == {"stop_quantile": None}
    older = {**resolve_config(None, {}).to_dict(), "evaluator_options": {}}
    assert resolve_config(older, {"budget": 50}).build_evaluator().options.stop_quantile is None
    assert resolve_config(None, {"evaluator": "toy"}).evaluator_options == {}


def test_a_search_starts_no_more_workers_than_children_left(tmp_path, monkeypatch) -> None:
    import nasnet.search as search_module

    slots: list[int] = []
    real = search_module.make_executor

    def counting(name, workers, fn, options):
        slots.append(workers)
        return real(name, workers, fn, options)

    monkeypatch.setattr(search_module, "make_executor", counting)
    directory = str(tmp_path / "exp")
    run_search(directory, toy_config(budget=2, workers=6))
    run_search(directory, toy_config(budget=5, workers=6))  # resumed: 3 children left
    assert slots == [2, 3]


def test_more_local_workers_than_the_machine_can_hold_are_refused(monkeypatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    config = SearchConfig(evaluator="toy", executor="local", workers=9)
    expected = r"^workers: 9 worker processes on 2 core\(s\).*at most 8"
    with pytest.raises(OptionError, match=expected):
        config.check()
    SearchConfig(evaluator="toy", executor="local", workers=8).check()
    SearchConfig(evaluator="toy", executor="inprocess", workers=9).check()
