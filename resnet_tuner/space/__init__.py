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
other fields override. `[transfer]` fields only apply to a pretrained backbone
(`backbone = "resnet50"`, `"resnet101v2"`, ...) or the user's own model
(`backbone = "path/to/bundle"`; `weights` does not apply to it); they and a
block's own fields (`expansion` for bottlenecks) are sampled in keras-tuner
conditional scopes so the oracle does not explore dead combinations. So are
`[train] head_epochs` (two-phase fine-tuning: a pretrained or path backbone
only; an error in a scratch-only space) and `finetune_lr_scale` (only with
`head_epochs` > 0).

This package is the only code that declares hyperparameters (`hp.Choice`,
`hp.Int`, `hp.Float`); the HyperModel passes a trial's `HyperParameters`
through to `sample`, and the tuners and the export only read recorded values.

What lives where:

* `fields`: the field forms `Fixed`, `Choice`, `Range` and their parsing.
* `schema`: `SCHEMA`, one row per field (kind, default, bounds, condition).
* `sample`: the loop that draws configs from a space, and its derived rules.
* here: `SearchSpace` (parsing, consistency checks, `[[initial]]` tables,
  overrides) and loading by preset name or path.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import keras_tuner as kt

from resnet_tuner.config import ResNetConfig, TrainConfig
from resnet_tuner.model.backbones import BACKBONES
from resnet_tuner.space.fields import Choice, FieldParser, Fixed, Range, SpaceError
from resnet_tuner.space.fields import encode as _encode
from resnet_tuner.space.fields import plain as _plain
from resnet_tuner.space.sample import sample_configs
from resnet_tuner.space.schema import SCHEMA, TOP_LEVEL_KEYS, transfer_only

__all__ = ["Choice", "Fixed", "Range", "SearchSpace", "SpaceError", "available_spaces",
           "load_space", "preset_dir"]


class SearchSpace:
    """A parsed, validated search space.

    Build one with `load_space`. `sample(hp)` is the only place where
    keras-tuner hyperparameters are declared.

    Attributes:
        source: where the space came from (preset name, file path or "<dict>").
        fields: `{section: {field: Fixed | Choice | Range}}`.
        description: the file's `description`, if any.
    """

    def __init__(self, raw: Mapping[str, Any], source: str = "<dict>"):
        self.source = source
        parser = FieldParser(source)
        unknown = sorted(set(raw) - set(SCHEMA) - set(TOP_LEVEL_KEYS))
        if unknown:
            raise SpaceError(
                f"{source}: unknown section(s) {unknown}; expected {sorted(SCHEMA)}"
            )
        self.description = str(raw.get("description", ""))
        self.fields: dict[str, dict[str, Fixed | Choice | Range]] = {}
        for section, rows in SCHEMA.items():
            table = raw.get(section, {})
            if not isinstance(table, Mapping):
                raise SpaceError(f"{source}: [{section}] must be a table of fields")
            bad = sorted(set(table) - set(rows))
            if bad:
                raise SpaceError(
                    f"{source}: unknown field(s) {bad} in [{section}]; "
                    f"known fields: {', '.join(rows)}"
                )
            self.fields[section] = {
                name: parser.field(f"[{section}] {name}", rows[name].kind, value)
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
            pretrained = " or ".join([*(f'backbone = "{name}"' for name in BACKBONES),
                                      'backbone = "path/to/bundle"'])
            raise SpaceError(
                f"{self.source}: [transfer] fields {sorted(self.fields['transfer'])} only apply "
                f'to {pretrained}, but this space only has backbone = "scratch"'
            )
        if "stage_widths" in model and "base_width" in model:
            raise SpaceError(
                f"{self.source}: [model] sets both stage_widths and base_width; keep one"
            )
        self._check_two_phase(backbone)
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

    def _check_two_phase(self, backbone: Fixed | Choice) -> None:
        """Two-phase fine-tuning (`[train] head_epochs`, `finetune_lr_scale`) needs a
        backbone to freeze, and a phase 1 shorter than the whole training.

        Set on a space whose only backbone is scratch, they are an error, as
        `[transfer]` fields are (a scratch model trains in one phase); fixed to
        their defaults (`head_epochs = 0`: one phase) they are accepted. In a
        space that also has scratch, they apply to its other backbones only.
        """
        train = self.fields["train"]
        if backbone == Fixed("scratch"):
            defaults = dataclasses.asdict(TrainConfig())
            misplaced = [name for name, spec in train.items()
                         if transfer_only(name) and spec != Fixed(defaults[name])]
            if misplaced:
                raise SpaceError(
                    f"{self.source}: [train] {', '.join(misplaced)} only apply to two-phase "
                    "fine-tuning of a pretrained or path backbone (phase 1 trains the head on "
                    "the frozen backbone, phase 2 fine-tunes at finetune_lr_scale x the "
                    'learning rate), but this space only has backbone = "scratch", which '
                    "trains in one phase: remove them, or set backbone to a pretrained network "
                    '(e.g. "resnet50") or "path/to/bundle"'
                )
        head = _extreme(train.get("head_epochs"), max)
        epochs = _extreme(train.get("epochs", Fixed(TrainConfig().epochs)), min)
        if head and head >= epochs:
            raise SpaceError(
                f"{self.source}: [train] head_epochs can be {head} but epochs can be {epochs}: "
                "phase 1 (head_epochs) must be shorter than the whole training (epochs), "
                "phase 2 trains the rest. Lower head_epochs or raise epochs"
            )

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
        parser = FieldParser(f"{self.source} (override)")
        clone = object.__new__(SearchSpace)
        clone.__dict__.update(self.__dict__)
        clone.fields = {s: dict(f) for s, f in self.fields.items()}
        for name, value in values.items():
            if name not in SCHEMA[section]:
                raise SpaceError(f"{self.source}: unknown field {name!r} in [{section}]")
            clone.fields[section][name] = parser.field(
                f"[{section}] {name}", SCHEMA[section][name].kind, value
            )
        clone._check_consistency()
        # Initial values of fields fixed now (e.g. --batch-size) give way to the override.
        clone.initial = clone._check_initial(self.initial, lenient=True)
        return clone

    def with_available_weights(self, warn: bool = True) -> SearchSpace:
        """This space without the pretrained backbones whose ImageNet weights cannot be had here.

        A backbone of `BACKBONES` with `weights = "imagenet"` (the default)
        needs its weights file in Keras' cache or a working download
        (`model.weights.weights_available`: a HEAD request per backbone not
        cached). Backbone choices without are left out, with one
        `BackboneWeightsWarning` (unless `warn` is False) saying how to install
        them; with no backbone left (e.g. `backbone = "resnet50"` alone) it
        fails. Weights given as a file or `"none"` need nothing.

        Raises:
            WeightsUnavailableError: every backbone of the space lacks its
                weights; the message says how to provide them
                (`resnet-tuner weights install FILE`).
        """
        import warnings

        from resnet_tuner.model.weights import (
            BackboneWeightsWarning,
            WeightsUnavailableError,
            keras_cache_dir,
            weights_available,
            weights_unavailable_message,
        )

        weights = self.fields["transfer"].get("weights", Fixed("imagenet"))
        if not (weights == Fixed("imagenet")
                or isinstance(weights, Choice) and "imagenet" in weights.values):
            return self
        spec = self.fields["model"].get("backbone", Fixed("scratch"))
        choices = spec.values if isinstance(spec, Choice) else (spec.value,)
        missing = [c for c in choices if c in BACKBONES and not weights_available(c)]
        if not missing:
            return self
        kept = tuple(c for c in choices if c not in missing)
        if not kept:
            others = (f" The space's other backbones ({', '.join(missing[1:])}) need theirs "
                      "too." if len(missing) > 1 else "")
            raise WeightsUnavailableError(
                f"{self.source}: {weights_unavailable_message(missing[0])}{others}")
        if warn:
            urls = ", ".join(BACKBONES[name].weights_url for name in missing)
            warnings.warn(BackboneWeightsWarning(
                f"{self.source}: backbone {', '.join(missing)} left out of the search: its "
                f"ImageNet weights are not in the Keras cache ({keras_cache_dir()}) and cannot "
                f"be downloaded here. To search it, download {urls} and run "
                "`resnet-tuner weights install FILE`."), stacklevel=2)
        clone = object.__new__(SearchSpace)
        clone.__dict__.update(self.__dict__)
        clone.fields = {s: dict(f) for s, f in self.fields.items()}
        clone.fields["model"]["backbone"] = Fixed(kept[0]) if len(kept) == 1 else Choice(kept)
        if kept == ("scratch",):  # no backbone left that [transfer] (or two phases) applies to
            clone.fields["transfer"] = {}
            clone.fields["train"] = {name: spec for name, spec in clone.fields["train"].items()
                                     if not transfer_only(name)}
        clone._check_consistency()
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
    def sample(self, hp: kt.HyperParameters) -> tuple[ResNetConfig, TrainConfig]:
        """Draws one model and training configuration from the space.

        Args:
            hp: the trial's hyperparameters (a fresh `kt.HyperParameters()` gives
                the space's defaults: first choice, range minimum).

        Returns:
            `(ResNetConfig, TrainConfig)`.
        """
        return sample_configs(self.fields, hp, self.source)

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


def _extreme(spec: Fixed | Choice | Range | None, pick) -> Any:
    """The largest (`pick=max`) or smallest (`min`) value a numeric field can take."""
    if spec is None:
        return None
    if isinstance(spec, Fixed):
        return spec.value
    if isinstance(spec, Choice):
        return pick(spec.values)
    return pick(spec.min, spec.max)


def _allowed(hp: Any, value: Any) -> bool:
    """Whether a keras-tuner hyperparameter can take `value`."""
    if type(hp).__name__ in ("Choice", "Boolean", "Fixed"):
        return value in getattr(hp, "values", [getattr(hp, "value", None)])
    return isinstance(value, (int, float)) and hp.min_value <= value <= hp.max_value


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
    return Path(__file__).resolve().parents[2] / "search_spaces"


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
