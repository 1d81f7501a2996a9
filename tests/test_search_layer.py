"""The search layer's boundaries: a strategy added in one file with its own option and run
through the CLI, experiments of nasnet 0.1 resumed, the results module, one driver per
experiment, no orphaned workers, SIGTERM, and the store's durability."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nasnet.cli import main
from nasnet.evaluators import EVALUATORS, Evaluator, RewardOptions
from nasnet.executors import EXECUTORS, Executor, TrialResult, call_safely
from nasnet.options import OptionError, Options, check_at_least, check_finite, option
from nasnet.results import leaderboard, summarize
from nasnet.search import run_search
from nasnet.search_config import SearchConfig
from nasnet.space import SearchSpace
from nasnet.store import DB_NAME, SCHEMA_VERSION, Store
from nasnet.strategies import STRATEGIES, Proposal, Strategy

DATA = os.path.join(os.path.dirname(__file__), "data")
TOY = ["--evaluator", "toy", "--executor", "inprocess", "--quiet"]


# --------------------------------------------------------------------------- a new strategy


@dataclass
class RepeatOptions(Options):
    """The recipe of docs/architecture.md: a strategy's options are a small dataclass."""

    copies: int = option(2, "how many times each cell is proposed")

    def check(self) -> None:
        check_at_least(self, "copies", 1)


class RepeatStrategy(Strategy):
    """Proposes each random cell ``copies`` times in a row."""

    name = "repeat-test"
    Options = RepeatOptions

    def __init__(self, space: SearchSpace, seed: int, **options: Any) -> None:
        super().__init__(space, seed, **options)
        import random

        self.rng = random.Random(seed)
        self.current: list[int] = []

    def ask(self) -> Proposal:
        if self.asked % self.opts.copies == 0:
            self.current = self.space.sample_actions(self.rng)
        proposal = Proposal(self.asked, self.space.decode(self.current), list(self.current))
        self.asked += 1
        return proposal

    def tell(self, proposal: Proposal, reward: float | None) -> bool:
        self._count_tell(reward)
        return False


def test_a_strategy_with_its_own_option_runs_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(STRATEGIES, "repeat-test", RepeatStrategy)  # the one registry line
    out = str(tmp_path / "exp")
    args = ["search", "--out", out, "--strategy", "repeat-test", "--strategy-option",
            "copies=3", "--budget", "9", "--no-reuse", *TOY]  # fmt: skip
    assert main(args) == 0
    summary = summarize(out)
    assert summary["config"]["strategy_options"] == {"copies": "3"}
    hashes = [t["hash"] for t in summary["trials"]]
    assert len(set(hashes)) == 3 and hashes[0] == hashes[1] == hashes[2] != hashes[3]
    capsys.readouterr()
    bad = ["search", "--out", str(tmp_path / "bad"), "--strategy", "repeat-test",
           "--strategy-option", "copies=0", *TOY]  # fmt: skip
    assert main(bad) == 2
    assert "--strategy-option copies: must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    assert "--strategy-option for repeat-test: copies=2" in capsys.readouterr().out


def test_library_errors_name_fields_and_the_cli_names_flags(tmp_path, capsys):
    with pytest.raises(OptionError, match=r"^evaluator_options.delay: must be a finite number"):
        run_search(str(tmp_path / "a"), SearchConfig(evaluator="toy", executor="inprocess",
                                                      evaluator_options={"delay": -1}))  # fmt: skip
    assert not os.path.exists(tmp_path / "a")  # a refused experiment leaves nothing behind
    cases = [
        (["--toy-delay", "-1"], "--toy-delay: must be a finite number in [0, 3600], got -1.0"),
        (["--evaluator-option", "noise=2"], "--toy-noise: must be a finite number in [0, 1]"),
        (["--evaluator-option", "nope=2"], "--evaluator-option nope: not an option of evaluator"),
        (["--child-epochs", "0"], "--child-epochs: must be in [1, 1000000], got 0"),
        (["--child-option", "stem=tiny"], "--child-option stem: must be cifar or imagenet"),
        (["--child-option", "nesterov=maybe"], "--child-option nesterov: expected bool"),
        (["--executor-option", "threads=0"], "--threads: must be in [1, 1024], got 0"),
        (["--executor-option", "address=x"], "--ray-address: not an option of executor 'local'"),
        (["--strategy", "nope"], "--strategy: unknown strategy 'nope'; choose ppo, reinforce"),
        (["--seed", "-1"], "--seed: must be at least 0"),
        (["--max-failures", "0"], "--max-failures: must be at least 1, got 0"),
    ]
    for extra, message in cases:
        out = str(tmp_path / "b")
        assert main(["search", "--out", out, "--evaluator", "toy", *extra, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (extra, err)


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda c: c.update(budget="abc"), "budget: must be a whole number"),
        (lambda c: c.update(strategy="bogus"), "strategy: unknown strategy 'bogus'"),
        (lambda c: c.update(frobnicate=1), "frobnicate: unknown search option"),
        (lambda c: c.pop("child"), "child: missing"),
    ],
)
def test_a_bad_saved_config_is_blamed_on_the_store_not_on_a_flag(tmp_path, capsys, edit, named):
    directory = str(tmp_path / "exp")
    assert main(["search", "--out", directory, "--budget", "2", *TOY]) == 0
    with sqlite3.connect(os.path.join(directory, DB_NAME)) as conn:
        config = json.loads(conn.execute("SELECT json FROM config").fetchone()[0])
        edit(config)
        conn.execute("UPDATE config SET json = ?", (json.dumps(config),))
    capsys.readouterr()
    assert main(["search", "--out", directory, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the saved config is not valid (" + named in err, err
    assert "--" not in err and "restore the experiment from a copy" in err


# --------------------------------------------------------------------------- nasnet 0.1 stores


def test_an_experiment_of_nasnet_0_1_resumes_exactly(tmp_path):
    """A 10-child evolution search written by nasnet 0.1 (flat config, schema 1, actions in
    the proposal data), resumed to 16 children, keeps its 10 (the replay re-draws each stored
    proposal) and goes on deterministically. (A new search differs from it: results are now
    told in the order asked; 0.1 told them as they came.)"""
    old, again = tmp_path / "old", tmp_path / "again"
    for folder in (old, again):
        folder.mkdir()
        shutil.copy(os.path.join(DATA, "v1-evolution-toy.db"), folder / DB_NAME)
    before = summarize(str(old))  # read-only: readable as it is
    assert before["finished"] == 10 and before["config"]["population"] == 4
    with Store.open(str(old), readonly=True) as store:
        stored = [(t.id, t.genotype_dict(), t.reward) for t in store.trials()]
    assert main(["search", "--out", str(old), "--budget", "16", *TOY]) == 0
    with Store.open(str(old), readonly=True) as store:
        config = SearchConfig.from_dict(store.config())
        version = store.conn.execute("SELECT version FROM schema_version").fetchone()[0]
        trials = store.trials()
    assert version == SCHEMA_VERSION
    assert config.strategy_options == {"population": 4, "sample_size": 2}
    assert [(t.id, t.genotype_dict(), t.reward) for t in trials][:10] == stored
    assert [t.status for t in trials] == ["done"] * 16
    assert main(["search", "--out", str(again), "--budget", "16", *TOY]) == 0
    with Store.open(str(again), readonly=True) as store:
        assert [(t.id, t.hash, t.reward) for t in store.trials()] == [
            (t.id, t.hash, t.reward) for t in trials
        ]


# --------------------------------------------------------------------------- results


def test_search_children_never_record_a_test_accuracy(tmp_path):
    config = SearchConfig(strategy="random", evaluator="train", executor="inprocess", budget=1,
                          workers=1)  # fmt: skip
    config.child.dataset = "synthetic:classes=3,size=8,train=32,val=16,test=16"
    config.child.epochs, config.child.filters = 1, 4
    run_search(str(tmp_path), config)
    with Store.open(str(tmp_path), readonly=True) as store:
        (trial,) = store.trials()
    assert trial.status == "done" and "val_accuracy" in trial.metrics
    assert not any("test" in key for key in trial.metrics)
    summary = summarize(str(tmp_path))
    assert not any("test" in key for key in summary["leaderboard"][0])
    assert leaderboard([trial])[0].id == trial.id


# --------------------------------------------------------------------------- one driver


def _search(out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nasnet", "search", "--out", out, "--evaluator", "toy",
            "--strategy", "random", "--quiet", *extra]  # fmt: skip


def _done(out: str) -> int:
    path = os.path.join(out, DB_NAME)
    if not os.path.exists(path):
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT COUNT(*) FROM trials WHERE status='done'").fetchone()[0]
    except sqlite3.Error:
        return 0


def _wait_for(predicate, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_second_driver_is_refused_and_the_first_finishes_its_budget(tmp_path, capsys):
    out = str(tmp_path / "exp")
    command = _search(out, "--executor", "inprocess", "--toy-delay", "0.2", "--budget", "40")
    first = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _done(out) >= 2)
    capsys.readouterr()
    second = main(["search", "--out", out, "--budget", "40", *TOY])
    err = capsys.readouterr().err
    assert first.poll() is None, "the first driver ended too soon for this test"
    assert second == 2
    assert f"pid {first.pid} on " in err and "another search is running" in err
    assert err.count("\n") == 1
    assert main(["show", out, "--json"]) == 0  # readers are not blocked
    assert first.wait(timeout=120) == 0, first.stderr.read()
    summary = summarize(out)
    assert summary["finished"] == 40 and len(summary["trials"]) == 40


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_driver_leaves_no_worker_behind(tmp_path):
    out = str(tmp_path / "exp")
    driver = subprocess.Popen(
        _search(out, "--executor", "local", "--workers", "2", "--budget", "50",
                "--child-epochs", "1", "--child-filters", "4", "--evaluator", "train"),
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for(lambda: len(_children_of(driver.pid)) >= 2, 60)
        time.sleep(3)  # the workers are training children now
        workers = _children_of(driver.pid)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    _wait_for(lambda: not any(_alive(pid) for pid in workers), 5)


def test_sigterm_stops_cleanly_and_leaves_no_trial_running(tmp_path):
    out = str(tmp_path / "exp")
    proc = subprocess.Popen(_search(out, "--executor", "local", "--workers", "2",
                                    "--toy-delay", "0.5", "--budget", "100"),
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for(lambda: _done(out) >= 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and err.count("\n") == 1
    assert err == "nasnet search: terminated; run the same command again to resume\n"
    summary = summarize(out)
    assert summary["running"] == 0 and summary["queued"] >= 1
    assert main(["search", "--out", out, "--budget", str(summary["finished"] + 2), *TOY]) == 0


# --------------------------------------------------------------------------- durability


def test_the_main_file_holds_everything_up_to_the_last_saved_state(tmp_path):
    """Delete the write-ahead log of a killed driver: the trials up to the last saved strategy
    state are still there, and the search resumes."""
    out = str(tmp_path / "exp")
    options = ["--strategy-option", "checkpoint_every=5", "--toy-delay", "0.05",
               "--budget", "200"]  # fmt: skip
    proc = subprocess.Popen(_search(out, "--executor", "inprocess", *options),
                            stderr=subprocess.DEVNULL)  # fmt: skip
    _wait_for(lambda: _done(out) >= 12)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with Store.open(out, readonly=True) as store:
        saved_seq = store.last_state()[1]
        before = {t.id: t.reward for t in store.trials("done") if t.tell_seq <= saved_seq}
    assert len(before) >= 10
    for suffix in ("-wal", "-shm"):
        if os.path.exists(os.path.join(out, DB_NAME + suffix)):
            os.remove(os.path.join(out, DB_NAME + suffix))
    with Store.open(out, readonly=True) as store:
        after = {t.id: t.reward for t in store.trials("done")}
    assert {k: after.get(k) for k in before} == before
    assert main(["search", "--out", out, "--budget", "20", *TOY]) == 0


def test_the_store_keeps_only_recent_strategy_states(tmp_path):
    config = SearchConfig(strategy="ppo", evaluator="toy", executor="inprocess", budget=60,
                          strategy_options={"batch_size": 5})  # fmt: skip
    run_search(str(tmp_path), config)
    with Store.open(str(tmp_path), readonly=True) as store:
        assert len(store.states()) == 2
    assert not os.path.exists(os.path.join(str(tmp_path), DB_NAME + "-wal")) or (
        os.path.getsize(os.path.join(str(tmp_path), DB_NAME + "-wal")) == 0
    )
    assert json.loads(json.dumps(summarize(str(tmp_path))))["finished"] == 60


# --------------------------------------------------------------------------- a new evaluator


@dataclass
class ConstantOptions(RewardOptions):
    value: float = option(0.5, "the accuracy every child gets")

    def check(self) -> None:
        super().check()
        check_finite(self, "value", 0, 1)


class ConstantEvaluator(Evaluator):
    """Every child scores ``value``; its params count its blocks (to tell cells apart)."""

    name = "constant-test"
    Options = ConstantOptions

    def measure(self, genotype, seed, context):
        return {"val_accuracy": self.options.value, "params": len(genotype.normal.blocks)}


def test_an_evaluator_with_its_own_option_runs_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(EVALUATORS, "constant-test", ConstantEvaluator)
    out = str(tmp_path / "exp")
    args = ["search", "--out", out, "--evaluator", "constant-test", "--executor", "inprocess",
            "--evaluator-option", "value=0.25", "--budget", "4", "--quiet"]  # fmt: skip
    assert main(args) == 0
    summary = summarize(out)
    assert {t["reward"] for t in summary["trials"]} == {0.25}
    assert main([*args[:-4], "value=2", "--budget", "4", "--quiet"]) == 2
    assert "--evaluator-option value: must be a finite number in [0, 1]" in capsys.readouterr().err


# --------------------------------------------------------------------------- a new executor


@dataclass
class ThreadPoolOptions(Options):
    pool: int = option(2, "threads in the pool")


class ThreadPoolExecutor(Executor):
    """Children on threads of the driver: the executor recipe in a dozen lines."""

    Options = ThreadPoolOptions
    isolates_children = False

    def __init__(self, fn=None, workers: int = 2, pool: int = 2) -> None:
        from concurrent.futures import ThreadPoolExecutor as Pool

        from nasnet.executors.base import default_fn

        self.fn, self.pool, self.futures = fn or default_fn(), Pool(pool), {}

    def submit(self, trial_id, task) -> None:
        self.futures[self.pool.submit(call_safely, self.fn, task)] = (trial_id, time.time())

    def next_result(self, timeout=None):
        from concurrent.futures import FIRST_COMPLETED, wait

        done, _ = wait(list(self.futures), timeout=timeout, return_when=FIRST_COMPLETED)
        if not done:
            return None
        future = done.pop()
        trial_id, started = self.futures.pop(future)
        return TrialResult(trial_id, future.result(), "thread", started, time.time())

    def shutdown(self) -> None:
        self.pool.shutdown(cancel_futures=True)
        self.futures.clear()

    @property
    def running(self) -> int:
        return len(self.futures)


def test_an_executor_with_its_own_option_runs_a_search(tmp_path, monkeypatch):
    monkeypatch.setitem(EXECUTORS, "threads-test", ThreadPoolExecutor)
    config = SearchConfig(strategy="random", evaluator="toy", executor="threads-test",
                          executor_options={"pool": "3"}, workers=3, budget=9)  # fmt: skip
    stats = run_search(str(tmp_path), config)
    assert stats.finished == 9
    assert {t["worker"] for t in summarize(str(tmp_path))["trials"]} == {"thread"}


# --------------------------------------------------------------------------- early stopping

TINY = "synthetic:classes=4,size=8,train=64,val=32,test=16"


def test_quantile_and_stopping_thresholds():
    from nasnet.evaluators.train import TrainEvaluator, TrainOptions, quantile
    from nasnet.train import TrainConfig

    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0 and quantile([1.0, 2.0], 0.25) == 1.25
    options = TrainOptions.parse({"stop_quantile": 0.5, "stop_after": 2, "stop_min_peers": 2})
    evaluator = TrainEvaluator(options, TrainConfig(epochs=4), SearchSpace())
    curves = [{"val_curve": [0.1, 0.2, 0.3, 0.4]}, {"val_curve": [0.3, 0.5]}, {"val_curve": [0.2]}]
    # epoch 1: before stop_after; epoch 2: median of 0.2, 0.5; epoch 3: one peer only
    assert evaluator.task_context(curves) == {"stop_thresholds": [None, 0.35, None]}
    assert TrainEvaluator(TrainOptions(), TrainConfig(), SearchSpace()).task_context(curves) == {}
    with pytest.raises(OptionError, match="stop_quantile: must be below 1"):
        TrainOptions.parse({"stop_quantile": 1})


def _early_stopping_config(budget: int) -> SearchConfig:
    stopping = {"stop_quantile": 0.5, "stop_min_peers": 2}
    config = SearchConfig(strategy="random", evaluator="train", executor="inprocess",
                          budget=budget, workers=2, seed=7, evaluator_options=stopping)  # fmt: skip
    config.child.dataset, config.child.epochs = TINY, 3
    config.child.cells, config.child.filters, config.child.device = 1, 4, "cpu"
    return config


def test_early_stopping_stops_children_and_resumes_exactly(tmp_path, capsys):
    reference = str(tmp_path / "reference")
    run_search(reference, _early_stopping_config(10))
    summary = summarize(reference)
    stopped = [t for t in summary["trials"] if t["stopped_early"]]
    assert summary["finished"] == 10 and 1 <= summary["stopped_early"] == len(stopped) < 10
    assert all(t["epochs_done"] < 3 and t["reward"] == t["val_accuracy"] for t in stopped)
    assert all(t["epochs_done"] == 3 for t in summary["trials"][:2])  # no peers yet
    resumed = str(tmp_path / "resumed")

    def interrupt(kind, stats, trial) -> None:
        if kind == "done" and stats.finished_this_session == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(resumed, _early_stopping_config(10), on_event=interrupt)
    run_search(resumed, _early_stopping_config(10))
    again = summarize(resumed)
    assert [(t["hash"], t["reward"], t["epochs_done"]) for t in again["trials"]] == [
        (t["hash"], t["reward"], t["epochs_done"]) for t in summary["trials"]
    ]
    capsys.readouterr()
    assert main(["show", reference]) == 0
    assert f"({summary['stopped_early']} stopped early)" in capsys.readouterr().out
    page = tmp_path / "report.html"
    assert main(["report", reference, "-o", str(page)]) == 0
    assert "<th>stopped early</th>" in page.read_text()


def test_a_relative_child_dataset_path_is_saved_absolute(tmp_path, monkeypatch):
    from nasnet.train import TrainConfig

    monkeypatch.chdir(tmp_path)

    def config(dataset: str, budget: int) -> SearchConfig:
        return SearchConfig(strategy="random", evaluator="toy", executor="inprocess",
                            budget=budget, child=TrainConfig(dataset=dataset))  # fmt: skip

    run_search("exp", config("folder:pics", 2))
    with Store.open("exp", readonly=True) as store:
        assert store.config()["child"]["dataset"] == f"folder:{tmp_path / 'pics'}"
    run_search("exp", config("folder:./pics/", 3))  # the same data: resumes
    assert summarize("exp")["finished"] == 3


def test_a_script_without_the_main_guard_is_told_what_is_missing(tmp_path):
    script = tmp_path / "search.py"
    script.write_text(
        "from nasnet.search import run_search\n"
        "from nasnet.search_config import SearchConfig\n"
        "run_search('exp', SearchConfig(strategy='random', evaluator='toy', budget=2, "
        "workers=1, max_failures=1))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode != 0
    assert "put the search under 'if __name__ == \"__main__\":'" in proc.stderr
