"""The ``inprocess`` executor: each trial runs inside ``next_result``, in submission order, in
the driver process (deterministic; the right choice for the toy evaluator and for debugging)."""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from nasnet.executors.base import Executor, ThreadOptions, TrialFn, TrialResult, call_safely
from nasnet.options import option
from nasnet.runtime import torch_threads


@dataclass
class InProcessOptions(ThreadOptions):
    threads: int | None = option(None, "torch threads while a child trains (none: unchanged)")


class InProcessExecutor(Executor):
    """Runs trials one at a time in the calling process, in submission order."""

    Options = InProcessOptions
    isolates_children = False

    def __init__(self, fn: TrialFn | None = None, workers: int = 1, threads: int | None = None):
        self.fn = fn
        self.threads = threads
        self.queue: deque[tuple[int, Any]] = deque()

    def submit(self, trial_id: int, task: Any) -> None:
        self.queue.append((trial_id, task))

    def next_result(self, timeout: float | None = None) -> TrialResult | None:
        if not self.queue:
            return None
        trial_id, task = self.queue.popleft()
        started = time.time()
        with torch_threads(self.threads):
            outcome = call_safely(self.fn, task)
        return TrialResult(trial_id, outcome, f"inprocess:{os.getpid()}", started, time.time())

    def shutdown(self) -> None:
        self.queue.clear()

    @property
    def running(self) -> int:
        return len(self.queue)


__all__ = ["InProcessExecutor", "InProcessOptions"]
