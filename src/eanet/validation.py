"""Checking configuration values against their declared types and ranges, with one-line errors.

Both configurations eanet reads from users go through here: a training run's
:class:`~eanet.train.config.TrainConfig` (recipes, ``--set``, flags, a run's ``config.yaml``) and a
model's constructor arguments (``model_args``, a saved model's ``config.json``). Types come from the
annotations (``int``, ``float``, ``bool``, ``str``, ``X | None``, ``Sequence[X]``, ``tuple[X, Y]``,
``dict``); an ``int`` is accepted where a ``float`` is declared, never a ``bool`` where a number is.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from typing import Any

from eanet.errors import EanetError

__all__ = ["check_type", "check_range", "describe"]


def describe(value: Any) -> str:
    """A value as a user typed it, short enough for one line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(hint) -> str:
    origin, args = typing.get_origin(hint), [a for a in typing.get_args(hint) if a is not Ellipsis]
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple and len(args) > 1 and Ellipsis not in typing.get_args(hint):
        return f"a list of {len(args)} numbers"
    if origin in (list, tuple, collections.abc.Sequence):
        return f"a list of {_type_name(args[0])}" if args else "a list"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping",
            type(None): "null"}.get(hint, getattr(hint, "__name__", str(hint)))


def _matches(value: Any, hint) -> tuple[bool, Any]:
    """Whether ``value`` fits ``hint``, and the value converted (ints to floats, lists to tuples)."""
    if hint is Any:
        return True, value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            ok, converted = _matches(value, arg)
            if ok:
                return True, converted
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if hint is dict or origin is dict:
        return isinstance(value, dict), value
    if hint is list or origin in (list, collections.abc.Sequence, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        args = typing.get_args(hint)
        if origin is tuple and args and Ellipsis not in args:
            if len(value) != len(args):
                return False, value
            pairs = list(zip(value, args, strict=True))
        else:
            item = args[0] if args else Any
            pairs = [(v, item) for v in value]
        converted = []
        for v, h in pairs:
            ok, c = _matches(v, h)
            if not ok:
                return False, value
            converted.append(c)
        return True, tuple(converted) if origin is tuple else converted
    return isinstance(value, hint) if isinstance(hint, type) else True, value


def check_type(where: str, name: str, value: Any, hint) -> Any:
    """``value`` converted to ``hint``, or an :class:`EanetError` naming the field, the value and the type."""
    ok, converted = _matches(value, hint)
    if not ok:
        raise EanetError(f"{where}: {name} must be {_type_name(hint)}, got {describe(value)}")
    return converted


def check_range(where: str, name: str, value, *, low=None, high=None, low_open: bool = False,
                high_open: bool = False) -> None:
    """Refuse a number outside ``[low, high]`` (open ends as asked), naming the field and what is allowed."""
    if value is None:
        return
    # NaN compares false with everything, so it would slip past both bounds: it is out of any range
    too_low = value != value or (low is not None and (value <= low if low_open else value < low))
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        if low is not None and high is not None:
            allowed = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            allowed = f"{'>' if low_open else '>='} {low:g}"
        else:
            allowed = f"{'<' if high_open else '<='} {high:g}"
        raise EanetError(f"{where}: {name} must be {allowed}, got {describe(value)}")
