"""The machinery shared by the policy-gradient strategies on the LSTM controller
(:mod:`nasnet.strategies.reinforce`, :mod:`nasnet.strategies.ppo`).

Shared by both: the reward baseline is an exponential moving average of the rewards
(``baseline <- decay * baseline + (1 - decay) * reward``, decay 0.95, started at the first
reward); a result's advantage is ``reward - baseline`` with the baseline as it stands when the
result is told (results may come back in any order). Results are collected into a batch of
``batch_size`` architectures (the paper's 20) and the controller is updated once per batch.
Failed children (reward None) are counted but not learned from.

Small budgets: the published settings (lr 0.00035 for PPO, batches of 20) are for 20,000
children; with a few hundred the controller makes ten updates of tiny steps and samples as a
random search would. The ``settings`` option therefore defaults to ``auto``: a new experiment
with fewer than 2,000 children (:data:`~nasnet.strategies.base.SMALL_BUDGET_LIMIT`) saves
:data:`SMALL_BUDGET_SETTINGS` for every option the user did not give (``settings`` is saved as
``small``), a larger one the published values (saved as ``paper``). ``settings=paper``
(``--strategy-settings paper``) keeps the published values at any budget. Evidence (toy
evaluator, 200 children, 4 seeds, mean top-10 reward: paper settings 0.394 +- 0.011, random
0.388 +- 0.010, lr 0.005 with batches of 10 0.562 +- 0.030, lr 0.01 0.530, adding ENAS's tanh
constant 2.5 0.511; real children: ``bench/search_quality.py``) is in the README.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nasnet.controller import HIDDEN_SIZE, Controller
from nasnet.options import Options, check_at_least, check_finite, option, require
from nasnet.runtime import torch_threads
from nasnet.space import SearchSpace
from nasnet.strategies.base import (
    Proposal,
    Strategy,
    check_settings,
    settings_option,
)

#: Controller settings for small budgets (see the module docstring for the measurements).
SMALL_BUDGET_SETTINGS: dict[str, Any] = {"lr": 0.005, "batch_size": 10}


@dataclass
class PolicyGradientOptions(Options):
    """Hyper-parameters of the controller and its update (subclasses set ``lr``'s default)."""

    lr: float = option(0.0006, "controller Adam learning rate")
    batch_size: int = option(20, "results per controller update")
    entropy_weight: float = option(1e-5, "weight of the entropy bonus")
    baseline_decay: float = option(0.95, "decay of the EMA reward baseline")
    hidden_size: int = option(HIDDEN_SIZE, "LSTM hidden units")
    temperature: float | None = option(None, "divide the logits by this (ENAS; none: off)")
    tanh_constant: float | None = option(None, "C * tanh(logits / C) (ENAS; none: off)")
    settings: str = settings_option()

    def check(self) -> None:
        check_finite(self, "lr", 0, 1, low_open=True)
        check_at_least(self, "batch_size", 1, 100_000)
        check_at_least(self, "hidden_size", 1, 4096)
        check_finite(self, "entropy_weight", 0)
        check_finite(self, "baseline_decay", 0, 1)
        require(self.baseline_decay < 1, "baseline_decay", "must be below 1, got 1.0")
        check_finite(self, "temperature", 0, low_open=True)
        check_finite(self, "tanh_constant", 0, low_open=True)
        check_settings(self)


class PolicyGradientStrategy(Strategy):
    """Controller + Adam + EMA baseline + result batch; subclasses define :meth:`_loss`."""

    Options = PolicyGradientOptions
    small_budget_settings = SMALL_BUDGET_SETTINGS
    #: Optimisation passes over each batch.
    epochs_per_update = 1

    def __init__(self, space: SearchSpace, seed: int, **options: Any) -> None:
        super().__init__(space, seed, **options)
        opts = self.opts
        assert isinstance(opts, PolicyGradientOptions)
        self.lr, self.batch_size = opts.lr, opts.batch_size
        self.entropy_weight, self.baseline_decay = opts.entropy_weight, opts.baseline_decay
        self.generator = torch.Generator().manual_seed(seed)
        self.controller = Controller(
            space, opts.hidden_size, opts.temperature, opts.tanh_constant, generator=self.generator
        )
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=opts.lr)
        self.baseline: float | None = None
        self.batch: list[dict[str, Any]] = []
        self.updates = 0
        self.last_update: dict[str, float] = {}

    def ask(self) -> Proposal:
        with torch_threads(1):  # the controller is tiny; spinning threads only slow it down
            genotype, actions, log_prob = self.controller.sample(self.generator)
        proposal = Proposal(self.asked, genotype, actions, {"log_prob": log_prob})
        self.asked += 1
        return proposal

    def tell(self, proposal: Proposal, reward: float | None) -> bool:
        self._count_tell(reward)
        if reward is None:
            return False
        if self.baseline is None:
            self.baseline = reward
        advantage = reward - self.baseline
        self.baseline = self.baseline_decay * self.baseline + (1 - self.baseline_decay) * reward
        self.batch.append(
            {
                "actions": list(proposal.actions),
                "log_prob": float(proposal.data["log_prob"]),
                "advantage": advantage,
                "reward": reward,
            }
        )
        if len(self.batch) < self.batch_size:
            return False
        with torch_threads(1):
            self._update()
        return True

    def _update(self) -> None:
        actions = torch.tensor([item["actions"] for item in self.batch], dtype=torch.long)
        old_log_prob = torch.tensor([item["log_prob"] for item in self.batch])
        advantage = torch.tensor([item["advantage"] for item in self.batch])
        stats: dict[str, float] = {}
        for _ in range(self.epochs_per_update):
            log_prob, entropy = self.controller.score(actions)
            loss = self._loss(log_prob, old_log_prob, advantage)
            loss = loss - self.entropy_weight * entropy.mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            stats = {"loss": float(loss.detach()), "entropy": float(entropy.detach().mean())}
        stats["mean_reward"] = sum(item["reward"] for item in self.batch) / len(self.batch)
        stats["baseline"] = float(self.baseline or 0.0)
        self.last_update = stats
        self.updates += 1
        self.batch = []

    def _loss(
        self, log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantage: torch.Tensor
    ) -> torch.Tensor:
        """REINFORCE: ``-mean(advantage * log pi(a))``."""
        return -(advantage * log_prob).mean()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            controller=self.controller.state_dict(),
            optimizer=self.optimizer.state_dict(),
            generator=self.generator.get_state(),
            baseline=self.baseline,
            batch=[dict(item) for item in self.batch],
            updates=self.updates,
            last_update=dict(self.last_update),
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.controller.load_state_dict(state["controller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.baseline = state["baseline"]
        self.batch = [dict(item) for item in state["batch"]]
        self.updates = state["updates"]
        self.last_update = dict(state["last_update"])


__all__ = [
    "SMALL_BUDGET_SETTINGS",
    "PolicyGradientOptions",
    "PolicyGradientStrategy",
]
