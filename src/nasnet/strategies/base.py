"""The interface every search strategy implements, and helpers to save its state.

A strategy is driven by the search loop (:mod:`nasnet.search`)::

    proposal = strategy.ask()            # a genotype plus what the strategy needs to learn
    ...                                  # the child trains (possibly while others are asked)
    strategy.tell(proposal, reward)      # reward None = the child failed

Results may be told in any order and long after other proposals were asked.
``tell`` returns True when the strategy reached a checkpoint (after a controller update, or
every ``checkpoint_every`` results for strategies without updates); the search loop then saves
:meth:`Strategy.state_dict` so that a resumed search restores it and replays what followed.

State dicts hold only tensors, numbers, strings, lists, tuples, dicts and None, so they
round-trip through ``torch.save`` / ``torch.load(weights_only=True)``
(:func:`state_to_bytes`, :func:`state_from_bytes`).
"""

from __future__ import annotations

import hashlib
import io
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from nasnet.options import Options, option, require
from nasnet.space import Genotype, SearchSpace

#: Results between two saved states of strategies that have no batch update of their own.
CHECKPOINT_EVERY = 20

#: New searches of fewer children get a strategy's small-budget settings (``settings=auto``).
SMALL_BUDGET_LIMIT = 2000
#: Values of a strategy's ``settings`` option.
SETTINGS = ("auto", "small", "paper")


def settings_option() -> Any:
    """The ``settings`` option of a strategy with published and small-budget settings."""
    return option(
        "auto", f"auto: the small-budget values for the options not given when a new search has "
        f"fewer than {SMALL_BUDGET_LIMIT} children, else the published ones; small; paper"
    )  # fmt: skip


def check_settings(options: Options) -> None:
    value = getattr(options, "settings")  # noqa: B009 - the field of the strategy's options
    require(value in SETTINGS, "settings", f"must be one of {', '.join(SETTINGS)}, got {value!r}")


def settings_for_budget(
    options: dict[str, Any], budget: int, small: dict[str, Any]
) -> dict[str, Any]:
    """``settings=auto`` resolved against ``budget``: with ``small`` settings, the options not
    given take the values in ``small``; the resolved ``settings`` is saved with them."""
    settings = options.get("settings")
    if settings is None or str(settings).lower() in ("auto", "none", "null"):  # the default
        settings = "auto"
    if settings == "auto":
        settings = "small" if budget < SMALL_BUDGET_LIMIT else "paper"
    return {**(small if settings == "small" else {}), **options, "settings": settings}


@dataclass
class Proposal:
    """One child to train: its genotype, its ``actions`` (the 2 x 5B decisions that encode it,
    which a resumed search compares to check that it re-draws the same child), the strategy's
    own bookkeeping ``data`` (JSON-serialisable: the log-probability at sampling time, the
    parent, ...) and the strategy's running number ``id`` (0, 1, 2, ... in the order asked)."""

    id: int
    genotype: Genotype
    actions: list[int]
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"id": self.id, "genotype": self.genotype.to_dict(), "actions": self.actions,
                "data": self.data}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> Proposal:
        extra = dict(data["data"])
        # experiments written before nasnet 0.2 kept the actions inside ``data``
        actions = data["actions"] if "actions" in data else extra.pop("actions")
        genotype = Genotype.from_dict(data["genotype"])
        return cls(int(data["id"]), genotype, [int(a) for a in actions], extra)


class Strategy(ABC):
    """Base class: a strategy over ``space`` seeded by ``seed``.

    A subclass names its hyper-parameters in :attr:`Options` (a dataclass of
    :class:`~nasnet.options.Options`); the keyword arguments of the constructor are parsed and
    checked into ``self.opts``.
    """

    #: Registry name (``ppo``, ``reinforce``, ``random``, ``evolution``).
    name: str = ""
    #: The strategy's hyper-parameters, with defaults, help and checks.
    Options: ClassVar[type[Options]] = Options
    #: Values a new search of fewer than :data:`SMALL_BUDGET_LIMIT` children saves for the
    #: options not given (``settings=auto``); None: the strategy has no ``settings`` option.
    small_budget_settings: ClassVar[dict[str, Any] | None] = None

    @classmethod
    def options_for_budget(cls, options: dict[str, Any], budget: int) -> dict[str, Any]:
        """The options a new experiment of ``budget`` children saves: ``options`` (those the
        user gave) completed with :attr:`small_budget_settings` when the budget is small."""
        if cls.small_budget_settings is None:
            return dict(options)
        return settings_for_budget(options, budget, cls.small_budget_settings)

    def __init__(self, space: SearchSpace, seed: int, **options: Any) -> None:
        self.space = space
        self.seed = seed
        self.opts = self.Options.parse(options, f"strategy {self.name!r}")
        self.asked = 0
        self.told = 0
        self.failed = 0

    @abstractmethod
    def ask(self) -> Proposal:
        """Propose the next child."""

    @abstractmethod
    def tell(self, proposal: Proposal, reward: float | None) -> bool:
        """Learn from a child's reward (None when it failed); True at a checkpoint."""

    def options(self) -> dict[str, Any]:
        """The strategy's hyper-parameters (recorded with its state)."""
        return self.opts.to_dict()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimizer, RNG, pending batch."""
        return {
            "name": self.name,
            "options": self.options(),
            "counters": {"asked": self.asked, "told": self.told, "failed": self.failed},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (of a strategy built with the same options)."""
        if state.get("name") != self.name:
            raise ValueError(f"state is of strategy {state.get('name')!r}, not {self.name!r}")
        counters = state["counters"]
        self.asked, self.told, self.failed = counters["asked"], counters["told"], counters["failed"]

    def _count_tell(self, reward: float | None) -> None:
        self.told += 1
        if reward is None:
            self.failed += 1


def state_to_bytes(state: dict[str, Any]) -> bytes:
    """Serialise a state dict with ``torch.save``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def state_from_bytes(blob: bytes) -> dict[str, Any]:
    """Inverse of :func:`state_to_bytes` (``weights_only`` loading: no code is run)."""
    return torch.load(io.BytesIO(blob), weights_only=True)


def state_digest(state: Any) -> str:
    """A hex digest of a state dict's content (tensors by value), for equality checks."""
    digest = hashlib.sha256()
    _feed(digest, state)
    return digest.hexdigest()[:16]


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{list(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes() if tensor.numel() else b"")
    elif isinstance(value, dict):
        digest.update(b"{")
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode())
            _feed(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, list | tuple):
        digest.update(b"[")
        for item in value:
            _feed(digest, item)
        digest.update(b"]")
    else:
        digest.update(repr(value).encode())


__all__ = [
    "CHECKPOINT_EVERY",
    "Proposal",
    "Strategy",
    "state_digest",
    "state_from_bytes",
    "state_to_bytes",
]
