"""The ``local`` executor: W *spawned* worker processes on this machine, fed through pipes.

Each worker sets ``torch.set_num_threads(threads)`` (1 by default: several one-thread children
use the cores better than one many-thread child). A worker that dies (``os._exit``, SIGKILL,
out of memory) fails only the trial it was running, with its exit code, and is replaced.
Workers never outlive their driver: on Linux the kernel kills them when the driver dies
(``PR_SET_PDEATHSIG``), and everywhere a watchdog thread exits a worker whose parent is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from nasnet.executors.base import Executor, ThreadOptions, TrialFn, TrialResult, call_safely
from nasnet.runtime import signal_handlers_kept
from nasnet.trials import TrialOutcome

#: Seconds between two checks of the worker's watchdog that its driver is alive.
WATCHDOG_INTERVAL = 1.0


def die_with_parent(parent_pid: int) -> None:
    """End this process when ``parent_pid`` (its parent) dies, however it dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before we got here
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(WATCHDOG_INTERVAL)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="nasnet-watchdog", daemon=True).start()


def _worker_main(conn: Connection, fn: TrialFn | None, threads: int | None, parent: int) -> None:
    """Loop of a worker process: receive ``(trial_id, task)``, send back the outcome.

    Ctrl-C and SIGTERM are left to the driver (which then stops the workers)."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if threads:
        import torch

        torch.set_num_threads(threads)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        trial_id, task = message
        started = time.time()
        outcome = call_safely(fn, task)
        try:
            conn.send((trial_id, outcome, started, time.time()))
        except (BrokenPipeError, OSError):
            return


@dataclass
class _Worker:
    process: Any
    conn: Connection
    trial: tuple[int, float] | None = None  # (trial id, submit time) while busy


#: At most this many worker processes per CPU core: each imports PyTorch (a few hundred MB),
#: and a thousand of them exhausted a 24 GiB machine.
MAX_WORKERS_PER_CORE = 4


class LocalExecutor(Executor):
    """W spawned worker processes; a dead worker fails its trial and is replaced."""

    Options = ThreadOptions

    @classmethod
    def workers_problem(cls, workers: int) -> str | None:
        cores = os.cpu_count() or 1
        limit = MAX_WORKERS_PER_CORE * cores
        if workers <= limit:
            return None
        return (
            f"{workers} worker processes on {cores} core(s) would exhaust memory (each loads "
            f"PyTorch); use at most {limit} with the local executor, or the ray executor to "
            "spread children over machines"
        )

    def __init__(self, fn: TrialFn | None = None, workers: int = 2, threads: int | None = 1):
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.fn = fn
        self.threads = threads
        self.context = multiprocessing.get_context("spawn")
        self.workers = [self._start() for _ in range(workers)]
        self.queue: deque[tuple[int, Any]] = deque()
        self.results: deque[TrialResult] = deque()

    def _start(self) -> _Worker:
        parent, child = self.context.Pipe()
        process = self.context.Process(
            target=_worker_main, args=(child, self.fn, self.threads, os.getpid()), daemon=True
        )
        # SIGINT ignored while a worker is spawned: the new interpreter inherits that, and
        # Python then leaves it ignored, so a Ctrl-C at the terminal (which reaches the whole
        # process group) does not interrupt a worker still importing torch, each with a
        # traceback. The driver stops the workers.
        with signal_handlers_kept((signal.SIGINT,), during=signal.SIG_IGN):
            process.start()
        child.close()
        return _Worker(process, parent)

    def submit(self, trial_id: int, task: Any) -> None:
        self.queue.append((trial_id, task))
        self._dispatch()

    def _dispatch(self) -> None:
        for worker in self.workers:
            if not self.queue:
                return
            if worker.trial is None:
                trial_id, task = self.queue.popleft()
                worker.trial = (trial_id, time.time())
                # A dead worker cannot take it: _receive then reports the trial as failed.
                with contextlib.suppress(BrokenPipeError, OSError):
                    worker.conn.send((trial_id, task))

    def next_result(self, timeout: float | None = None) -> TrialResult | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.results:
            busy = [w for w in self.workers if w.trial is not None]
            if not busy:
                return None
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], left)
            if not ready:
                return None
            self._collect(busy, set(ready))
            self._dispatch()
        return self.results.popleft()

    def _collect(self, busy: list[_Worker], ready: set) -> None:
        for worker in busy:
            if worker.conn in ready or worker.process.sentinel in ready:
                self._receive(worker)

    def _receive(self, worker: _Worker) -> None:
        assert worker.trial is not None
        trial_id, submitted = worker.trial
        name = f"local:{worker.process.pid}"
        try:
            if worker.conn.poll():
                got_id, outcome, started, finished = worker.conn.recv()
                worker.trial = None
                self.results.append(TrialResult(got_id, outcome, name, started, finished))
                return
        except (EOFError, OSError):
            pass
        worker.process.join(timeout=5)
        if worker.process.is_alive():  # sentinel not ready yet: a spurious wake-up
            return
        code = worker.process.exitcode
        error = f"worker process {worker.process.pid} died (exit code {code})"
        outcome = TrialOutcome.failed(error)
        self.results.append(TrialResult(trial_id, outcome, name, submitted, time.time()))
        worker.conn.close()
        self.workers[self.workers.index(worker)] = self._start()

    def shutdown(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(BrokenPipeError, OSError):
                worker.conn.send(None)
        for worker in self.workers:
            if worker.trial is not None:
                worker.process.terminate()
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            worker.conn.close()
        self.workers = []
        self.queue.clear()

    @property
    def running(self) -> int:
        return len(self.queue) + len(self.results) + sum(w.trial is not None for w in self.workers)


__all__ = ["LocalExecutor", "die_with_parent"]
