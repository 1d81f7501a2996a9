"""The toy evaluator: a deterministic, instant reward with a known optimum (a hidden target
genotype scores 1.0), for testing strategies, resume and executors in seconds.

Options: ``noise`` (reward noise, like the spread of real training), ``target_seed`` (which
hidden optimum), ``delay`` (seconds of sleep per child), ``fail_rate`` (fraction of children
that raise) and ``crash_rate`` (fraction whose process exits abruptly, as if killed by the OOM
killer; needs a process executor).
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from dataclasses import dataclass
from typing import Any

from nasnet.evaluators.base import Evaluator, RewardOptions
from nasnet.options import check_finite, option
from nasnet.space import DECISIONS_PER_BLOCK, Genotype, SearchSpace


@dataclass
class ToyOptions(RewardOptions):
    MUTABLE = frozenset({"delay"})

    noise: float = option(0.0, "reward noise amplitude (uniform in [-noise, noise])")
    target_seed: int = option(0, "seed of the hidden optimum")
    delay: float = option(0.0, "seconds of sleep per child")
    fail_rate: float = option(0.0, "fraction of children that raise")
    crash_rate: float = option(0.0, "fraction of children whose worker process dies")

    def check(self) -> None:
        super().check()
        check_finite(self, "noise", 0, 1)
        check_finite(self, "delay", 0, 3600)
        check_finite(self, "fail_rate", 0, 1)
        check_finite(self, "crash_rate", 0, 1)


#: Quality of each op in the toy problem (the target only uses ops of quality 1.0).
TOY_OP_QUALITY: dict[str, float] = {
    "identity": 0.5,
    "conv_1x3_3x1": 0.6,
    "conv_1x7_7x1": 0.6,
    "dil_conv_3x3": 0.8,
    "avg_pool_3x3": 0.5,
    "max_pool_3x3": 0.5,
    "max_pool_5x5": 0.3,
    "max_pool_7x7": 0.3,
    "conv_1x1": 0.4,
    "conv_3x3": 0.7,
    "sep_conv_3x3": 1.0,
    "sep_conv_5x5": 1.0,
    "sep_conv_7x7": 1.0,
}

#: Rough per-op cost (parameters per channel^2) for the toy's params / mult-adds proxies.
TOY_OP_COST: dict[str, float] = {
    "identity": 0.0,
    "conv_1x3_3x1": 6.0,
    "conv_1x7_7x1": 14.0,
    "dil_conv_3x3": 9.0,
    "avg_pool_3x3": 0.0,
    "max_pool_3x3": 0.0,
    "max_pool_5x5": 0.0,
    "max_pool_7x7": 0.0,
    "conv_1x1": 1.0,
    "conv_3x3": 9.0,
    "sep_conv_3x3": 2.2,
    "sep_conv_5x5": 2.5,
    "sep_conv_7x7": 3.0,
}

#: Weights of the toy reward's terms: matching decisions, op quality, fully matching blocks.
TOY_WEIGHTS = (0.5, 0.3, 0.2)

#: Weight of each decision kind in the toy's match term (input, input, op, op, combine).
TOY_DECISION_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 0.5)


# --------------------------------------------------------------------------- toy evaluator


def toy_target(space: SearchSpace, target_seed: int = 0) -> Genotype:
    """The hidden optimum: random inputs and combines, ops drawn among the best-quality ops."""
    rng = random.Random(f"nasnet-toy-target:{target_seed}")
    best = max(TOY_OP_QUALITY.get(op, 0.0) for op in space.ops)
    good = [i for i, op in enumerate(space.ops) if TOY_OP_QUALITY.get(op, 0.0) == best]
    actions = []
    for position, size in enumerate(space.action_sizes()):
        kind = position % DECISIONS_PER_BLOCK
        actions.append(rng.choice(good) if kind in (2, 3) else rng.randrange(size))
    return space.decode(actions)


def toy_reward(
    genotype: Genotype, space: SearchSpace, target_seed: int = 0, noise: float = 0.0
) -> float:
    """A deterministic reward in [0, 1] with its optimum (1.0) at :func:`toy_target`.

    ``reward = 0.5 * match + 0.3 * quality + 0.2 * blocks (+ noise)`` where ``match`` is the
    weighted fraction of decisions equal to the target's (inputs and ops weigh 1, combines
    0.5), ``quality`` the mean :data:`TOY_OP_QUALITY` of the chosen ops and ``blocks`` the
    fraction of blocks equal to the target's in all five decisions. ``noise`` adds a
    genotype-seeded uniform term in ``[-noise, noise]`` (like the spread of real training);
    the result is clipped to [0, 1].
    """
    actions = space.encode(genotype)
    target = space.encode(toy_target(space, target_seed))
    weights = [TOY_DECISION_WEIGHTS[p % DECISIONS_PER_BLOCK] for p in range(len(actions))]
    hits = [a == t for a, t in zip(actions, target, strict=True)]
    match = sum(w for w, hit in zip(weights, hits, strict=True) if hit) / sum(weights)
    ops = [o for cell in (genotype.normal, genotype.reduction) for b in cell.blocks
           for o in (b.op_1, b.op_2)]  # fmt: skip
    quality = sum(TOY_OP_QUALITY.get(op, 0.0) for op in ops) / len(ops)
    per_block = [all(hits[i : i + DECISIONS_PER_BLOCK])
                 for i in range(0, len(hits), DECISIONS_PER_BLOCK)]  # fmt: skip
    blocks = sum(per_block) / len(per_block)
    w_match, w_quality, w_blocks = TOY_WEIGHTS
    reward = w_match * match + w_quality * quality + w_blocks * blocks
    if noise:
        reward += noise * (2 * _unit(genotype.canonical_hash(), "noise") - 1)
    return min(1.0, max(0.0, reward))


def toy_cost(genotype: Genotype, filters: int = 32) -> tuple[int, int]:
    """``(params, mult_adds)`` proxies of a genotype for the toy evaluator."""
    ops = [o for cell in (genotype.normal, genotype.reduction) for b in cell.blocks
           for o in (b.op_1, b.op_2)]  # fmt: skip
    params = int(sum(TOY_OP_COST.get(op, 1.0) for op in ops) * filters * filters) + 1000
    return params, params * 64


class ToyEvaluator(Evaluator):
    """See the module docstring."""

    name = "toy"
    Options = ToyOptions

    def needs_process_isolation(self) -> bool:
        return self.options.crash_rate > 0

    def measure(self, genotype: Genotype, seed: int, context: dict[str, Any]) -> dict[str, Any]:
        options = self.options
        assert isinstance(options, ToyOptions)
        key = f"{genotype.canonical_hash()}:{seed}"
        if options.delay:
            time.sleep(options.delay)
        if _unit(key, "crash") < options.crash_rate:
            os._exit(17)  # emulate a worker killed mid-training (e.g. by the OOM killer)
        if _unit(key, "fail") < options.fail_rate:
            raise RuntimeError("toy child failed on purpose (fail_rate)")
        reward = toy_reward(genotype, self.space, options.target_seed, options.noise)
        params, mult_adds = toy_cost(genotype)
        return {"val_accuracy": reward, "params": params, "mult_adds": mult_adds}


def _unit(key: str, salt: str) -> float:
    """A deterministic number in [0, 1) from ``key``."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


__all__ = [
    "TOY_OP_QUALITY",
    "ToyEvaluator",
    "ToyOptions",
    "toy_cost",
    "toy_reward",
    "toy_target",
]
