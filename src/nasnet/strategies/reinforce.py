"""Policy-gradient strategies on the LSTM controller; this module's ``reinforce`` is the
original NAS update (Zoph & Le, 2017), and :mod:`nasnet.strategies.ppo` reuses its machinery.

Shared by both: the reward baseline is an exponential moving average of the rewards
(``baseline <- decay * baseline + (1 - decay) * reward``, decay 0.95, started at the first
reward); a result's advantage is ``reward - baseline`` with the baseline as it stands when the
result is told (results may come back in any order). Results are collected into a batch of
``batch_size`` architectures (the paper's 20) and the controller is updated once per batch.
Failed children (reward None) are counted but not learned from.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from nasnet.controller import HIDDEN_SIZE, Controller
from nasnet.space import SearchSpace
from nasnet.strategies.base import Proposal, Strategy


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the controller on one intra-op thread: it is tiny, and on a loaded machine
    multi-threaded kernels are up to 100x slower (threads spin while waiting for cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class PolicyGradientStrategy(Strategy):
    """Controller + Adam + EMA baseline + result batch; subclasses define :meth:`_loss`."""

    #: Optimisation passes over each batch.
    epochs_per_update = 1

    def __init__(
        self,
        space: SearchSpace,
        seed: int,
        lr: float,
        batch_size: int = 20,
        entropy_weight: float = 1e-5,
        baseline_decay: float = 0.95,
        hidden_size: int = HIDDEN_SIZE,
        temperature: float | None = None,
        tanh_constant: float | None = None,
    ) -> None:
        super().__init__(space, seed)
        if lr <= 0 or batch_size < 1 or not 0 <= baseline_decay < 1:
            raise ValueError("need lr > 0, batch_size >= 1 and 0 <= baseline_decay < 1")
        self.lr = lr
        self.batch_size = batch_size
        self.entropy_weight = entropy_weight
        self.baseline_decay = baseline_decay
        self.hidden_size = hidden_size
        self.temperature = temperature
        self.tanh_constant = tanh_constant
        self.generator = torch.Generator().manual_seed(seed)
        self.controller = Controller(
            space, hidden_size, temperature, tanh_constant, generator=self.generator
        )
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=lr)
        self.baseline: float | None = None
        self.batch: list[dict[str, Any]] = []
        self.updates = 0
        self.last_update: dict[str, float] = {}

    def options(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "batch_size": self.batch_size,
            "entropy_weight": self.entropy_weight,
            "baseline_decay": self.baseline_decay,
            "hidden_size": self.hidden_size,
            "temperature": self.temperature,
            "tanh_constant": self.tanh_constant,
        }

    def ask(self) -> Proposal:
        with single_thread():
            genotype, actions, log_prob = self.controller.sample(self.generator)
        proposal = Proposal(self.asked, genotype, {"actions": actions, "log_prob": log_prob})
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
                "actions": list(proposal.data["actions"]),
                "log_prob": float(proposal.data["log_prob"]),
                "advantage": advantage,
                "reward": reward,
            }
        )
        if len(self.batch) < self.batch_size:
            return False
        with single_thread():
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


class ReinforceStrategy(PolicyGradientStrategy):
    """REINFORCE with the EMA baseline, one Adam step per batch (Zoph & Le 2017: lr 0.0006)."""

    name = "reinforce"

    def __init__(self, space: SearchSpace, seed: int, lr: float = 0.0006, **options: Any) -> None:
        super().__init__(space, seed, lr=lr, **options)


__all__ = ["PolicyGradientStrategy", "ReinforceStrategy"]
