"""Regularized (aging) evolution (Real, Aggarwal, Huang, Le, AAAI 2019), asynchronous.

The first ``population`` proposals are uniformly random. After that each proposal is a
mutation of a parent chosen by tournament: ``sample_size`` members of the current population
are drawn uniformly without replacement and the one with the highest reward is the parent.
A mutation changes exactly one decision of a random block of a random cell (Normal or
Reduction): either one of its two inputs or one of its two ops, always to a different value
(the combine method is inherited). A finished child joins the population and, once it holds
more than ``population`` members, the oldest one is removed (aging), whatever its reward.
Failed children never join. Real et al. use P = 100, S = 25 (the defaults, ``settings=paper``);
a new search of fewer than 2,000 children gets P = 20, S = 5 for the options not given
(``settings=auto``, saved as ``small``), which leave room for evolution after the random start
(on the toy evaluator at 500 children: mean top-10 0.571 against 0.391 for random search).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from nasnet.options import Options, check_at_least, option, require
from nasnet.runtime import python_rng_state, set_python_rng_state
from nasnet.space import DECISIONS_PER_BLOCK, SearchSpace
from nasnet.strategies.base import (
    CHECKPOINT_EVERY,
    Proposal,
    Strategy,
    check_settings,
    settings_option,
)

#: Population and tournament for small budgets (see the module docstring).
SMALL_BUDGET_SETTINGS: dict[str, Any] = {"population": 20, "sample_size": 5}

_FIELDS = ("input_1", "input_2", "op_1", "op_2", "combine")


@dataclass
class EvolutionOptions(Options):
    population: int = option(100, "population size P")
    sample_size: int = option(25, "tournament sample size S (at most P)")
    checkpoint_every: int = option(CHECKPOINT_EVERY, "results between two saved states")
    settings: str = settings_option()

    def check(self) -> None:
        for name in ("population", "sample_size", "checkpoint_every"):
            check_at_least(self, name, 1, 1_000_000)
        check_settings(self)
        require(
            self.sample_size <= self.population,
            "sample_size",
            f"must be at most the population ({self.population}), got {self.sample_size}",
        )


class EvolutionStrategy(Strategy):
    """Aging evolution with tournament selection and single-decision mutations."""

    name = "evolution"
    Options = EvolutionOptions
    small_budget_settings = SMALL_BUDGET_SETTINGS

    @classmethod
    def options_for_budget(cls, options: dict[str, Any], budget: int) -> dict[str, Any]:
        """Also keeps the tournament within a small population that was given."""
        resolved = super().options_for_budget(options, budget)
        if "sample_size" not in options and "population" in options:  # a small given P
            resolved["sample_size"] = min(resolved["sample_size"], resolved["population"])
        return resolved

    def __init__(self, space: SearchSpace, seed: int, **options: Any) -> None:
        super().__init__(space, seed, **options)
        self.population_size = self.opts.population
        self.sample_size = self.opts.sample_size
        self.rng = random.Random(seed)
        self.population: list[dict[str, Any]] = []  # oldest first

    def ask(self) -> Proposal:
        if self.asked < self.population_size or not self.population:
            actions = self.space.sample_actions(self.rng)
            data: dict[str, Any] = {"parent": None, "mutation": None}
        else:
            parent = self._tournament()
            actions, mutation = mutate(self.space, parent["actions"], self.rng)
            data = {"parent": parent["id"], "mutation": mutation}
        proposal = Proposal(self.asked, self.space.decode(actions), actions, data)
        self.asked += 1
        return proposal

    def _tournament(self) -> dict[str, Any]:
        k = min(self.sample_size, len(self.population))
        picks = self.rng.sample(range(len(self.population)), k)
        return max((self.population[i] for i in picks), key=lambda member: member["reward"])

    def tell(self, proposal: Proposal, reward: float | None) -> bool:
        self._count_tell(reward)
        if reward is not None:
            actions = list(proposal.actions)
            self.population.append({"id": proposal.id, "actions": actions, "reward": reward})
            if len(self.population) > self.population_size:
                self.population.pop(0)
        return self.told % self.opts.checkpoint_every == 0

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "rng": python_rng_state(self.rng),
            "population": [dict(member) for member in self.population],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        set_python_rng_state(state["rng"], self.rng)
        self.population = [dict(member) for member in state["population"]]


def mutate(space: SearchSpace, actions: list[int], rng: random.Random) -> tuple[list[int], str]:
    """Change one input or one op of a random block of a random cell to a different value.

    Returns the new action list and a description such as
    ``"reduction.blocks[2].op_1: sep_conv_3x3 -> identity"``.
    """
    sizes = space.action_sizes()
    cell = rng.randrange(2)
    block = rng.randrange(space.num_blocks)
    kinds = ["input", "op"] if len(space.ops) > 1 else ["input"]
    offset = rng.randrange(2) + (2 if rng.choice(kinds) == "op" else 0)
    position = (cell * space.num_blocks + block) * DECISIONS_PER_BLOCK + offset
    old = actions[position]
    new = rng.randrange(sizes[position] - 1)
    if new >= old:
        new += 1
    child = list(actions)
    child[position] = new
    if offset >= 2:
        old_name, new_name = space.ops[old], space.ops[new]
    else:
        old_name, new_name = str(old), str(new)
    where = f"{('normal', 'reduction')[cell]}.blocks[{block}].{_FIELDS[offset]}"
    return child, f"{where}: {old_name} -> {new_name}"


__all__ = ["EvolutionOptions", "EvolutionStrategy", "mutate"]
