"""Trials: the typed status of a child in a search and the outcome of evaluating it.

A trial is ``queued`` when proposed, ``running`` while a worker trains it, and ends ``done``
(it has a finite reward) or ``failed`` (it has an error text). :class:`TrialOutcome` is what an
evaluator returns; its constructors validate it once, so that a "done" outcome always carries a
finite reward and a failed one always an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class TrialStatus(str, Enum):
    """Where a trial stands (stored as its value)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class TrialOutcome:
    """The result of evaluating one child: ``done`` with a finite ``reward``, or ``failed``
    with an ``error``; ``metrics`` holds what the evaluator measured (accuracy, params, ...).

    Build it with :meth:`done` or :meth:`failed` (or :meth:`from_dict`), which validate.
    """

    status: TrialStatus
    reward: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @classmethod
    def done(cls, reward: Any, metrics: dict[str, Any] | None = None) -> TrialOutcome:
        """A finished child; a missing or non-finite reward makes it a failure instead."""
        metrics = dict(metrics or {})
        if isinstance(reward, bool) or not isinstance(reward, int | float):
            return cls.failed(f"non-finite or missing reward: {reward!r}", metrics)
        if not math.isfinite(reward):
            return cls.failed(f"non-finite or missing reward: {reward!r}", metrics)
        return cls(TrialStatus.DONE, float(reward), metrics, None)

    @classmethod
    def failed(cls, error: str | None, metrics: dict[str, Any] | None = None) -> TrialOutcome:
        return cls(TrialStatus.FAILED, None, dict(metrics or {}), error or "no error text")

    @property
    def ok(self) -> bool:
        return self.status is TrialStatus.DONE

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status.value, "reward": self.reward, "metrics": self.metrics,
                "error": self.error}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any) -> TrialOutcome:
        """Validate a plain ``{"status", "reward", "metrics", "error"}`` dict."""
        if not isinstance(data, dict) or data.get("status") not in ("done", "failed"):
            return cls.failed(f"evaluator returned {data!r}")
        if data["status"] == "failed":
            return cls.failed(data.get("error"), data.get("metrics"))
        return cls.done(data.get("reward"), data.get("metrics"))


__all__ = ["TrialOutcome", "TrialStatus"]
