"""Executors run trials for the search loop, behind one small interface
(:mod:`nasnet.executors.base`).

=============  =============================================================================
``local``      W spawned worker processes on this machine (default)
``inprocess``  one trial at a time in the driver (deterministic; for the toy evaluator, tests)
``ray``        Ray tasks, on this machine or a cluster (``pip install nasnet[ray]``)
=============  =============================================================================

A new executor is one module: an :class:`Executor` subclass with its ``Options`` (keyword
arguments of its constructor besides ``fn`` and ``workers``), plus its line in
:data:`EXECUTORS`, or in :data:`EXTERNAL_EXECUTORS` when it needs an optional dependency so
that it is only imported when asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

from nasnet.executors.base import Executor, TrialFn, TrialResult, call_safely
from nasnet.executors.inprocess import InProcessExecutor
from nasnet.executors.local import LocalExecutor
from nasnet.options import OptionError

#: Name -> executor class.
EXECUTORS: dict[str, type[Executor]] = {"inprocess": InProcessExecutor, "local": LocalExecutor}

#: Executors in modules with optional dependencies (``"module:Class"``), imported when used.
EXTERNAL_EXECUTORS: dict[str, str] = {"ray": "nasnet.executors.ray:RayExecutor"}


def executor_names() -> tuple[str, ...]:
    """Every executor name :func:`make_executor` accepts."""
    return (*EXECUTORS, *(name for name in EXTERNAL_EXECUTORS if name not in EXECUTORS))


def executor_class(name: str) -> type[Executor]:
    """The executor called ``name``; :class:`OptionError` (field ``executor``) if none, or if
    its optional dependency is missing."""
    cls = EXECUTORS.get(name)
    if cls is None and name in EXTERNAL_EXECUTORS:
        module, _, attribute = EXTERNAL_EXECUTORS[name].partition(":")
        try:
            cls = getattr(importlib.import_module(module), attribute)
        except ImportError as err:
            raise OptionError(
                "executor", f"{name} needs {err.name}: pip install 'nasnet[{name}]'"
            ) from None
    if cls is None:
        raise OptionError(
            "executor", f"unknown executor {name!r}; choose {', '.join(executor_names())}"
        )
    return cls


def make_executor(
    name: str, workers: int, fn: TrialFn | None = None, options: dict[str, Any] | None = None
) -> Executor:
    """Build the executor called ``name`` with ``workers`` slots and its checked ``options``."""
    cls = executor_class(name)
    parsed = cls.Options.parse_within(options, f"executor {name!r}", "executor_options")
    return cls(fn=fn, workers=workers, **parsed.to_dict())  # type: ignore[call-arg]


__all__ = [
    "EXECUTORS",
    "EXTERNAL_EXECUTORS",
    "Executor",
    "InProcessExecutor",
    "LocalExecutor",
    "TrialResult",
    "call_safely",
    "executor_class",
    "executor_names",
    "make_executor",
]
