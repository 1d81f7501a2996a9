"""The interface every evaluator implements, the cost-aware reward, and the task a worker gets.

An evaluator turns one child genotype into a :class:`~nasnet.trials.TrialOutcome`. It is built
from its own options (an ``Options`` dataclass: the cost-aware reward's target and weight, and
whatever else it needs), the child's :class:`~nasnet.train.TrainConfig` and the search space.
Workers receive a :class:`Task` (plain data, so it pickles and travels to other processes or
Ray nodes) and rebuild the evaluator from it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nasnet.options import Options, check_finite, option
from nasnet.space import Genotype, SearchSpace
from nasnet.train import TrainConfig
from nasnet.trials import TrialOutcome


@dataclass
class RewardOptions(Options):
    """The cost-aware reward, shared by every evaluator (off by default)."""

    mult_adds_target: float | None = option(None, "cost-aware reward: mult-add budget M")
    cost_weight: float = option(0.0, "cost-aware reward exponent w (0: off)")

    def check(self) -> None:
        check_finite(self, "mult_adds_target", 0, low_open=True)
        check_finite(self, "cost_weight", 0)


def cost_aware_reward(
    accuracy: float, mult_adds: float | None, target: float | None, weight: float
) -> float:
    """``accuracy * min(1, target / mult_adds) ** weight``.

    Children within the mult-add ``target`` keep their accuracy; a child twice over it with
    ``weight = 0.5`` keeps ``1/sqrt(2)`` of it. With no target, no weight, or an unknown
    cost, the reward is the accuracy.
    """
    if target is None or weight == 0 or not mult_adds or mult_adds <= 0:
        return accuracy
    return accuracy * min(1.0, target / mult_adds) ** weight


@dataclass(frozen=True)
class Task:
    """Everything a worker needs to evaluate one child (plain, picklable data)."""

    trial_id: int
    genotype: dict[str, Any]
    seed: int
    evaluator: str
    options: dict[str, Any]
    child: dict[str, Any]
    space: dict[str, Any]
    #: What the evaluator derived from earlier results (:meth:`Evaluator.task_context`).
    context: dict[str, Any] = field(default_factory=dict)


class Evaluator(ABC):
    """Scores child networks; subclasses set ``name``, ``Options`` and :meth:`measure`."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[RewardOptions]] = RewardOptions

    def __init__(self, options: RewardOptions, child: TrainConfig, space: SearchSpace) -> None:
        self.options, self.child, self.space = options, child, space

    @classmethod
    def options_for_new_search(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The options a new experiment saves: ``options`` (those given) plus defaults that
        must be written down, because an experiment created without them keeps its own."""
        return dict(options)

    @abstractmethod
    def measure(
        self, genotype: Genotype, seed: int, context: dict[str, Any]
    ) -> TrialOutcome | dict[str, Any]:
        """The child's metrics (``val_accuracy`` required; ``params``, ``mult_adds``, ...), or
        a failed outcome. An exception fails the child too (the executor records it).
        ``context`` is what :meth:`task_context` gave for this child."""

    def task_context(self, finished: list[dict[str, Any]]) -> dict[str, Any]:
        """Data a child needs from the results told before it was proposed (``finished``: their
        metrics, in the order they were told), computed in the driver. The set of those
        results is fixed by the experiment's event log, so a resumed child gets the same."""
        return {}

    def evaluate(
        self, genotype: Genotype, seed: int, context: dict[str, Any] | None = None
    ) -> TrialOutcome:
        """:meth:`measure`, with the reward (cost-aware validation accuracy) validated."""
        measured = self.measure(genotype, seed, context or {})
        if isinstance(measured, TrialOutcome):
            return measured
        accuracy = measured.get("val_accuracy")
        if not isinstance(accuracy, int | float) or not math.isfinite(accuracy):
            return TrialOutcome.failed(f"non-finite validation accuracy: {accuracy}", measured)
        reward = cost_aware_reward(
            float(accuracy),
            measured.get("mult_adds"),
            self.options.mult_adds_target,
            self.options.cost_weight,
        )
        return TrialOutcome.done(reward, measured)

    def check_setup(self, children_at_once: int = 1) -> None:  # noqa: B027 - optional hook
        """Cheap checks in the driver before any child starts (e.g. the dataset is readable,
        ``children_at_once`` children fit in this machine's memory; 0: children run
        elsewhere); raise :class:`~nasnet.options.OptionError` or ``ValueError`` naming the
        problem."""

    def needs_process_isolation(self) -> bool:
        """True when children may end their process (they need a process executor)."""
        return False

    # Data loaded once in the driver and shipped to remote workers (Ray's object store).

    def shared_data_key(self) -> tuple | None:
        """A key of the data every child of this evaluator reads (None: nothing to share)."""
        return None

    def load_shared_data(self) -> Any:
        raise NotImplementedError

    def use_shared_data(self, data: Any) -> None:  # noqa: B027 - optional hook
        """Adopt data loaded elsewhere (under :meth:`shared_data_key`)."""

    # --- stateful evaluators (weight sharing) ----------------------------------------------
    # A stateful evaluator keeps state across children (the shared weights of a supernet) in
    # the driver process: it needs an in-process executor (SearchConfig.check), the search
    # uses the instance ``evaluator_for`` caches for its tasks, saves ``state_dict()`` with
    # every strategy state and, on resume, loads it and re-measures the children told after
    # it (``measure`` must be deterministic given the state), and at the end of a search
    # replaces the rewards by ``final_metrics`` (scores under the final state).

    #: True when children change the evaluator's state (see above).
    stateful: ClassVar[bool] = False

    def reset_state(self, seed: int) -> None:  # noqa: B027 - optional hook
        """Start from a fresh state, seeded by the experiment's ``seed``."""

    def state_dict(self) -> dict[str, Any]:
        """The evaluator's state (``torch.save``-able, loadable with ``weights_only``)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore :meth:`state_dict`'s output."""

    def final_metrics(self, genotype: Genotype) -> dict[str, Any] | None:
        """Metrics of ``genotype`` under the final state (``val_accuracy`` at least), used to
        rank the cells of a finished search; None keeps the search-time ones."""
        return None

    def ranking_warning(self, finals: list[dict[str, Any]]) -> str | None:
        """One line for the user when the final ranking (``final_metrics`` of every distinct
        cell) says little, else None."""
        return None


__all__ = ["Evaluator", "RewardOptions", "Task", "cost_aware_reward"]
