"""Evaluators: what a search worker does with one child.

==========  ================================================================================
``train``   trains the child for real; reward = validation accuracy (the paper's)
``shared``  weight sharing: one supernet's shared weights score each child (ENAS style)
``toy``     an instant, deterministic reward with a known optimum, for tests and benchmarks
==========  ================================================================================

:func:`run_trial` is the function every executor calls, in the driver or in a worker process:
it takes a :class:`~nasnet.evaluators.base.Task` and returns a
:class:`~nasnet.trials.TrialOutcome`. Exceptions are left to the executor, which records them
as the child's error. A new evaluator is one module (an
:class:`~nasnet.evaluators.base.Evaluator` subclass with its ``Options``) plus its line in
:data:`EVALUATORS`.
"""

from __future__ import annotations

import json
from typing import Any

from nasnet.evaluators.base import Evaluator, RewardOptions, Task, cost_aware_reward
from nasnet.evaluators.shared import SharedEvaluator
from nasnet.evaluators.toy import TOY_OP_QUALITY, ToyEvaluator, toy_cost, toy_reward, toy_target
from nasnet.evaluators.train import TrainEvaluator
from nasnet.options import OptionError
from nasnet.space import Genotype, SearchSpace
from nasnet.train import TrainConfig
from nasnet.trials import TrialOutcome

#: Name -> evaluator class.
EVALUATORS: dict[str, type[Evaluator]] = {
    "train": TrainEvaluator,
    "shared": SharedEvaluator,
    "toy": ToyEvaluator,
}

_BUILT: dict[str, Evaluator] = {}


def evaluator_class(name: str) -> type[Evaluator]:
    """The evaluator registered as ``name``; :class:`OptionError` (field ``evaluator``) if none."""
    cls = EVALUATORS.get(name)
    if cls is None:
        raise OptionError(
            "evaluator", f"unknown evaluator {name!r}; choose {', '.join(EVALUATORS)}"
        )
    return cls


def make_evaluator(
    name: str, options: dict[str, Any], child: TrainConfig, space: SearchSpace
) -> Evaluator:
    """Build (and check the options of) the evaluator called ``name``."""
    cls = evaluator_class(name)
    parsed = cls.Options.parse_within(options, f"evaluator {name!r}", "evaluator_options")
    return cls(parsed, child, space)  # type: ignore[arg-type]


def evaluator_for(task: Task) -> Evaluator:
    """The evaluator of ``task``, built once per process and configuration."""
    key = json.dumps([task.evaluator, task.options, task.child, task.space], sort_keys=True)
    if key not in _BUILT:
        child = TrainConfig.from_dict(task.child)
        _BUILT[key] = make_evaluator(
            task.evaluator, task.options, child, SearchSpace.from_dict(task.space)
        )
    return _BUILT[key]


def run_trial(task: Task) -> TrialOutcome:
    """Evaluate one child."""
    genotype = Genotype.from_dict(task.genotype)
    return evaluator_for(task).evaluate(genotype, int(task.seed), task.context)


__all__ = [
    "EVALUATORS",
    "TOY_OP_QUALITY",
    "Evaluator",
    "RewardOptions",
    "Task",
    "cost_aware_reward",
    "evaluator_class",
    "evaluator_for",
    "make_evaluator",
    "run_trial",
    "toy_cost",
    "toy_reward",
    "toy_target",
]
