"""Options that a search component (strategy, executor, evaluator) declares for itself.

Each component class names a small dataclass, a subclass of :class:`Options`, whose fields are
its hyper-parameters with their defaults and ``help`` metadata, and whose :meth:`Options.check`
validates them. The search config stores them as plain dicts (``strategy_options`` and so on);
:meth:`Options.parse` turns such a dict into checked options, and the command line offers every
field as ``--strategy-option NAME=VALUE`` without knowing any of them.

Errors are :class:`OptionError`, which names the field (``lr``, ``child.epochs``...), never a
command-line flag: the CLI translates fields to flags in one place.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar


class OptionError(ValueError):
    """An option has a bad value; ``field`` names it (a dotted path such as ``child.lr``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    def within(self, prefix: str) -> OptionError:
        """The same error with ``prefix.`` in front of the field name."""
        return OptionError(f"{prefix}.{self.field}", self.problem)


def option(default: Any, help: str) -> Any:
    """A dataclass field with a default and its help text."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class Options:
    """Base of every component's options; subclasses add fields and extend :meth:`check`."""

    #: Fields that may change when an experiment is resumed.
    MUTABLE: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def parse(cls, data: dict[str, Any] | None, owner: str = "this component") -> Options:
        """Checked options from a dict of field values (missing fields keep their defaults);
        ``owner`` names whose options they are in errors (``strategy 'ppo'``)."""
        data = dict(data or {})
        known = {f.name: f for f in dataclasses.fields(cls)}
        for name in data:
            if name not in known:
                choices = f"its options are {', '.join(known)}" if known else "it takes none"
                raise OptionError(name, f"not an option of {owner}; {choices}")
        values = {name: coerce(known[name], value, cls) for name, value in data.items()}
        options = cls(**values)
        options.check()
        return options

    @classmethod
    def parse_within(cls, data: dict[str, Any] | None, owner: str, field: str) -> Options:
        """:meth:`parse` for the options held in the config field ``field`` (errors name
        ``field.option``)."""
        try:
            return cls.parse(data, owner)
        except OptionError as err:
            raise err.within(field) from None

    def check(self) -> None:
        """Raise :class:`OptionError` naming the first bad field."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def describe(cls) -> list[tuple[str, str, Any, str]]:
        """``(name, type name, default, help)`` of every field, for help texts."""
        hints = typing.get_type_hints(cls)
        return [
            (f.name, type_name(hints[f.name]), f.default, f.metadata.get("help", ""))
            for f in dataclasses.fields(cls)
        ]


def type_name(hint: Any) -> str:
    names = [a.__name__ for a in _members(hint) if a is not type(None)]
    optional = type(None) in _members(hint)
    return "|".join(names) + (" or none" if optional else "")


def _members(hint: Any) -> tuple:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)


def coerce(field: dataclasses.Field, value: Any, cls: type) -> Any:
    """``value`` converted to the field's type (strings from the command line included)."""
    hint = typing.get_type_hints(cls)[field.name]
    kinds = _members(hint)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if type(None) in kinds:
            return None
        raise OptionError(field.name, "needs a value")
    for kind in (k for k in kinds if k is not type(None)):
        try:
            return _convert(kind, value)
        except (TypeError, ValueError):
            continue
    expected = type_name(hint)
    raise OptionError(field.name, f"expected {expected}, got {value!r}")


def _convert(kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ValueError(value)
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        return int(value)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(value)
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    raise TypeError(kind)


# --------------------------------------------------------------------------- common checks


def require(condition: bool, field: str, problem: str) -> None:
    """Raise :class:`OptionError` unless ``condition``."""
    if not condition:
        raise OptionError(field, problem)


def check_at_least(options: object, name: str, low: float, high: float | None = None) -> None:
    """At least ``low`` (and at most ``high``: a bound that keeps a typo such as an extra
    zero from allocating what no machine has, or from never acting)."""
    value = getattr(options, name)
    if high is None:
        require(value >= low, name, f"must be at least {low}, got {value}")
    else:
        require(low <= value <= high, name, f"must be in [{low}, {high}], got {value}")


def check_finite(options: object, name: str, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> None:  # fmt: skip
    """A finite number within ``[low, high]`` (``(low, high]`` when ``low_open``)."""
    value = getattr(options, name)
    if value is None:
        return
    ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = _bounds(low, high, low_open)
        raise OptionError(name, f"must be a finite number{bounds}, got {value}")


def _bounds(low: float | None, high: float | None, low_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}]"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" <= {high}"
    return ""


__all__ = [
    "OptionError",
    "Options",
    "check_at_least",
    "check_finite",
    "coerce",
    "option",
    "require",
]
