"""Search strategies behind one interface (:class:`~nasnet.strategies.base.Strategy`):
``ask() -> Proposal``, ``tell(proposal, reward | None)``, ``state_dict()`` /
``load_state_dict()``.

=============  ============================================================================
``ppo``        LSTM controller trained with PPO (the paper's method; default)
``reinforce``  the same controller trained with REINFORCE (Zoph & Le, 2017)
``random``     every decision uniform (the paper's random-search baseline)
``evolution``  regularized (aging) evolution (Real et al., 2019)
=============  ============================================================================
"""

from __future__ import annotations

from typing import Any

from nasnet.space import SearchSpace
from nasnet.strategies.base import Proposal, Strategy
from nasnet.strategies.evolution import EvolutionStrategy
from nasnet.strategies.ppo import PPOStrategy
from nasnet.strategies.random import RandomStrategy
from nasnet.strategies.reinforce import ReinforceStrategy

#: Name -> strategy class.
STRATEGIES: dict[str, type[Strategy]] = {
    "ppo": PPOStrategy,
    "reinforce": ReinforceStrategy,
    "random": RandomStrategy,
    "evolution": EvolutionStrategy,
}


def make_strategy(name: str, space: SearchSpace, seed: int, **options: Any) -> Strategy:
    """Build the strategy called ``name``; ``options`` are its keyword arguments
    (options whose value is None are left at the strategy's default)."""
    cls = STRATEGIES.get(name)
    if cls is None:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    given = {key: value for key, value in options.items() if value is not None}
    try:
        return cls(space, seed, **given)
    except TypeError as err:
        raise ValueError(f"strategy {name!r}: {err}") from None


__all__ = ["STRATEGIES", "Proposal", "Strategy", "make_strategy"]
