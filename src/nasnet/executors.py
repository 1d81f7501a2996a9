"""Executors run trials for the search loop, behind one small interface.

An executor is built with a function ``fn(fn_args: dict) -> dict`` (by default
:func:`nasnet.evaluators.run_trial`; it must be importable by name for process executors)
and offers three calls::

    executor.submit(trial_id, fn_args)      # queue a trial; never blocks for long
    executor.next_result(timeout)           # -> TrialResult of any finished trial, or None
    executor.shutdown()                     # stop workers; unfinished trials are dropped

``next_result`` returns a :class:`TrialResult` for every submitted trial exactly once, in
completion order: ``outcome`` is what ``fn`` returned, or, when ``fn`` raised or the worker
process died, ``{"status": "failed", "error": "..."}``. ``running`` is the number of trials
submitted and not yet returned. A new executor (for example Ray) only has to implement these
three methods and ``running``, and be added to :data:`EXECUTORS` (or, if it needs an optional
dependency, to :data:`EXTERNAL_EXECUTORS`, as the Ray executor is).

* ``inprocess`` runs each trial inside ``next_result``, in submission order, in the driver
  process (deterministic; the right choice for the toy evaluator and for debugging).
* ``local`` keeps W *spawned* worker processes (``torch.set_num_threads(threads)`` in each,
  1 by default) fed through pipes. A worker that dies (``os._exit``, SIGKILL, out of memory)
  fails only the trial it was running, with its exit code, and is replaced by a new one.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import signal
import time
import traceback
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

TrialFn = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class TrialResult:
    """A finished trial: its id, ``fn``'s outcome (or a failure), and timing."""

    trial_id: int
    outcome: dict[str, Any]
    worker: str
    started: float
    finished: float


def _default_fn() -> TrialFn:
    from nasnet.evaluators import run_trial

    return run_trial


def call_safely(fn: TrialFn, fn_args: dict[str, Any]) -> dict[str, Any]:
    """``fn(fn_args)``, with an exception turned into a failed outcome naming it."""
    try:
        outcome = fn(fn_args)
    except Exception as err:
        last = traceback.extract_tb(err.__traceback__)[-1]
        where = f" (at {os.path.basename(last.filename)}:{last.lineno})" if last else ""
        return {"status": "failed", "error": f"{type(err).__name__}: {err}{where}"}
    if not isinstance(outcome, dict) or outcome.get("status") not in ("done", "failed"):
        return {"status": "failed", "error": f"evaluator returned {outcome!r}"}
    return outcome


class Executor(ABC):
    """Runs trials; see the module docstring for the contract."""

    @abstractmethod
    def submit(self, trial_id: int, fn_args: dict[str, Any]) -> None:
        """Queue ``fn(fn_args)`` for ``trial_id``."""

    @abstractmethod
    def next_result(self, timeout: float | None = None) -> TrialResult | None:
        """The next finished trial, or None if none finished within ``timeout`` seconds."""

    @abstractmethod
    def shutdown(self) -> None:
        """Stop all workers; results not yet returned are lost."""

    @property
    @abstractmethod
    def running(self) -> int:
        """Trials submitted and not yet returned by :meth:`next_result`."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


class InProcessExecutor(Executor):
    """Runs trials one at a time in the calling process, in submission order."""

    def __init__(self, fn: TrialFn | None = None, workers: int = 1, threads: int | None = None):
        self.fn = fn or _default_fn()
        self.queue: deque[tuple[int, dict[str, Any]]] = deque()

    def submit(self, trial_id: int, fn_args: dict[str, Any]) -> None:
        self.queue.append((trial_id, fn_args))

    def next_result(self, timeout: float | None = None) -> TrialResult | None:
        if not self.queue:
            return None
        trial_id, fn_args = self.queue.popleft()
        started = time.time()
        outcome = call_safely(self.fn, fn_args)
        return TrialResult(trial_id, outcome, f"inprocess:{os.getpid()}", started, time.time())

    def shutdown(self) -> None:
        self.queue.clear()

    @property
    def running(self) -> int:
        return len(self.queue)


def _worker_main(conn: Connection, fn: TrialFn | None, threads: int | None) -> None:
    """Loop of a worker process: receive ``(trial_id, fn_args)``, send back the outcome.

    Ctrl-C is left to the driver (which then stops the workers); a worker whose driver is gone
    exits at its next message."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if threads:
        import torch

        torch.set_num_threads(threads)
    fn = fn or _default_fn()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        trial_id, fn_args = message
        started = time.time()
        outcome = call_safely(fn, fn_args)
        try:
            conn.send((trial_id, outcome, started, time.time()))
        except (BrokenPipeError, OSError):
            return


@dataclass
class _Worker:
    process: Any
    conn: Connection
    trial: tuple[int, float] | None = None  # (trial id, submit time) while busy


class LocalExecutor(Executor):
    """W spawned worker processes; a dead worker fails its trial and is replaced."""

    def __init__(self, fn: TrialFn | None = None, workers: int = 2, threads: int | None = 1):
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.fn = fn
        self.threads = threads
        self.context = multiprocessing.get_context("spawn")
        self.workers = [self._start() for _ in range(workers)]
        self.queue: deque[tuple[int, dict[str, Any]]] = deque()
        self.results: deque[TrialResult] = deque()

    def _start(self) -> _Worker:
        parent, child = self.context.Pipe()
        process = self.context.Process(
            target=_worker_main, args=(child, self.fn, self.threads), daemon=True
        )
        process.start()
        child.close()
        return _Worker(process, parent)

    def submit(self, trial_id: int, fn_args: dict[str, Any]) -> None:
        self.queue.append((trial_id, fn_args))
        self._dispatch()

    def _dispatch(self) -> None:
        for worker in self.workers:
            if not self.queue:
                return
            if worker.trial is None:
                trial_id, fn_args = self.queue.popleft()
                worker.trial = (trial_id, time.time())
                # A dead worker cannot take it: _receive then reports the trial as failed.
                with contextlib.suppress(BrokenPipeError, OSError):
                    worker.conn.send((trial_id, fn_args))

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
        self.results.append(
            TrialResult(
                trial_id, {"status": "failed", "error": error}, name, submitted, time.time()
            )
        )
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


#: Name -> executor class; each takes ``(fn=None, workers=W, threads=T)``.
EXECUTORS: dict[str, type[Executor]] = {"inprocess": InProcessExecutor, "local": LocalExecutor}

#: Executors defined in other modules (``"module:Class"``), imported when first used, so that
#: their optional dependencies are only needed by those who ask for them.
EXTERNAL_EXECUTORS: dict[str, str] = {"ray": "nasnet.ray_executor:RayExecutor"}


def executor_names() -> tuple[str, ...]:
    """Every executor name :func:`make_executor` accepts."""
    return (*EXECUTORS, *(name for name in EXTERNAL_EXECUTORS if name not in EXECUTORS))


def make_executor(
    name: str, workers: int, threads: int | None = 1, fn: TrialFn | None = None, **options: Any
) -> Executor:
    """Build the executor called ``name`` (see :func:`executor_names`); ``options`` go to
    executors that take more (Ray: ``address``, ``cpus_per_child``, ...)."""
    cls = EXECUTORS.get(name)
    if cls is None and name in EXTERNAL_EXECUTORS:
        module, _, attribute = EXTERNAL_EXECUTORS[name].partition(":")
        cls = getattr(importlib.import_module(module), attribute)
    if cls is None:
        raise ValueError(f"unknown executor {name!r}; choose from {', '.join(executor_names())}")
    return cls(fn=fn, workers=workers, threads=threads, **options)


__all__ = [
    "EXECUTORS",
    "EXTERNAL_EXECUTORS",
    "Executor",
    "InProcessExecutor",
    "LocalExecutor",
    "TrialResult",
    "call_safely",
    "executor_names",
    "make_executor",
]
