"""Random search: every decision drawn uniformly (the paper's random-search baseline, §4.4)."""

from __future__ import annotations

import random
from typing import Any

from nasnet.space import SearchSpace
from nasnet.strategies.base import (
    CHECKPOINT_EVERY,
    Proposal,
    Strategy,
    python_rng_state,
    set_python_rng_state,
)


class RandomStrategy(Strategy):
    """Uniform sampling via :meth:`SearchSpace.sample_actions`; learns nothing."""

    name = "random"

    def __init__(
        self, space: SearchSpace, seed: int, checkpoint_every: int = CHECKPOINT_EVERY
    ) -> None:
        super().__init__(space, seed)
        self.rng = random.Random(seed)
        self.checkpoint_every = checkpoint_every

    def options(self) -> dict[str, Any]:
        return {"checkpoint_every": self.checkpoint_every}

    def ask(self) -> Proposal:
        actions = self.space.sample_actions(self.rng)
        proposal = Proposal(self.asked, self.space.decode(actions), {"actions": actions})
        self.asked += 1
        return proposal

    def tell(self, proposal: Proposal, reward: float | None) -> bool:
        self._count_tell(reward)
        return self.told % self.checkpoint_every == 0

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rng": python_rng_state(self.rng)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        set_python_rng_state(self.rng, state["rng"])


__all__ = ["RandomStrategy"]
