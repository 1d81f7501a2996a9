"""Search strategies behind one interface (:class:`~nasnet.strategies.base.Strategy`):
``ask() -> Proposal``, ``tell(proposal, reward | None)``, ``state_dict()`` /
``load_state_dict()``.

=============  ============================================================================
``ppo``        LSTM controller trained with PPO (the paper's method; default)
``reinforce``  the same controller trained with REINFORCE (Zoph & Le, 2017)
``random``     every decision uniform (the paper's random-search baseline)
``evolution``  regularized (aging) evolution (Real et al., 2019)
=============  ============================================================================

A new strategy is one module: a :class:`Strategy` subclass with a ``name`` and an ``Options``
dataclass of its hyper-parameters (see :mod:`nasnet.options`), plus its line in
:data:`STRATEGIES`. The search config passes ``strategy_options`` to it and the command line
exposes every field as ``--strategy-option NAME=VALUE``.
"""

from __future__ import annotations

from typing import Any

from nasnet.options import OptionError
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


def strategy_class(name: str) -> type[Strategy]:
    """The strategy registered as ``name``; :class:`OptionError` (field ``strategy``) if none."""
    cls = STRATEGIES.get(name)
    if cls is None:
        raise OptionError("strategy", f"unknown strategy {name!r}; choose {', '.join(STRATEGIES)}")
    return cls


def make_strategy(name: str, space: SearchSpace, seed: int, **options: Any) -> Strategy:
    """Build the strategy called ``name``; ``options`` are its hyper-parameters (its
    ``Options`` fields; a value of None keeps the default)."""
    given = {key: value for key, value in options.items() if value is not None}
    return strategy_class(name)(space, seed, **given)


__all__ = ["STRATEGIES", "Proposal", "Strategy", "make_strategy", "strategy_class"]
