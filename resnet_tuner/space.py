"""Declarative search spaces: TOML presets -> `SearchSpace.sample(hp)` -> configs.

A space file has four tables, `[model]`, `[transfer]`, `[augment]` and
`[train]`. Every field is either

* a fixed value: `block = "basic"`, `stage_widths = [32, 64, 128, 256]`;
* a list of choices: `shortcut = ["A", "B", "C"]`, `stage_depths = [[2, 2], [3, 3]]`;
* a range table: `learning_rate = { min = 1e-4, max = 1e-2, sampling = "log" }`,
  `dropout = { min = 0.0, max = 0.3, step = 0.1 }`.

`stage_depths` given as a range draws one depth per stage (`stage2_depth`,
`stage3_depth`, ...). Widths come from `stage_widths`, or from `base_width`
doubled at every stage, times an optional `width_multiplier`. `preset` starts
from a named architecture (`resnet50`, `resnet20`, `mini_resnet`, ...) that the
other fields override. `[transfer]` fields only apply to `backbone = "resnet50"`;
they and `expansion` (bottleneck only) are sampled in keras-tuner conditional
scopes so the oracle does not explore dead combinations.

This module is the only code that touches `HyperParameters`.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import keras_tuner as kt

from resnet_tuner.config import (
    BACKBONES,
    BLOCK_TYPES,
    FLIP_MODES,
    LR_SCHEDULES,
    OPTIMIZERS,
    PRESETS,
    RESNET50_STAGES,
    SHORTCUT_MODES,
    STEM_TYPES,
    ResNetConfig,
    TrainConfig,
)

# --------------------------------------------------------------------------- field specs


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
    """What a field holds: `scalar` type, allowed names or numeric bounds."""

    type: str  # "str" | "int" | "float" | "bool" | "ints" | "gamma" | "weights"
    names: tuple = ()
    low: float = -math.inf
    high: float = math.inf


SCHEMA: dict[str, dict[str, Kind]] = {
    "model": {
        "backbone": Kind("str", BACKBONES),
        "preset": Kind("str", tuple(PRESETS)),
        "block": Kind("str", BLOCK_TYPES),
        "num_stages": Kind("int", low=1, high=8),
        "stage_depths": Kind("ints", low=1, high=64),
        "stage_widths": Kind("ints", low=1, high=4096),
        "base_width": Kind("int", low=1, high=4096),
        "width_multiplier": Kind("float", low=0.01, high=16),
        "shortcut": Kind("str", SHORTCUT_MODES),
        "stem": Kind("str", STEM_TYPES),
        "stem_width": Kind("int", low=1, high=4096),
        "expansion": Kind("int", low=1, high=16),
        "preactivation": Kind("bool"),
        "conv_bias": Kind("bool"),
        "bn_epsilon": Kind("float", low=1e-9, high=1.0),
        "bn_momentum": Kind("float", low=0.0, high=0.999),
        "dropout": Kind("float", low=0.0, high=0.95),
        "head_hidden": Kind("int", low=0, high=16384),
        "binary_head": Kind("bool"),
    },
    "transfer": {
        "freeze_stages": Kind("int", low=0, high=RESNET50_STAGES),
        "weights": Kind("weights"),
    },
    "augment": {
        "flip": Kind("str", FLIP_MODES),
        "gamma": Kind("gamma"),
        "shift": Kind("float", low=0.0, high=0.5),
    },
    "train": {
        "optimizer": Kind("str", OPTIMIZERS),
        "learning_rate": Kind("float", low=1e-8, high=10.0),
        "batch_size": Kind("int", low=1, high=65536),
        "epochs": Kind("int", low=1, high=100000),
        "label_smoothing": Kind("float", low=0.0, high=0.5),
        "weight_decay": Kind("float", low=0.0, high=1.0),
        "momentum": Kind("float", low=0.0, high=0.999),
        "lr_schedule": Kind("str", LR_SCHEDULES),
    },
}
TOP_LEVEL_KEYS = ("description", "initial")
RANGE_KEYS = ("min", "max", "step", "sampling")
SAMPLINGS = ("linear", "log", "reverse_log")


class SpaceError(ValueError):
    """A search-space file or dict that makes no sense; says where and why."""


def _encode(value: Any) -> Any:
    """Choice values keras-tuner can hold (it takes scalars only)."""
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return "-".join(str(v) for v in value)
    return value


class _FieldParser:
    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, value: Any, why: str) -> SpaceError:
        return SpaceError(f"{self.source}: {where} = {value!r}: {why}")

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

    def field(self, where: str, kind: Kind, raw: Any) -> Fixed | Choice | Range:
        if isinstance(raw, Mapping):
            return self.range(where, kind, raw)
        if isinstance(raw, list) and self._is_choice_list(kind, raw):
            if not raw:
                raise self.fail(where, raw, "an empty list of choices; give at least one value")
            values = tuple(self.scalar(where, kind, v) for v in raw)
            values = tuple(dict.fromkeys(values))  # drop repeats, keep order
            return Fixed(values[0]) if len(values) == 1 else Choice(values)
        return Fixed(self.scalar(where, kind, raw))

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


# --------------------------------------------------------------------------- the space


class SearchSpace:
    """A parsed, validated search space.

    Build one with `load_space`. `sample(hp)` is the only place where
    keras-tuner hyperparameters are created.

    Attributes:
        source: where the space came from (preset name, file path or "<dict>").
        fields: `{section: {field: Fixed | Choice | Range}}`.
        description: the file's `description`, if any.
    """

    def __init__(self, raw: Mapping[str, Any], source: str = "<dict>"):
        self.source = source
        parser = _FieldParser(source)
        unknown = sorted(set(raw) - set(SCHEMA) - set(TOP_LEVEL_KEYS))
        if unknown:
            raise SpaceError(
                f"{source}: unknown section(s) {unknown}; expected {sorted(SCHEMA)}"
            )
        self.description = str(raw.get("description", ""))
        self.fields: dict[str, dict[str, Fixed | Choice | Range]] = {}
        for section, kinds in SCHEMA.items():
            table = raw.get(section, {})
            if not isinstance(table, Mapping):
                raise SpaceError(f"{source}: [{section}] must be a table of fields")
            bad = sorted(set(table) - set(kinds))
            if bad:
                raise SpaceError(
                    f"{source}: unknown field(s) {bad} in [{section}]; "
                    f"known fields: {', '.join(kinds)}"
                )
            self.fields[section] = {
                name: parser.field(f"[{section}] {name}", kinds[name], value)
                for name, value in table.items()
            }
        self._check_consistency()
        self.initial = self._check_initial(raw.get("initial", []))

    def _check_initial(self, raw: Any, lenient: bool = False) -> list[dict[str, Any]]:
        """`[[initial]]` tables: hyperparameter values the search tries first.

        Each names tuned hyperparameters as the trials record them
        (`base_width`, `stage2_depth`, `learning_rate`, ...); the rest take
        their defaults. Every value must lie in the space; with `lenient`,
        values that no longer do (after `override`) are dropped instead.
        """
        if isinstance(raw, Mapping):
            raw = [raw]
        if not isinstance(raw, list) or not all(isinstance(t, Mapping) for t in raw):
            raise SpaceError(f"{self.source}: initial must be a list of tables ([[initial]])")
        if lenient:
            probe = kt.HyperParameters()
            self.sample(probe)
            now_tuned = {h.name: h for h in probe.space}
        checked = []
        for i, table in enumerate(raw):
            where = f"{self.source}: [[initial]] #{i + 1}"
            values = {name: _encode(value) for name, value in table.items()}
            if lenient:
                values = {k: v for k, v in values.items()
                          if k in now_tuned and _allowed(now_tuned[k], v)}
            hp = kt.HyperParameters()
            hp.values.update(values)
            failure = None
            try:
                self.sample(hp)
            except KeyError as err:  # a choice the space does not have: named below
                failure = err
            except (SpaceError, ValueError) as err:
                raise SpaceError(f"{where} makes an invalid model: {err}") from err
            tuned = {h.name: h for h in hp.space}
            unknown = sorted(set(values) - set(tuned))
            if unknown:
                raise SpaceError(f"{where}: {unknown} are not tuned by this space; it tunes "
                                 f"{sorted(tuned) or 'nothing'}")
            for name, value in values.items():
                if not _allowed(tuned[name], value):
                    h = tuned[name]
                    domain = (f"in [{h.min_value}, {h.max_value}]" if hasattr(h, "min_value")
                              else f"one of {list(getattr(h, 'values', []))}")
                    raise SpaceError(f"{where}: {name} = {value!r} is not {domain}")
            if failure is not None:
                raise SpaceError(f"{where}: value {failure} is not in the space")
            if values:
                checked.append(values)
        return checked

    # ------------------------------------------------------------ validation
    def _check_consistency(self) -> None:
        model = self.fields["model"]
        depths = model.get("stage_depths")
        if isinstance(depths, Range) and "num_stages" not in model and not self._widths_fixed():
            raise SpaceError(
                f"{self.source}: [model] stage_depths is a range (one depth per stage) but the "
                "number of stages is unknown: add num_stages or a fixed stage_widths list"
            )
        backbone = model.get("backbone", Fixed("scratch"))
        if self.fields["transfer"] and backbone == Fixed("scratch"):
            raise SpaceError(
                f"{self.source}: [transfer] fields {sorted(self.fields['transfer'])} only apply "
                'to backbone = "resnet50", but this space only has backbone = "scratch"'
            )
        if "stage_widths" in model and "base_width" in model:
            raise SpaceError(
                f"{self.source}: [model] sets both stage_widths and base_width; keep one"
            )
        # Every combination must make a valid config: try the extremes of each
        # field one at a time against the defaults (cheap, catches e.g. option
        # A with shrinking widths, or a binary head with a preset).
        for hp in self._probe_hyperparameters():
            try:
                self.sample(hp)
            except (SpaceError, ValueError) as err:
                values = {k: v for k, v in hp.values.items()}
                raise SpaceError(
                    f"{self.source}: the space contains invalid models ({err}); "
                    f"for example with {values}"
                ) from err

    def override(self, section: str, **values: Any) -> SearchSpace:
        """A copy of the space with fields of `section` fixed (or re-specified).

        Values take the same forms as in a file (value, list of choices, range
        dict) and are validated the same way, e.g.
        `space.override("train", batch_size=64, epochs=5)`.

        Raises:
            SpaceError: unknown section or field, or an invalid value.
        """
        if section not in SCHEMA:
            raise SpaceError(f"{self.source}: unknown section [{section}]; use {sorted(SCHEMA)}")
        parser = _FieldParser(f"{self.source} (override)")
        clone = object.__new__(SearchSpace)
        clone.__dict__.update(self.__dict__)
        clone.fields = {s: dict(f) for s, f in self.fields.items()}
        for name, value in values.items():
            if name not in SCHEMA[section]:
                raise SpaceError(f"{self.source}: unknown field {name!r} in [{section}]")
            clone.fields[section][name] = parser.field(
                f"[{section}] {name}", SCHEMA[section][name], value
            )
        clone._check_consistency()
        # Initial values of fields fixed now (e.g. --batch-size) give way to the override.
        clone.initial = clone._check_initial(self.initial, lenient=True)
        return clone

    def fixed_value(self, section: str, name: str, default: Any = None) -> Any:
        """The value of a field that is fixed, else `default`."""
        spec = self.fields[section].get(name)
        return spec.value if isinstance(spec, Fixed) else default

    def _widths_fixed(self) -> bool:
        return isinstance(self.fields["model"].get("stage_widths"), Fixed)

    def _probe_hyperparameters(self) -> list[kt.HyperParameters]:
        probes = [kt.HyperParameters()]  # the defaults: first choice, range minimum
        for section in self.fields.values():
            for name, spec in section.items():
                if isinstance(spec, Choice):
                    extremes = [spec.values[-1]]
                elif isinstance(spec, Range):
                    extremes = [spec.max]
                else:
                    continue
                names = [name]
                if name == "stage_depths" and isinstance(spec, Range):
                    names = [f"stage{s}_depth" for s in range(2, 10)]
                for value in extremes:
                    hp = kt.HyperParameters()
                    hp.values.update({n: _encode(value) for n in names})
                    probes.append(hp)
        return probes

    # ------------------------------------------------------------ sampling
    def _value(self, hp: kt.HyperParameters, section: str, name: str, default: Any = None,
               hp_name: str | None = None) -> Any:
        spec = self.fields[section].get(name)
        hp_name = hp_name or name
        if spec is None:
            return default
        if isinstance(spec, Fixed):
            return spec.value
        if isinstance(spec, Choice):
            encoded = {_encode(v): v for v in spec.values}
            # Pre-set values (hp.values[name] = ...) may arrive unregistered.
            chosen = hp.Choice(hp_name, list(encoded))
            return encoded[chosen]
        if spec.is_int:
            return hp.Int(hp_name, int(spec.min), int(spec.max), step=spec.step or 1,
                          sampling=spec.sampling)
        return hp.Float(hp_name, spec.min, spec.max, step=spec.step, sampling=spec.sampling)

    def _is_tuned(self, section: str, name: str) -> bool:
        return isinstance(self.fields[section].get(name), (Choice, Range))

    def sample(self, hp: kt.HyperParameters) -> tuple[ResNetConfig, TrainConfig]:
        """Draws one model and training configuration from the space.

        Args:
            hp: the trial's hyperparameters (a fresh `kt.HyperParameters()` gives
                the space's defaults: first choice, range minimum).

        Returns:
            `(ResNetConfig, TrainConfig)`.
        """
        fields: dict[str, Any] = {}
        backbone = self._value(hp, "model", "backbone", "scratch")
        fields["backbone"] = backbone
        with self._scope(hp, "model", "backbone", ["scratch"]):
            if backbone == "scratch":
                fields.update(self._sample_architecture(hp))
        with self._scope(hp, "model", "backbone", ["resnet50"]):
            if backbone == "resnet50":
                fields["freeze_stages"] = self._value(hp, "transfer", "freeze_stages", 5)
                fields["weights"] = self._value(hp, "transfer", "weights", "imagenet")
        for name in ("dropout", "head_hidden", "binary_head"):
            value = self._value(hp, "model", name)
            if value is not None:
                fields[name] = value
        for name in ("flip", "gamma", "shift"):
            if name in self.fields["augment"]:
                fields[name] = self._value(hp, "augment", name)

        train: dict[str, Any] = {}
        optimizer = self._value(hp, "train", "optimizer", "adam")
        train["optimizer"] = optimizer
        for name in ("learning_rate", "batch_size", "epochs", "label_smoothing", "weight_decay",
                     "lr_schedule"):
            if name in self.fields["train"]:
                train[name] = self._value(hp, "train", name)
        with self._scope(hp, "train", "optimizer", ["sgd", "rmsprop"]):
            if optimizer in ("sgd", "rmsprop") and "momentum" in self.fields["train"]:
                train["momentum"] = self._value(hp, "train", "momentum")
        return ResNetConfig(**fields), TrainConfig(**train)

    def _sample_architecture(self, hp: kt.HyperParameters) -> dict[str, Any]:
        preset = self._value(hp, "model", "preset")
        base = ResNetConfig.preset(preset) if preset else ResNetConfig()
        out: dict[str, Any] = {}
        plain = ("stem", "shortcut", "preactivation", "conv_bias", "bn_epsilon", "bn_momentum")
        for name in plain:
            out[name] = self._value(hp, "model", name, getattr(base, name))
        block = self._value(hp, "model", "block", base.block)
        out["block"] = block
        with self._scope(hp, "model", "block", ["bottleneck"]):
            if block == "bottleneck":
                out["expansion"] = self._value(hp, "model", "expansion", base.expansion)

        widths_spec = self.fields["model"].get("stage_widths")
        num_stages = self._value(hp, "model", "num_stages")
        depth_spec = self.fields["model"].get("stage_depths")
        if isinstance(depth_spec, Range):
            if num_stages is None:
                num_stages = len(widths_spec.value)
            depths = tuple(
                self._value(hp, "model", "stage_depths", hp_name=f"stage{s}_depth")
                for s in range(2, num_stages + 2)
            )
        else:
            depths = self._value(hp, "model", "stage_depths", base.stage_depths)
            if num_stages is not None:
                depths = _fit_length(depths, num_stages)
        widths = self._value(hp, "model", "stage_widths")
        if widths is None:
            base_width = self._value(hp, "model", "base_width")
            if base_width is None:
                widths = _fit_length(base.stage_widths, len(depths), grow=2)
            else:
                widths = tuple(base_width * 2**i for i in range(len(depths)))
        if len(widths) != len(depths):
            raise SpaceError(
                f"{self.source}: stage_widths {widths} and stage_depths {depths} "
                "have different numbers of stages"
            )
        multiplier = self._value(hp, "model", "width_multiplier", 1.0)
        widths = tuple(max(1, round(w * multiplier)) for w in widths)
        out["stage_depths"], out["stage_widths"] = depths, widths
        # The stem feeds the first stage: by default it is as wide as that stage
        # (true of every paper network and of the 003 seed's mini_resnet).
        out["stem_width"] = self._value(hp, "model", "stem_width", widths[0])
        if preset and base.head_hidden and "head_hidden" not in self.fields["model"]:
            out["head_hidden"] = base.head_hidden
        if preset and base.conv_bias and "conv_bias" not in self.fields["model"]:
            out["conv_bias"] = True
        return out

    def _scope(self, hp: kt.HyperParameters, section: str, parent: str, values: list):
        """A conditional scope when `parent` is tuned; a no-op when it is fixed."""
        if self._is_tuned(section, parent):
            return hp.conditional_scope(parent, [_encode(v) for v in values])
        return _NullScope()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly description of the space (for reports and model cards)."""

        def show(spec):
            if isinstance(spec, Fixed):
                return _plain(spec.value)
            if isinstance(spec, Choice):
                return [_plain(v) for v in spec.values]
            out = {"min": spec.min, "max": spec.max, "sampling": spec.sampling}
            if spec.step is not None:
                out["step"] = spec.step
            return out

        out = {s: {k: show(v) for k, v in f.items()} for s, f in self.fields.items() if f}
        if self.initial:
            out["initial"] = [dict(values) for values in self.initial]
        return out


def _allowed(hp: Any, value: Any) -> bool:
    """Whether a keras-tuner hyperparameter can take `value`."""
    if type(hp).__name__ in ("Choice", "Boolean", "Fixed"):
        return value in getattr(hp, "values", [getattr(hp, "value", None)])
    return isinstance(value, (int, float)) and hp.min_value <= value <= hp.max_value


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return "none" if value is None else value


def _fit_length(values: tuple, length: int, grow: int = 1) -> tuple:
    """Truncates `values`, or extends it by repeating (times `grow`) its last entry."""
    values = tuple(values[:length])
    while len(values) < length:
        values += (values[-1] * grow,)
    return values


class _NullScope:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --------------------------------------------------------------------------- loading


def preset_dir() -> Path:
    """The folder of the bundled presets (inside the installed package)."""
    try:
        root = resources.files("resnet_tuner.search_spaces")
        path = Path(str(root))
        if any(path.glob("*.toml")):
            return path
    except ModuleNotFoundError:
        pass
    # A source checkout run without installing: the presets sit beside the package.
    return Path(__file__).resolve().parent.parent / "search_spaces"


def available_spaces() -> list[str]:
    """Names of the bundled search-space presets."""
    return sorted(p.stem for p in preset_dir().glob("*.toml"))


def load_space(space: str | Path | Mapping[str, Any] | SearchSpace) -> SearchSpace:
    """Loads a search space from a preset name, a TOML file path or a dict.

    Args:
        space: `"quick"`, `"mini"`, `"paper"`, `"cifar"`, `"transfer"`,
            `"full"` (see `available_spaces()`), a path to a `.toml` file, a
            dict with the same tables, or an existing `SearchSpace`.

    Returns:
        The validated `SearchSpace`.

    Raises:
        SpaceError: unknown preset, missing or unreadable file, or a field that
            makes no sense; the message names the file, field and value.

    Example:
        >>> load_space("quick").fields["model"]["block"]
        Fixed(value='basic')
    """
    if isinstance(space, SearchSpace):
        return space
    if isinstance(space, Mapping):
        return SearchSpace(space, source="<dict>")
    text = str(space)
    path = Path(text).expanduser()
    if not (path.suffix == ".toml" or path.exists() or "/" in text or "\\" in text):
        if text not in available_spaces():
            raise SpaceError(
                f"Unknown search space {text!r}. Use a preset ({', '.join(available_spaces())}) "
                "or the path of a .toml file."
            )
        path = preset_dir() / f"{text}.toml"
        source = f"{text} ({path})"
    else:
        source = str(path)
    if not path.is_file():
        raise SpaceError(f"Search space file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise SpaceError(f"{source}: not valid TOML: {err}") from err
    return SearchSpace(raw, source=source)
