"""Random search: every decision drawn uniformly (the paper's random-search baseline, §4.4)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from nasnet.options import Options, check_at_least, option
from nasnet.runtime import python_rng_state, set_python_rng_state
from nasnet.space import SearchSpace
from nasnet.strategies.base import CHECKPOINT_EVERY, Proposal, Strategy


@dataclass
class RandomOptions(Options):
    checkpoint_every: int = option(CHECKPOINT_EVERY, "results between two saved states")

    def check(self) -> None:
        check_at_least(self, "checkpoint_every", 1)


class RandomStrategy(Strategy):
    """Uniform sampling via :meth:`SearchSpace.sample_actions`; learns nothing."""

    name = "random"
    Options = RandomOptions

    def __init__(self, space: SearchSpace, seed: int, **options: Any) -> None:
        super().__init__(space, seed, **options)
        self.rng = random.Random(seed)

    def ask(self) -> Proposal:
        actions = self.space.sample_actions(self.rng)
        proposal = Proposal(self.asked, self.space.decode(actions), actions)
        self.asked += 1
        return proposal

    def tell(self, proposal: Proposal, reward: float | None) -> bool:
        self._count_tell(reward)
        return self.told % self.opts.checkpoint_every == 0

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rng": python_rng_state(self.rng)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        set_python_rng_state(state["rng"], self.rng)


__all__ = ["RandomOptions", "RandomStrategy"]
