"""PPO on the LSTM controller, with the paper's settings (NASNet, App. A.1-A.3).

Defaults: Adam lr 0.00035, clipped probability ratio (epsilon 0.2), entropy bonus weight
0.00001, EMA reward baseline with decay 0.95, one update per 20 results (the paper's batch of
architectures), 4 passes over each batch. The ratio compares the current policy with the
log-probability recorded when the proposal was sampled, which may be several updates old
because children are proposed while earlier ones still train.

These settings are for 20,000 children; with a few hundred, raise ``lr`` and lower
``batch_size`` (``--controller-lr``, ``--controller-batch``) or the controller barely moves.
"""

from __future__ import annotations

from typing import Any

import torch

from nasnet.space import SearchSpace
from nasnet.strategies.reinforce import PolicyGradientStrategy


class PPOStrategy(PolicyGradientStrategy):
    """Proximal policy optimisation with a clipped surrogate objective."""

    name = "ppo"

    def __init__(
        self,
        space: SearchSpace,
        seed: int,
        lr: float = 0.00035,
        clip: float = 0.2,
        epochs: int = 4,
        **options: Any,
    ) -> None:
        if clip <= 0 or epochs < 1:
            raise ValueError("need clip > 0 and epochs >= 1")
        super().__init__(space, seed, lr=lr, **options)
        self.clip = clip
        self.epochs_per_update = epochs

    def options(self) -> dict[str, Any]:
        return {**super().options(), "clip": self.clip, "epochs": self.epochs_per_update}

    def _loss(
        self, log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantage: torch.Tensor
    ) -> torch.Tensor:
        """``-mean(min(r * A, clip(r, 1 - eps, 1 + eps) * A))`` with ``r = pi / pi_old``."""
        ratio = torch.exp(log_prob - old_log_prob)
        clipped = ratio.clamp(1 - self.clip, 1 + self.clip)
        return -torch.min(ratio * advantage, clipped * advantage).mean()


__all__ = ["PPOStrategy"]
