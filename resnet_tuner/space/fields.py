"""The three forms of a search-space field, and their parsing from TOML values.

A field is a fixed value (`block = "basic"`), a list of choices
(`shortcut = ["A", "B"]`) or a range table
(`learning_rate = { min = 1e-4, max = 1e-2, sampling = "log" }`). `FieldParser`
turns a raw value into `Fixed`, `Choice` or `Range` after checking it against
the field's `Kind`; errors name the file, field and value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnet_tuner.config import is_backbone_path

RANGE_KEYS = ("min", "max", "step", "sampling")
SAMPLINGS = ("linear", "log", "reverse_log")


class SpaceError(ValueError):
    """A search-space file or dict that makes no sense; says where and why."""


@dataclass(frozen=True)
class Fixed:
    value: Any


@dataclass(frozen=True)
class Choice:
    values: tuple


@dataclass(frozen=True)
class Range:
    min: float
    max: float
    step: float | None = None
    sampling: str = "linear"
    is_int: bool = False


@dataclass(frozen=True)
class Kind:
    """What a field holds: its type, allowed names or numeric bounds (inclusive).

    `type` is one of `"str"`, `"int"`, `"float"`, `"bool"`, `"ints"` (one
    integer per stage), `"gamma"` (`none` or `[low, high]`), `"weights"`
    (`imagenet`, `none` or a file path) and `"backbone"` (one of `names`, or
    the path of an existing bundle folder or `.keras` file).
    """

    type: str
    names: tuple = ()
    low: float = -math.inf
    high: float = math.inf


def encode(value: Any) -> Any:
    """A choice value as keras-tuner can hold it (it takes scalars only)."""
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return "-".join(str(v) for v in value)
    return value


def plain(value: Any) -> Any:
    """A parsed value as it would be written in a file (tuples as lists, None as "none")."""
    if isinstance(value, tuple):
        return list(value)
    return "none" if value is None else value


class FieldParser:
    """Parses raw field values of one source (a file name, or `"<dict>"`)."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, value: Any, why: str) -> SpaceError:
        return SpaceError(f"{self.source}: {where} = {value!r}: {why}")

    def field(self, where: str, kind: Kind, raw: Any) -> Fixed | Choice | Range:
        """A fixed value, a list of choices or a range table, checked against `kind`."""
        if isinstance(raw, Mapping):
            return self.range(where, kind, raw)
        if isinstance(raw, list) and self._is_choice_list(kind, raw):
            if not raw:
                raise self.fail(where, raw, "an empty list of choices; give at least one value")
            values = tuple(self.scalar(where, kind, v) for v in raw)
            values = tuple(dict.fromkeys(values))  # drop repeats, keep order
            return Fixed(values[0]) if len(values) == 1 else Choice(values)
        return Fixed(self.scalar(where, kind, raw))

    def scalar(self, where: str, kind: Kind, value: Any) -> Any:
        """Validates one concrete value of a field and returns it normalised."""
        t = kind.type
        if t == "str":
            if value not in kind.names:
                raise self.fail(where, value, f"must be one of {', '.join(map(repr, kind.names))}")
            return value
        if t == "bool":
            if not isinstance(value, bool):
                raise self.fail(where, value, "must be true or false")
            return value
        if t == "backbone":
            if value in kind.names:
                return value
            if not is_backbone_path(value):
                raise self.fail(
                    where, value,
                    f"must be one of {', '.join(map(repr, kind.names))}, or the path of a "
                    "resnet_tuner bundle folder or a .keras model file (with a / or .keras)")
            if not Path(value).expanduser().exists():
                raise self.fail(where, value, "no such bundle folder or .keras model file")
            return value
        if t == "weights":
            if isinstance(value, str) and value.lower() == "none":
                return None
            if not isinstance(value, str) or not value:
                raise self.fail(where, value, "must be 'imagenet', 'none' or a file path")
            return value
        if t == "gamma":
            if value in ("none", False):
                return None
            if (
                isinstance(value, list)
                and len(value) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                and 0 < value[0] <= value[1]
            ):
                return (float(value[0]), float(value[1]))
            raise self.fail(where, value, "must be 'none' or [low, high] with 0 < low <= high")
        if t == "ints":
            if not isinstance(value, list) or not value:
                raise self.fail(where, value, "must be a non-empty list of integers, one per stage")
            return tuple(self.number(where, Kind("int", low=kind.low, high=kind.high), v)
                         for v in value)
        return self.number(where, kind, value)

    def number(self, where: str, kind: Kind, value: Any) -> int | float:
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind.type == "int" and not (is_number and float(value).is_integer()):
            raise self.fail(where, value, "must be an integer")
        if not is_number:
            raise self.fail(where, value, "must be a number")
        if not kind.low <= value <= kind.high:
            raise self.fail(where, value, f"must be between {kind.low} and {kind.high}")
        return int(value) if kind.type == "int" else float(value)

    @staticmethod
    def _is_choice_list(kind: Kind, raw: list) -> bool:
        # For list-valued fields, a flat list is one value and a list of lists
        # (or, for gamma, containing "none") is a list of choices.
        if kind.type == "ints":
            return not raw or any(isinstance(v, list) for v in raw)
        if kind.type == "gamma":
            return not raw or any(isinstance(v, (list, str, bool)) for v in raw)
        return True

    def range(self, where: str, kind: Kind, raw: Mapping) -> Range:
        unknown = sorted(set(raw) - set(RANGE_KEYS))
        if unknown:
            raise self.fail(where, dict(raw), f"unknown range key(s) {unknown}; use {RANGE_KEYS}")
        if kind.type not in ("int", "float", "ints"):
            raise self.fail(where, dict(raw), "takes a value or a list of choices, not a range")
        if "min" not in raw or "max" not in raw:
            raise self.fail(where, dict(raw), "a range needs both min and max")
        number_kind = Kind("int" if kind.type in ("int", "ints") else "float",
                           low=kind.low, high=kind.high)
        low = self.number(f"{where}.min", number_kind, raw["min"])
        high = self.number(f"{where}.max", number_kind, raw["max"])
        if low > high:
            raise self.fail(where, dict(raw), f"min ({low}) is greater than max ({high})")
        step = raw.get("step")
        if step is not None:
            step = self.number(f"{where}.step", Kind(number_kind.type, low=0), step)
            if step <= 0:
                raise self.fail(where, dict(raw), "step must be positive")
        sampling = raw.get("sampling", "linear")
        if sampling not in SAMPLINGS:
            raise self.fail(where, dict(raw), f"sampling must be one of {SAMPLINGS}")
        if sampling != "linear" and low <= 0:
            raise self.fail(where, dict(raw), f"{sampling} sampling needs min > 0")
        return Range(low, high, step, sampling, is_int=number_kind.type == "int")
