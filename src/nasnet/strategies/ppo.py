"""PPO on the LSTM controller, with the paper's settings (NASNet, App. A.1-A.3).

Defaults: Adam lr 0.00035, clipped probability ratio (epsilon 0.2), entropy bonus weight
0.00001, EMA reward baseline with decay 0.95, one update per 20 results (the paper's batch of
architectures), 4 passes over each batch. The ratio compares the current policy with the
log-probability recorded when the proposal was sampled, which may be several updates old
because children are proposed while earlier ones still train.

These settings are for 20,000 children. A new search of fewer than 2,000 children gets
small-budget values instead (lr 0.005, batches of 10) for the options not given, unless
``settings=paper`` (``--strategy-settings paper``); see
:mod:`nasnet.strategies.policy_gradient`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nasnet.options import check_at_least, check_finite, option
from nasnet.space import SearchSpace
from nasnet.strategies.policy_gradient import PolicyGradientOptions, PolicyGradientStrategy


@dataclass
class PPOOptions(PolicyGradientOptions):
    lr: float = option(0.00035, "controller Adam learning rate (the paper's)")
    clip: float = option(0.2, "PPO clipping epsilon of the probability ratio")
    epochs: int = option(4, "optimisation passes over each batch")

    def check(self) -> None:
        super().check()
        check_finite(self, "clip", 0, low_open=True)
        check_at_least(self, "epochs", 1, 1000)


class PPOStrategy(PolicyGradientStrategy):
    """Proximal policy optimisation with a clipped surrogate objective."""

    name = "ppo"
    Options = PPOOptions

    def __init__(self, space: SearchSpace, seed: int, **options: Any) -> None:
        super().__init__(space, seed, **options)
        assert isinstance(self.opts, PPOOptions)
        self.clip = self.opts.clip
        self.epochs_per_update = self.opts.epochs

    def _loss(
        self, log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantage: torch.Tensor
    ) -> torch.Tensor:
        """``-mean(min(r * A, clip(r, 1 - eps, 1 + eps) * A))`` with ``r = pi / pi_old``."""
        ratio = torch.exp(log_prob - old_log_prob)
        clipped = ratio.clamp(1 - self.clip, 1 + self.clip)
        return -torch.min(ratio * advantage, clipped * advantage).mean()


__all__ = ["PPOOptions", "PPOStrategy"]
