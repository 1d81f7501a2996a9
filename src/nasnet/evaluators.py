"""Evaluators: what a search worker does with one child, plus the cost-aware reward.

:func:`run_trial` is the function every executor calls (in the driver process or in a worker
process). Its argument is a JSON-like dict::

    {"evaluator": "train" | "toy", "genotype": Genotype.to_dict(), "seed": int,
     "trial_id": int, "options": {...}}

and it returns ``{"status": "done" | "failed", "reward": float | None, "metrics": {...},
"error": str | None}``. Exceptions raised by an evaluator are left to the executor, which
records them as the trial's error.

* ``train`` trains the child for real with :func:`nasnet.train.train`; the reward is its
  validation accuracy. The dataset is loaded once per process and cached.
* ``toy`` is a deterministic, cheap function of the genotype with a known optimum (a hidden
  target genotype scores 1.0), for testing strategies, resume and executors in seconds.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import time
from typing import Any

from nasnet.space import DECISIONS_PER_BLOCK, Genotype, SearchSpace

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


# --------------------------------------------------------------------------- cost-aware reward


def cost_aware_reward(
    accuracy: float, mult_adds: float | None, target: float | None, weight: float
) -> float:
    """``accuracy * min(1, target / mult_adds) ** weight``.

    Children within the mult-add ``target`` keep their accuracy; a child twice over it with
    ``weight = 0.5`` keeps ``1/sqrt(2)`` of it. With no target, no weight, or an unknown
    cost, the reward is the accuracy.
    """
    if target is None or weight == 0 or not mult_adds or mult_adds <= 0:
        return accuracy
    return accuracy * min(1.0, target / mult_adds) ** weight


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


def evaluate_toy(genotype: Genotype, seed: int, options: dict[str, Any]) -> dict[str, Any]:
    """The toy evaluator; ``options``: ``space`` (dict), ``toy_target_seed``, ``toy_noise``,
    ``toy_delay`` (seconds to sleep), ``toy_fail_rate`` (fraction of children that raise),
    ``toy_crash_rate`` (fraction whose process exits abruptly: use a process executor)."""
    space = SearchSpace.from_dict(options["space"])
    key = f"{genotype.canonical_hash()}:{seed}"
    delay = float(options.get("toy_delay") or 0.0)
    if delay:
        time.sleep(delay)
    if _unit(key, "crash") < float(options.get("toy_crash_rate") or 0.0):
        os._exit(17)  # emulate a worker killed mid-training (e.g. by the OOM killer)
    if _unit(key, "fail") < float(options.get("toy_fail_rate") or 0.0):
        raise RuntimeError("toy child failed on purpose (--toy-fail-rate)")
    reward = toy_reward(
        genotype,
        space,
        int(options.get("toy_target_seed") or 0),
        float(options.get("toy_noise") or 0),
    )
    params, mult_adds = toy_cost(genotype)
    return {"val_accuracy": reward, "params": params, "mult_adds": mult_adds}


def _unit(key: str, salt: str) -> float:
    """A deterministic number in [0, 1) from ``key``."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# --------------------------------------------------------------------------- real training

_DATASETS: dict[tuple[str, int | None], Any] = {}


def cached_dataset(spec: str, image_size: int | None = None) -> Any:
    """Load a dataset once per process."""
    key = (spec, image_size)
    if key not in _DATASETS:
        from nasnet.data import load_dataset

        _DATASETS[key] = load_dataset(spec, image_size)
    return _DATASETS[key]


def dataset_key(fn_args: dict[str, Any]) -> tuple[str, int | None] | None:
    """The cache key of the dataset a trial trains on (None for the toy evaluator)."""
    if fn_args.get("evaluator") != "train":
        return None
    options = fn_args.get("options", {})
    return (options["dataset"], options.get("image_size"))


def load_trial_dataset(fn_args: dict[str, Any]) -> Any:
    """The (cached) dataset of a ``train`` trial, e.g. to ship it to remote workers once."""
    key = dataset_key(fn_args)
    if key is None:
        raise ValueError("only trials of the train evaluator have a dataset")
    return cached_dataset(*key)


def register_dataset(fn_args: dict[str, Any], dataset: Any) -> None:
    """Put an already loaded dataset in this process's cache for ``fn_args``' trials."""
    key = dataset_key(fn_args)
    if key is not None:
        _DATASETS[key] = dataset


def evaluate_train(genotype: Genotype, seed: int, options: dict[str, Any]) -> dict[str, Any]:
    """Train the child with :func:`nasnet.train.train`; raises on a failed run.

    ``options``: ``dataset``, ``child_cells``, ``child_filters``, ``child_epochs`` and,
    optionally, ``child_batch_size``, ``child_lr``, ``image_size``, ``threads``.
    """
    from nasnet.train import TrainConfig, train

    config = TrainConfig(
        dataset=options["dataset"],
        cells=int(options["child_cells"]),
        filters=int(options["child_filters"]),
        epochs=int(options["child_epochs"]),
        seed=seed,
        image_size=options.get("image_size"),
        threads=options.get("threads"),
        device=options.get("device") or "cpu",
        eval_test=True,
    )
    if options.get("child_batch_size"):
        config.batch_size = int(options["child_batch_size"])
    if options.get("child_lr"):
        config.lr = float(options["child_lr"])
    data = cached_dataset(config.dataset, config.image_size)
    result = train(genotype, config, dataset=data)
    if result.get("status") != "done":
        raise RuntimeError(f"training failed: {result.get('reason') or 'unknown reason'}")
    keep = ("val_accuracy", "test_accuracy", "train_accuracy", "val_loss", "params",
            "mult_adds", "seconds", "epochs_done", "val_curve")  # fmt: skip
    return {key: result.get(key) for key in keep}


EVALUATORS = {"toy": evaluate_toy, "train": evaluate_train}


def run_trial(args: dict[str, Any]) -> dict[str, Any]:
    """Evaluate one child (see the module docstring for the argument and result)."""
    name = args["evaluator"]
    if name not in EVALUATORS:
        raise ValueError(f"unknown evaluator {name!r}; choose from {', '.join(EVALUATORS)}")
    options = args.get("options", {})
    genotype = Genotype.from_dict(args["genotype"])
    metrics = EVALUATORS[name](genotype, int(args["seed"]), options)
    accuracy = metrics.get("val_accuracy")
    if accuracy is None or not math.isfinite(accuracy):
        return {"status": "failed", "reward": None, "metrics": metrics,
                "error": f"non-finite validation accuracy: {accuracy}"}  # fmt: skip
    reward = cost_aware_reward(
        float(accuracy),
        metrics.get("mult_adds"),
        options.get("mult_adds_target"),
        float(options.get("cost_weight") or 0.0),
    )
    if not math.isfinite(reward):
        return {"status": "failed", "reward": None, "metrics": metrics,
                "error": f"non-finite reward: {reward}"}  # fmt: skip
    return {"status": "done", "reward": reward, "metrics": metrics, "error": None}


__all__ = [
    "EVALUATORS",
    "TOY_OP_QUALITY",
    "cached_dataset",
    "cost_aware_reward",
    "dataset_key",
    "evaluate_toy",
    "evaluate_train",
    "load_trial_dataset",
    "register_dataset",
    "run_trial",
    "toy_cost",
    "toy_reward",
    "toy_target",
]
