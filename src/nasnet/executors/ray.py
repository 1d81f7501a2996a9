"""Children as Ray tasks, on one machine or a cluster (``pip install nasnet[ray]``).

Each child is a Ray task with ``num_cpus=cpus_per_child`` and ``num_gpus=gpus_per_child``
(fractions let several small children share one GPU). A task whose worker process or node
dies is retried by Ray up to ``max_retries`` times, then reported as failed; an exception in
the child is not retried (the evaluator already turns it into a failed outcome). Data every
child reads (the ``train`` evaluator's dataset) is put into the object store once and handed to
every task by reference. The driver stays the only writer of the experiment store: tasks only return
outcomes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

from nasnet.executors.base import Executor, ThreadOptions, TrialFn, TrialResult, call_safely
from nasnet.options import check_at_least, check_finite, option
from nasnet.runtime import signal_handlers_kept
from nasnet.trials import TrialOutcome


@dataclass
class RayOptions(ThreadOptions):
    address: str | None = option(
        None, "auto or HOST:PORT of a running cluster (none: start a local instance)"
    )
    cpus_per_child: float = option(1.0, "CPUs each child asks Ray for")
    gpus_per_child: float = option(0.0, "GPUs each child asks for (0.25: four share a GPU)")
    max_retries: int = option(3, "retries of a child whose worker process or node died")

    def check(self) -> None:
        super().check()
        check_finite(self, "cpus_per_child", 0, low_open=True)
        check_finite(self, "gpus_per_child", 0)
        check_at_least(self, "max_retries", 0)


def _ray():
    try:
        import ray
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise RuntimeError(
            "the ray executor needs Ray: pip install 'nasnet[ray]' (or pip install ray)"
        ) from None
    return ray


def _run_child(fn: TrialFn | None, task: Any, threads: int | None, shared: Any) -> dict[str, Any]:
    """Body of one Ray task: run the trial and say where and when it ran."""
    started = time.time()
    if threads:
        import torch

        torch.set_num_threads(threads)
    if shared is not None:
        from nasnet.evaluators import evaluator_for

        evaluator_for(task).use_shared_data(shared)
    outcome = call_safely(fn, task)
    worker = f"ray:{socket.gethostname()}:{os.getpid()}"
    return {"outcome": outcome, "worker": worker, "started": started, "finished": time.time()}


class RayExecutor(Executor):
    """Runs trials as Ray tasks; see the module docstring.

    Args:
        fn: the trial function (default :func:`nasnet.evaluators.run_trial`).
        workers: children in flight at once (the search loop keeps this many submitted).
        threads: torch threads per child (default 1).
        address: ``None`` starts a local Ray instance sized to this machine; ``"auto"`` or
            ``"HOST:PORT"`` joins a running cluster (``ray start --head``).
        cpus_per_child, gpus_per_child: Ray resource requests of each child. A child given a
            GPU sees it through ``CUDA_VISIBLE_DEVICES``: with the child's ``device`` at
            ``auto`` (the search default) it trains there.
        max_retries: retries of a child whose worker process or node died.
    """

    Options = RayOptions
    runs_children_here = False  # a cluster's nodes may have the GPUs this machine lacks

    def __init__(
        self,
        fn: TrialFn | None = None,
        workers: int = 2,
        threads: int | None = 1,
        address: str | None = None,
        cpus_per_child: float = 1.0,
        gpus_per_child: float = 0.0,
        max_retries: int = 3,
    ):
        ray = _ray()
        self._ray = ray
        self.fn, self.workers, self.threads = fn, workers, threads
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            options: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "configure_logging": False,
            }
            if address is None:
                options["num_cpus"] = os.cpu_count()
            else:
                options["address"] = address
            # ray.init installs its own crash handler for SIGTERM: a terminated search printed
            # a native stack trace and exited 15, instead of stopping cleanly with 143
            with signal_handlers_kept((signal.SIGTERM, signal.SIGINT)):
                ray.init(**options)
        self._task = ray.remote(_run_child).options(
            num_cpus=cpus_per_child,
            num_gpus=gpus_per_child,
            max_retries=max_retries,
            retry_exceptions=False,
        )
        self._pending: dict[Any, tuple[int, float]] = {}  # ObjectRef -> (trial id, submitted)
        self._shared_refs: dict[tuple, Any] = {}

    def submit(self, trial_id: int, task: Any) -> None:
        ref = self._task.remote(self.fn, task, self.threads, self._shared_ref(task))
        self._pending[ref] = (trial_id, time.time())

    def _shared_ref(self, task: Any):
        """The object-store reference of the data the child reads, put there on first use."""
        from nasnet.evaluators import Task, evaluator_for

        if not isinstance(task, Task):
            return None
        evaluator = evaluator_for(task)
        key = evaluator.shared_data_key()
        if key is None:
            return None
        if key not in self._shared_refs:
            self._shared_refs[key] = self._ray.put(evaluator.load_shared_data())
        return self._shared_refs[key]

    def next_result(self, timeout: float | None = None) -> TrialResult | None:
        if not self._pending:
            if timeout:
                time.sleep(min(timeout, 0.05))
            return None
        ready, _ = self._ray.wait(list(self._pending), num_returns=1, timeout=timeout)
        if not ready:
            return None
        ref = ready[0]
        trial_id, submitted = self._pending.pop(ref)
        try:
            record = self._ray.get(ref)
        except Exception as err:  # worker or node lost after every retry, or cancelled
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            outcome = TrialOutcome.failed(f"ray: {type(err).__name__}: {reason}")
            return TrialResult(trial_id, outcome, "ray", submitted, time.time())
        return TrialResult(
            trial_id, record["outcome"], record["worker"], record["started"], record["finished"]
        )

    def shutdown(self) -> None:
        """Stop: a Ray instance this executor started goes down with its workers; on a shared
        cluster the children still in flight are cancelled."""
        if self._started_ray:
            # ray.shutdown() ends the workers; force-cancelling first can trip a Ray assertion.
            if self._ray.is_initialized():
                self._ray.shutdown()
        else:
            for ref in self._pending:
                with contextlib.suppress(Exception):  # finished meanwhile, or worker gone
                    self._ray.cancel(ref)
        self._pending.clear()
        self._shared_refs.clear()

    @property
    def running(self) -> int:
        return len(self._pending)


__all__ = ["RayExecutor", "RayOptions"]
