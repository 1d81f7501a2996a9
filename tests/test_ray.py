"""The Ray executor on a local 2-CPU Ray instance (started once for this module)."""

import dataclasses
import os
import signal
import threading
import time

import pytest

from nasnet.search import run_search
from nasnet.search_config import SearchConfig
from nasnet.store import Store

ray = pytest.importorskip("ray", reason="the Ray extra is not installed: pip install nasnet[ray]")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def finished_ids(directory):
    with Store.open(str(directory), readonly=True) as store:
        return sorted(t.id for t in store.trials("done")), store.counts()


def toy_config(**overrides):
    values = dict(strategy="random", evaluator="toy", executor="ray", budget=12, workers=2,
                  seed=3)  # fmt: skip
    values.update(overrides)
    return SearchConfig(**values)


def test_ray_toy_search_reaches_budget_and_matches_local_pool(tmp_path):
    run_search(str(tmp_path / "ray"), toy_config())
    run_search(str(tmp_path / "local"), toy_config(executor="local"))
    done = []
    for name in ("ray", "local"):
        with Store.open(str(tmp_path / name), readonly=True) as store:
            done.append(store.trials("done"))
    assert len(done[0]) == 12
    assert {(t.hash, t.reward) for t in done[0]} == {(t.hash, t.reward) for t in done[1]}
    assert all(t.worker.startswith("ray:") for t in done[0])


def test_ray_real_digits_children(tmp_path):
    config = SearchConfig(
        strategy="random", evaluator="train", executor="ray", budget=2, workers=2, seed=0,
    )  # fmt: skip
    config.child = dataclasses.replace(config.child, cells=1, filters=4, epochs=1)
    stats = run_search(str(tmp_path / "digits"), config)
    ids, counts = finished_ids(tmp_path / "digits")
    assert ids == [1, 2] and counts.get("failed", 0) == 0
    assert 0.0 < stats.best_reward <= 1.0


def running_child_pids():
    """PIDs of Ray worker processes that are executing a child right now."""
    import psutil

    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if cmdline.startswith("ray::_run_child"):
            pids.append(proc.info["pid"])
    return pids


def test_a_killed_worker_is_retried_and_no_trial_is_lost(tmp_path):
    killed = []

    def killer():
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            pids = running_child_pids()
            if pids:
                time.sleep(0.3)  # let the child get well into its work
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    config = toy_config(budget=8, evaluator_options={"delay": 1.0},
                        executor_options={"max_retries": 2})  # fmt: skip
    run_search(str(tmp_path / "kill"), config)
    thread.join(timeout=5)
    assert killed, "no running child was found to kill"
    ids, counts = finished_ids(tmp_path / "kill")
    assert ids == list(range(1, 9)) and counts.get("failed", 0) == 0


def _interruptible() -> None:
    """Ctrl-C's default action in the child, as in a terminal: a test run started in the
    background of a shell (``pytest &``) ignores SIGINT, and its children inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(
    "signum, status, said",
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_a_stop_signal_stops_cleanly_and_resumes_with_the_local_pool(
    tmp_path, signum, status, said
):
    # SIGTERM: ray.init installs a crash handler for it (a native stack trace, exit 15)
    import subprocess
    import sys

    out = str(tmp_path / "interrupted")
    budget = 400  # far more than can finish before the interrupt: the search must stop early
    cmd = [sys.executable, "-m", "nasnet", "search", "--strategy", "random", "--evaluator", "toy",
           "--toy-delay", "0.5", "--budget", str(budget), "--workers", "2", "--executor", "ray",
           "--seed", "3", "--out", out]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_interruptible)  # fmt: skip
    started = time.time()
    while time.time() < started + 90 and proc.poll() is None:
        if Store.exists(out) and len(finished_ids(out)[0]) >= 2:
            break
        time.sleep(0.2)
    waited = time.time() - started
    assert proc.poll() is None, f"the search ended by itself after {waited:.1f} s"
    proc.send_signal(signum)
    stdout, err = proc.communicate(timeout=60)
    seen = f"{signum!r} after {waited:.1f} s; stderr {err[-500:]!r}; stdout {stdout[-500:]!r}"
    assert proc.returncode == status, seen
    assert f"nasnet search: {said}; run the same command again to resume" in err, seen
    assert "Traceback" not in err and "SIGTERM received" not in err, seen
    done_before = len(finished_ids(out)[0])
    assert 2 <= done_before < budget
    run_search(out, SearchConfig.from_dict({
        **toy_config().to_dict(), "executor": "local", "budget": done_before + 3,
        "evaluator_options": {"delay": 0.0},
    }))  # fmt: skip
    ids, _ = finished_ids(out)
    assert len(ids) == done_before + 3 and len(set(ids)) == len(ids)
