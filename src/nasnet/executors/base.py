"""The interface every executor implements.

An executor is built with a trial function ``fn(task) -> TrialOutcome`` (by default
:func:`nasnet.evaluators.run_trial`; it must be importable by name for process executors), the
number of ``workers`` and its own options, and offers::

    executor.submit(trial_id, task)         # queue a trial; never blocks for long
    executor.next_result(timeout)           # -> TrialResult of any finished trial, or None
    executor.shutdown()                     # stop workers; unfinished trials are dropped

``next_result`` returns a :class:`TrialResult` for every submitted trial exactly once, in
completion order: ``outcome`` is what ``fn`` returned, or a failed outcome when ``fn`` raised
or the worker process died. ``running`` is the number of trials submitted and not yet returned.
"""

from __future__ import annotations

import os
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from nasnet.options import Options, check_at_least, option
from nasnet.trials import TrialOutcome

TrialFn = Callable[[Any], "TrialOutcome | dict[str, Any]"]


@dataclass
class ThreadOptions(Options):
    """Options of executors that run children in processes of their own."""

    threads: int | None = option(1, "torch threads per child (none: torch's default)")

    def check(self) -> None:
        if self.threads is not None:
            check_at_least(self, "threads", 1, 1024)


@dataclass
class TrialResult:
    """A finished trial: its id, its outcome, and where and when it ran."""

    trial_id: int
    outcome: TrialOutcome
    worker: str
    started: float
    finished: float


def default_fn() -> TrialFn:
    from nasnet.evaluators import run_trial

    return run_trial


def call_safely(fn: TrialFn | None, task: Any) -> TrialOutcome:
    """``fn(task)`` (by default :func:`nasnet.evaluators.run_trial`) as a validated outcome;
    an exception becomes a failed outcome naming it."""
    try:
        outcome = (fn or default_fn())(task)
    except Exception as err:
        last = traceback.extract_tb(err.__traceback__)[-1]
        where = f" (at {os.path.basename(last.filename)}:{last.lineno})" if last else ""
        return TrialOutcome.failed(f"{type(err).__name__}: {err}{where}")
    if isinstance(outcome, TrialOutcome):
        return outcome
    return TrialOutcome.from_dict(outcome)


class Executor(ABC):
    """Runs trials; see the module docstring for the contract.

    Subclasses name their options in :attr:`Options` and take them as keyword arguments.
    """

    Options: ClassVar[type[Options]] = Options
    #: True when children run in processes of their own (a crashing child spares the driver).
    isolates_children: ClassVar[bool] = True
    #: True when children run on this machine (so its devices are the ones they get).
    runs_children_here: ClassVar[bool] = True

    @classmethod
    def workers_problem(cls, workers: int) -> str | None:
        """Why ``workers`` slots cannot run here, or None (no limit by default)."""
        return None

    @abstractmethod
    def submit(self, trial_id: int, task: Any) -> None:
        """Queue ``fn(task)`` for ``trial_id``."""

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


__all__ = ["Executor", "ThreadOptions", "TrialFn", "TrialResult", "call_safely", "default_fn"]
