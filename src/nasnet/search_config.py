"""The configuration of a search experiment, saved in its store.

A search is a strategy (with its options), an evaluator (with its options) scoring children
trained with one :class:`~nasnet.train.TrainConfig`, and an executor (with its options) running
``workers`` children at once, until ``budget`` children are done. Each part checks its own
options (see :mod:`nasnet.options`); :meth:`SearchConfig.check` only delegates and prefixes the
field names (``strategy_options.lr``, ``child.epochs``).

Resuming: :func:`resolve_config` merges the options given for a resumed experiment into the
saved ones (a new experiment's strategy options are first completed from its budget, see
:meth:`~nasnet.strategies.base.Strategy.options_for_budget`). The executor, its options, the
budget, the workers, ``reuse``, ``max_failures`` and each part's ``MUTABLE`` fields may
change; anything else that differs is an error naming the field.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

from nasnet.options import OptionError, require
from nasnet.space import SearchSpace
from nasnet.train import RESUMABLE_CHANGES, TrainConfig, resolve_device

#: Version of the saved config layout (1: the flat layout of nasnet 0.1).
CONFIG_VERSION = 2

#: Top-level fields that may change when an experiment is resumed.
MUTABLE_FIELDS = frozenset(
    {"budget", "workers", "executor", "executor_options", "reuse", "max_failures"}
)

#: Child training fields that may change on resume (besides those of nasnet train).
MUTABLE_CHILD_FIELDS = RESUMABLE_CHANGES | {"device"}

#: Child fields a search sets itself (the seed comes from the trial, no test evaluation).
SEARCH_SET_CHILD_FIELDS = frozenset({"seed", "genotype", "eval_test", "extra"})


def default_child() -> TrainConfig:
    """Children of a search: N=1, F=8, 2 epochs on digits (about 10 s each on one core), on
    the accelerator when there is one, never evaluated on the test split."""
    return TrainConfig(cells=1, filters=8, epochs=2, device="auto", eval_test=False)


@dataclass
class SearchConfig:
    """Every option of an experiment (saved in the store as JSON)."""

    strategy: str = "ppo"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    evaluator: str = "train"
    evaluator_options: dict[str, Any] = field(default_factory=dict)
    executor: str = "local"
    executor_options: dict[str, Any] = field(default_factory=dict)
    child: TrainConfig = field(default_factory=default_child)
    budget: int = 20
    workers: int = 2
    seed: int = 0
    blocks: int = 5
    reuse: bool = True
    max_failures: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["child"] = self.child.to_dict()
        return {"version": CONFIG_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        """Inverse of :meth:`to_dict`; the flat layout of nasnet 0.1 is converted."""
        data = dict(data)
        version = data.pop("version", 1)
        if version == 1:
            data = from_flat_layout(data)
        elif version != CONFIG_VERSION:
            raise OptionError("version", f"config version {version} is not known to this nasnet")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise OptionError(unknown[0], "unknown search option")
        child = data.pop("child", None)
        config = cls(**data)
        if child is not None:
            config.child = _child_from_dict(child)
        return config

    @property
    def failure_limit(self) -> int:
        return self.max_failures if self.max_failures is not None else 2 * self.budget

    @property
    def space(self) -> SearchSpace:
        return SearchSpace(num_blocks=self.blocks)

    def check(self) -> None:
        """Raise :class:`OptionError` naming the first bad field (each part checks its own)."""
        for name, low in (("budget", 1), ("workers", 1), ("blocks", 1)):
            _check_int(self, name, low)
        _check_int(self, "seed", 0, 2**63 - 1)
        if self.max_failures is not None:
            _check_int(self, "max_failures", 1)
        try:
            self.space  # noqa: B018 - validates the number of blocks
        except ValueError as err:
            raise OptionError("blocks", str(err)) from None
        try:
            self.child.check()
        except OptionError as err:
            raise err.within("child") from None
        self.build_strategy_options()
        evaluator = self.build_evaluator()
        executor_class = self.build_executor_class()
        problem = executor_class.workers_problem(self.workers)
        if problem:
            raise OptionError("workers", problem)
        if executor_class.runs_children_here:  # a GPU missing here fails every child
            try:
                resolve_device(self.child.device)
            except OptionError as err:
                raise err.within("child") from None
        # --- stateful evaluators (weight sharing): the state lives in the driver process
        if getattr(evaluator, "stateful", False) and executor_class.isolates_children:
            raise OptionError(
                "executor", f"evaluator {self.evaluator!r} keeps shared weights in the search "
                f"process; {self.executor} runs children elsewhere: use the inprocess executor"
            )  # fmt: skip
        # --- end stateful evaluators
        if evaluator.needs_process_isolation() and not executor_class.isolates_children:
            raise OptionError(
                "executor", f"{self.executor} cannot run children that may crash their process; "
                "use a process executor (local)"
            )  # fmt: skip

    def build_strategy_options(self) -> Any:
        from nasnet.strategies import strategy_class

        options = strategy_class(self.strategy).Options
        return options.parse_within(
            self.strategy_options, f"strategy {self.strategy!r}", "strategy_options"
        )

    def build_evaluator(self) -> Any:
        from nasnet.evaluators import make_evaluator

        return make_evaluator(self.evaluator, self.evaluator_options, self.child, self.space)

    def build_executor_class(self) -> Any:
        from nasnet.executors import executor_class

        cls = executor_class(self.executor)
        cls.Options.parse_within(self.executor_options, f"executor {self.executor!r}",
                                 "executor_options")  # fmt: skip
        return cls


def _check_int(config: object, name: str, low: int, high: int | None = None) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(name, f"must be a whole number, got {value!r}")
    top = "" if high is None else f" and at most {high}"
    require(value >= low and (high is None or value <= high), name,
            f"must be at least {low}{top}, got {value}")  # fmt: skip


def _child_from_dict(data: dict[str, Any]) -> TrainConfig:
    try:
        return TrainConfig.from_dict({**default_child().to_dict(), **data})
    except (TypeError, ValueError) as err:
        raise OptionError("child", str(err)) from None


# --------------------------------------------------------------------------- resume


def check_saved_config(saved: dict[str, Any]) -> None:
    """Raise :class:`OptionError` if a saved config is incomplete or holds a bad value (a
    config of the current layout must name every option)."""
    if saved.get("version", 1) == CONFIG_VERSION:
        names = [f.name for f in dataclasses.fields(SearchConfig)]
        missing = [name for name in names if name not in saved]
        if missing:
            raise OptionError(missing[0], "missing")
    SearchConfig.from_dict(saved).check()


def resolve_config(saved: dict[str, Any] | None, given: dict[str, Any]) -> SearchConfig:
    """The checked config of a new (``saved`` None) or resumed experiment.

    ``given`` holds only the options set by the caller, in the nested layout of
    :meth:`SearchConfig.to_dict` (``{"budget": 9, "child": {"epochs": 3}}``); for a resumed
    experiment the others keep their saved values.
    """
    base = SearchConfig().to_dict() if saved is None else SearchConfig.from_dict(saved).to_dict()
    given = _with_dataset_path(given, None if saved is None else base["child"]["dataset"])
    merged = dict(base)
    for key, value in given.items():
        if key not in merged:
            raise OptionError(key, "unknown search option")
        if isinstance(merged[key], dict) and isinstance(value, dict):
            fresh = (
                key == "executor_options"
                and given.get("executor", merged["executor"]) != (base["executor"])
            )
            merged[key] = dict(value) if fresh else {**merged[key], **value}
        else:
            merged[key] = value
    if saved is None and "executor" not in given and _keeps_state(merged["evaluator"]):
        merged["executor"] = "inprocess"  # the only executor that can run it
    if saved is not None:
        _check_unchanged(base, merged, nested=False)
    config = SearchConfig.from_dict(merged)
    if saved is None:
        _complete_new_options(config)
    config.check()
    if saved is not None:
        _check_unchanged(_with_defaults(base), _with_defaults(config.to_dict()), nested=True)
    return config


def _with_dataset_path(given: dict[str, Any], saved: str | None) -> dict[str, Any]:
    """``given`` with its child dataset's path made absolute (or kept as saved, when it names
    the same data): see :func:`nasnet.data.given_spec`."""
    from nasnet.data import given_spec

    child = given.get("child")
    if not isinstance(child, dict) or not isinstance(child.get("dataset"), str):
        return given
    return {**given, "child": {**child, "dataset": given_spec(child["dataset"], saved)}}


def _keeps_state(evaluator: Any) -> bool:
    """Whether ``evaluator`` names a stateful evaluator (weight sharing), whose children must
    run in the search process."""
    from nasnet.evaluators import EVALUATORS

    return bool(getattr(EVALUATORS.get(evaluator), "stateful", False))


def _complete_new_options(config: SearchConfig) -> None:
    """Write down the strategy's and the evaluator's options a new experiment saves: the
    strategy's completed from the budget, the evaluator's new-search defaults (an unknown part
    is left for :meth:`SearchConfig.check` to name)."""
    from nasnet.evaluators import EVALUATORS
    from nasnet.strategies import STRATEGIES

    strategy, evaluator = STRATEGIES.get(config.strategy), EVALUATORS.get(config.evaluator)
    if strategy is not None:
        config.strategy_options = strategy.options_for_budget(
            config.strategy_options, config.budget
        )
    if evaluator is not None:
        config.evaluator_options = evaluator.options_for_new_search(config.evaluator_options)


def _with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the strategy's and evaluator's options filled in with their defaults
    (so that an option given at its default value is no change)."""
    from nasnet.evaluators import EVALUATORS
    from nasnet.strategies import STRATEGIES

    full = dict(config)
    for part, registry in (("strategy", STRATEGIES), ("evaluator", EVALUATORS)):
        cls = registry.get(config[part])
        with contextlib.suppress(AttributeError, ValueError):  # check() names the problem
            full[f"{part}_options"] = cls.Options.parse(config[f"{part}_options"]).to_dict()
    return full


def _check_unchanged(saved: dict[str, Any], merged: dict[str, Any], nested: bool) -> None:
    """Refuse a change of an immutable field: top-level ones, or (``nested``) the fields of
    the strategy's, the evaluator's and the child's options."""
    from nasnet.evaluators import evaluator_class

    mutable = {
        "child": MUTABLE_CHILD_FIELDS,
        "evaluator_options": evaluator_class(saved["evaluator"]).Options.MUTABLE,
    }
    for key, value in merged.items():
        if key in MUTABLE_FIELDS or isinstance(value, dict) != nested:
            continue
        if not nested:
            if value != saved[key]:
                _refuse(key, saved[key], value)
            continue
        old = saved[key]
        for name in sorted(set(value) | set(old)):
            if name not in mutable.get(key, ()) and value.get(name) != old.get(name):
                _refuse(f"{key}.{name}", old.get(name), value.get(name))


def _refuse(field_name: str, was: Any, now: Any) -> None:
    origin = "without it" if was is None else f"with {was!r}"
    raise OptionError(
        field_name,
        f"this experiment was created {origin}, not {now!r}; leave the option out to resume "
        "it, or start a new experiment in another directory",
    )


# --------------------------------------------------------------------------- nasnet 0.1 layout

#: Flat option of nasnet 0.1 -> (part, field) of the nested layout.
_FLAT_LAYOUT = {
    "dataset": ("child", "dataset"),
    "child_cells": ("child", "cells"),
    "child_filters": ("child", "filters"),
    "child_epochs": ("child", "epochs"),
    "child_batch_size": ("child", "batch_size"),
    "child_lr": ("child", "lr"),
    "image_size": ("child", "image_size"),
    "controller_lr": ("strategy_options", "lr"),
    "controller_batch": ("strategy_options", "batch_size"),
    "ppo_epochs": ("strategy_options", "epochs"),
    "entropy_weight": ("strategy_options", "entropy_weight"),
    "population": ("strategy_options", "population"),
    "sample_size": ("strategy_options", "sample_size"),
    "mult_adds_target": ("evaluator_options", "mult_adds_target"),
    "cost_weight": ("evaluator_options", "cost_weight"),
    "toy_delay": ("evaluator_options", "delay"),
    "toy_fail_rate": ("evaluator_options", "fail_rate"),
    "toy_crash_rate": ("evaluator_options", "crash_rate"),
    "toy_noise": ("evaluator_options", "noise"),
    "toy_target_seed": ("evaluator_options", "target_seed"),
    "threads": ("executor_options", "threads"),
    "ray_address": ("executor_options", "address"),
    "cpus_per_child": ("executor_options", "cpus_per_child"),
    "gpus_per_child": ("executor_options", "gpus_per_child"),
    "max_retries": ("executor_options", "max_retries"),
}

_FLAT_DEFAULTS = {"cost_weight": 0.0, "cpus_per_child": 1.0, "gpus_per_child": 0.0,
                  "max_retries": 3, "threads": 1, "toy_delay": 0.0, "toy_fail_rate": 0.0,
                  "toy_crash_rate": 0.0, "toy_noise": 0.0, "toy_target_seed": 0}  # fmt: skip


def from_flat_layout(flat: dict[str, Any]) -> dict[str, Any]:
    """A nasnet 0.1 config (one flat dict) in the nested layout, with the same meaning: its
    children trained on the CPU (or, as Ray GPU children, on the GPU Ray gave them)."""
    nested: dict[str, Any] = {"child": {}, "strategy_options": {}, "evaluator_options": {},
                              "executor_options": {}}  # fmt: skip
    executor, evaluator = flat.get("executor", "local"), flat.get("evaluator", "train")
    for key, value in flat.items():
        if key not in _FLAT_LAYOUT:
            nested[key] = value
            continue
        part, name = _FLAT_LAYOUT[key]
        if value is None or value == _FLAT_DEFAULTS.get(key, object()):
            continue
        if part == "evaluator_options" and key.startswith("toy_") and evaluator != "toy":
            continue
        if part == "executor_options" and key != "threads" and executor != "ray":
            continue
        if part == "executor_options" and key == "threads" and executor == "inprocess":
            continue
        nested[part][name] = value
    gpus = flat.get("gpus_per_child") or 0
    nested["child"]["device"] = "auto" if executor == "ray" and gpus > 0 else "cpu"
    nested["child"] = {**default_child().to_dict(), **nested["child"]}
    return nested


def trial_seed(experiment_seed: int, trial_id: int) -> int:
    """The seed of a trial: a fixed function of the experiment's seed and the trial id."""
    digest = hashlib.sha256(f"nasnet-trial:{experiment_seed}:{trial_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


__all__ = [
    "CONFIG_VERSION",
    "MUTABLE_FIELDS",
    "SearchConfig",
    "default_child",
    "from_flat_layout",
    "resolve_config",
    "trial_seed",
]
