"""REINFORCE on the LSTM controller: the original NAS update (Zoph & Le, 2017)."""

from __future__ import annotations

from dataclasses import dataclass

from nasnet.options import option
from nasnet.strategies.policy_gradient import PolicyGradientOptions, PolicyGradientStrategy


@dataclass
class ReinforceOptions(PolicyGradientOptions):
    lr: float = option(0.0006, "controller Adam learning rate (Zoph & Le 2017)")


class ReinforceStrategy(PolicyGradientStrategy):
    """REINFORCE with the EMA baseline, one Adam step per batch: ``-mean(A * log pi(a))``."""

    name = "reinforce"
    Options = ReinforceOptions


__all__ = ["ReinforceOptions", "ReinforceStrategy"]
