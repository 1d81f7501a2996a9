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

import pytest

from nasnet import evaluators
from nasnet.evaluators import cost_aware_reward, run_trial, toy_reward, toy_target
from nasnet.executors import InProcessExecutor, LocalExecutor
from nasnet.genotypes import NASNET_A_FIGURE
from nasnet.search import (
    Search,
    SearchConfig,
    SearchError,
    resolve_config,
    run_search,
    trial_seed,
)
from nasnet.space import Block, Cell, Genotype, SearchSpace
from nasnet.store import DB_NAME, Store
from nasnet.strategies import STRATEGIES, Proposal, Strategy
from nasnet.strategies.base import state_digest, state_from_bytes

TOY = {"evaluator": "toy", "executor": "inprocess"}


def toy_config(**options) -> SearchConfig:
    return SearchConfig(**{**TOY, **options})


def trials_of(directory: str) -> list[tuple]:
    store = Store.open(directory, readonly=True)
    try:
        return [(t.id, t.hash, t.status, t.reward) for t in store.trials()]
    finally:
        store.close()


def last_state_digest(directory: str) -> tuple[int, str] | None:
    store = Store.open(directory, readonly=True)
    try:
        saved = store.last_state()
    finally:
        store.close()
    return None if saved is None else (saved[0], state_digest(state_from_bytes(saved[2])))


# --------------------------------------------------------------------------- config


def test_resolve_config_new_and_resumed() -> None:
    config = resolve_config(None, {"strategy": "random", "budget": 7})
    assert (config.strategy, config.budget, config.workers) == ("random", 7, 2)
    saved = config.to_dict()
    resumed = resolve_config(saved, {"budget": 9, "workers": 1, "strategy": "random"})
    assert (resumed.budget, resumed.workers, resumed.seed) == (9, 1, 0)
    with pytest.raises(
        SearchError, match=r"^--strategy: this experiment was created with 'random'"
    ):
        resolve_config(saved, {"strategy": "ppo"})
    with pytest.raises(SearchError, match=r"^--child-epochs"):
        resolve_config(saved, {"child_epochs": 5})
    with pytest.raises(SearchError, match=r"^--controller-lr: this experiment was created without"):
        resolve_config(saved, {"controller_lr": 0.01})


def test_config_checks_name_the_option() -> None:
    with pytest.raises(SearchError, match=r"^--population: applies to evolution"):
        resolve_config(None, {"strategy": "ppo", "population": 10})
    with pytest.raises(SearchError, match=r"^--budget"):
        resolve_config(None, {"budget": 0})
    with pytest.raises(SearchError, match="--toy-crash-rate"):
        resolve_config(None, {"toy_crash_rate": 0.5, "executor": "inprocess"})
    assert SearchConfig().strategy_options() == {}
    options = SearchConfig(strategy="ppo", controller_lr=0.01, controller_batch=5)
    assert options.strategy_options() == {"lr": 0.01, "batch_size": 5}


def test_trial_seeds_derive_from_experiment_seed_and_id() -> None:
    seeds = {trial_seed(0, i) for i in range(1, 200)}
    assert len(seeds) == 199
    assert trial_seed(0, 5) == trial_seed(0, 5) != trial_seed(1, 5)


def test_search_on_existing_experiment_checks_config(tmp_path) -> None:
    run_search(str(tmp_path), toy_config(strategy="random", budget=3))
    with pytest.raises(SearchError, match=r"^--strategy"):
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
    config = toy_config(strategy="random", budget=6, mult_adds_target=4e6, cost_weight=1.0)
    run_search(str(tmp_path), config)
    store = Store.open(str(tmp_path), readonly=True)
    trials = store.trials("done")
    store.close()
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
        proposal = Proposal(self.asked, genotype, {"actions": self.space.encode(genotype)})
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

    def counting(args):
        calls.append(args["trial_id"])
        return run_trial(args)

    config = toy_config(strategy="repeat", budget=7, workers=1, reuse=reuse)
    search = Search(str(tmp_path), config, fn=counting)
    stats = search.run()
    assert stats.finished == 7 and search.strategy.told == 7
    store = Store.open(str(tmp_path), readonly=True)
    trials = store.trials()
    store.close()
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
    stats = run_search(str(tmp_path), toy_config(strategy="random", budget=30, toy_fail_rate=0.3))
    store = Store.open(str(tmp_path), readonly=True)
    counts, failed = store.counts(), store.trials("failed")
    store.close()
    assert counts["done"] == 30 == stats.finished
    assert len(failed) == counts["failed"] == stats.failed >= 3
    for trial in failed:
        assert trial.reward is None and trial.tell_seq is not None
        assert "RuntimeError: toy child failed on purpose" in trial.error


def test_raising_or_non_finite_evaluators_fail_their_child(tmp_path, monkeypatch) -> None:
    calls = []

    def flaky(genotype, seed, options):
        calls.append(seed)
        if len(calls) == 1:
            raise ValueError("bad cell")
        return {"val_accuracy": math.nan if len(calls) == 2 else 0.5}

    monkeypatch.setitem(evaluators.EVALUATORS, "toy", flaky)
    stats = run_search(str(tmp_path), toy_config(strategy="random", budget=5, seed=1))
    store = Store.open(str(tmp_path), readonly=True)
    errors = [t.error for t in store.trials("failed")]
    store.close()
    assert stats.finished == 5 and len(calls) == 7
    assert errors[0].startswith("ValueError: bad cell")
    assert errors[1] == "non-finite validation accuracy: nan"


def test_too_many_failures_stop_the_search(tmp_path) -> None:
    limit = r"stopped: (8|9) children failed \(limit 8, --max-failures\); last error: RuntimeError"
    with pytest.raises(SearchError, match=limit):
        run_search(str(tmp_path), toy_config(strategy="random", budget=4, toy_fail_rate=1.0))
    statuses = [t[2] for t in trials_of(str(tmp_path))]
    assert statuses in (["failed"] * 8, ["failed"] * 9)  # running children were waited for
    with pytest.raises(SearchError, match=r"stopped: 1[01] children failed \(limit 10"):
        run_search(str(tmp_path), toy_config(strategy="random", budget=4, toy_fail_rate=1.0,
                                             max_failures=10))  # fmt: skip


# --------------------------------------------------------------------------- executors


def _toy_args(trial_id: int, delay: float) -> dict:
    return {
        "evaluator": "toy",
        "genotype": NASNET_A_FIGURE.to_dict(),
        "seed": trial_id,
        "trial_id": trial_id,
        "options": {"space": SearchSpace().to_dict(), "toy_delay": delay},
    }


def test_dataset_cache_for_remote_workers(monkeypatch) -> None:
    monkeypatch.setattr(evaluators, "_DATASETS", {})
    args = {"evaluator": "train", "options": SearchConfig(image_size=12).evaluator_options(
        SearchSpace())}  # fmt: skip
    assert evaluators.dataset_key(args) == ("digits", 12)
    assert evaluators.dataset_key({"evaluator": "toy"}) is None
    marker = object()
    evaluators.register_dataset(args, marker)
    assert evaluators.load_trial_dataset(args) is marker


def test_inprocess_executor_contract() -> None:
    executor = InProcessExecutor()
    assert executor.next_result(0) is None
    executor.submit(4, _toy_args(4, 0))
    executor.submit(5, {"evaluator": "nope"})
    assert executor.running == 2
    first, second = executor.next_result(), executor.next_result()
    assert (first.trial_id, first.outcome["status"]) == (4, "done")
    assert (second.trial_id, second.outcome["status"]) == (5, "failed")
    assert "KeyError" in second.outcome["error"] or "ValueError" in second.outcome["error"]
    assert executor.running == 0


def test_local_executor_survives_a_killed_worker() -> None:
    executor = LocalExecutor(workers=2)
    try:
        executor.submit(1, _toy_args(1, 60))
        executor.submit(2, _toy_args(2, 0.1))
        quick = executor.next_result(timeout=120)
        assert quick is not None and quick.trial_id == 2 and quick.outcome["status"] == "done"
        assert quick.outcome["reward"] == toy_reward(NASNET_A_FIGURE, SearchSpace())
        (victim,) = [w.process.pid for w in executor.workers if w.trial and w.trial[0] == 1]
        os.kill(victim, signal.SIGKILL)
        dead = executor.next_result(timeout=60)
        assert dead is not None and dead.trial_id == 1
        assert dead.outcome["status"] == "failed"
        assert f"worker process {victim} died (exit code -9)" in dead.outcome["error"]
        executor.submit(3, _toy_args(3, 0))
        again = executor.next_result(timeout=120)
        assert again is not None and again.trial_id == 3 and again.outcome["status"] == "done"
        assert victim not in [w.process.pid for w in executor.workers]
    finally:
        executor.shutdown()


def test_search_goes_on_when_worker_processes_die(tmp_path) -> None:
    config = SearchConfig(strategy="random", evaluator="toy", executor="local", workers=2,
                          budget=12, seed=0, toy_crash_rate=0.25)  # fmt: skip
    stats = run_search(str(tmp_path), config)
    store = Store.open(str(tmp_path), readonly=True)
    failed = store.trials("failed")
    store.close()
    assert stats.finished == 12 and len(failed) == stats.failed >= 1
    assert all("died (exit code 17)" in t.error for t in failed)


# --------------------------------------------------------------------------- resume


def _interrupt_after(n: int):
    def on_event(kind, stats, trial) -> None:
        if kind in ("done", "failed") and stats.finished_this_session >= n:
            raise KeyboardInterrupt

    return on_event


def test_interrupted_search_resumes_exactly(tmp_path) -> None:
    options = {"strategy": "ppo", "budget": 30, "workers": 3, "seed": 4, "controller_batch": 4,
               "controller_lr": 0.01, "toy_fail_rate": 0.1}  # fmt: skip
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
    store = Store.open(resumed, readonly=True)
    resumes = store.resumes()
    store.close()
    assert [(r["state_id"], r["state_digest"]) for r in resumes] == expected_states


def test_lowering_the_budget_leaves_unfinished_trials_queued(tmp_path) -> None:
    options = {"strategy": "random", "workers": 3, "seed": 2}
    with pytest.raises(KeyboardInterrupt):
        run_search(str(tmp_path), toy_config(budget=10, **options), on_event=_interrupt_after(3))
    assert [t[2] for t in trials_of(str(tmp_path))] == ["done"] * 3 + ["running"] * 2
    run_search(str(tmp_path), toy_config(budget=4, **options))
    statuses = [t[2] for t in trials_of(str(tmp_path))]
    assert statuses == ["done"] * 4 + ["queued"]  # trial 4 ran again, trial 5 waits
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
    store = Store.open(killed, readonly=True)
    resumes = store.resumes()
    store.close()
    assert [(r["state_id"], r["state_digest"]) for r in resumes] == expected_states
    assert all(state is not None for state in expected_states)
    assert all(r["replayed"] > 0 for r in resumes)  # asks/tells after the state were replayed
    rerun = [t for t in Store.open(killed, readonly=True).trials() if t.attempts > 1]
    assert len(rerun) >= 3  # the children running at each kill were trained again


def test_done_outcomes_without_a_finite_reward_fail(tmp_path) -> None:
    outcomes = iter([{"status": "done", "reward": math.inf}, {"status": "done"}])

    def fn(args):
        return next(outcomes, {"status": "done", "reward": 0.25, "metrics": {}})

    stats = run_search(str(tmp_path), toy_config(strategy="random", budget=2, workers=1), fn=fn)
    assert stats.finished == 2 and stats.failed == 2
    errors = [t.error for t in Store.open(str(tmp_path), readonly=True).trials("failed")]
    assert errors == ["non-finite or missing reward: inf", "non-finite or missing reward: None"]


def test_executor_registry() -> None:
    from nasnet.executors import executor_names, make_executor

    assert executor_names()[:2] == ("inprocess", "local") and "ray" in executor_names()
    with pytest.raises(ValueError, match="unknown executor 'nope'; choose from inprocess, local"):
        make_executor("nope", 1)
    assert isinstance(make_executor("inprocess", 1), InProcessExecutor)
