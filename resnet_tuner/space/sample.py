"""`sample_configs`: one loop over the schema turns a trial's hyperparameters into configs.

For every schema row that applies (its condition holds), the field's value is
drawn from the space (fixed, `hp.Choice`, `hp.Int` or `hp.Float`) inside the
conditional scopes of its tuned parents, or falls back to the row's default.
Two derived rules complete the loop: `preset` picks the architecture the
other model fields override, and the stage rule turns `num_stages`,
`stage_depths`, `stage_widths`, `base_width`, `width_multiplier` and
`stem_width` into per-stage depths and widths.
"""

from __future__ import annotations

import contextlib
from typing import Any

import keras_tuner as kt

from resnet_tuner.config import ResNetConfig, TrainConfig
from resnet_tuner.space.fields import Choice, Fixed, Range, SpaceError, encode
from resnet_tuner.space.schema import (
    DRAW_ORDER,
    INHERIT,
    TRAIN_SECTIONS,
    Matching,
    Row,
    find_row,
)

Fields = dict[str, dict[str, Fixed | Choice | Range]]


def draw(hp: kt.HyperParameters, spec: Fixed | Choice | Range, hp_name: str) -> Any:
    """The value of one field: fixed, or registered with `hp` under `hp_name`."""
    if isinstance(spec, Fixed):
        return spec.value
    if isinstance(spec, Choice):
        encoded = {encode(v): v for v in spec.values}
        # Pre-set values (hp.values[name] = ...) may arrive unregistered.
        return encoded[hp.Choice(hp_name, list(encoded))]
    if spec.is_int:
        return hp.Int(hp_name, int(spec.min), int(spec.max), step=spec.step or 1,
                      sampling=spec.sampling)
    return hp.Float(hp_name, spec.min, spec.max, step=spec.step, sampling=spec.sampling)


def _is_tuned(fields: Fields, name: str) -> bool:
    section, _ = find_row(name)
    return isinstance(fields[section].get(name), (Choice, Range))


def _applies(row: Row, drawn: dict[str, Any]) -> bool:
    if row.condition is None:
        return True
    parent, values = row.condition
    return parent in drawn and drawn[parent] in values


def _scopes(stack: contextlib.ExitStack, hp: kt.HyperParameters, fields: Fields,
            row: Row) -> None:
    """Enters the conditional scopes of `row`'s tuned ancestors, outermost first."""
    if row.condition is None:
        return
    parent, values = row.condition
    section, parent_row = find_row(parent)
    _scopes(stack, hp, fields, parent_row)
    if _is_tuned(fields, parent):
        if isinstance(values, Matching):  # the parent's values in this space that match
            values = [v for v in _values_of(fields[section][parent]) if v in values]
        stack.enter_context(hp.conditional_scope(parent, [encode(v) for v in values]))


def _values_of(spec: Choice | Range) -> tuple:
    """Every value a tuned field can take: its choices, or an integer range's steps
    (`head_epochs = { min = 0, max = 3 }` is the parent of `finetune_lr_scale`)."""
    if isinstance(spec, Choice):
        return spec.values
    if not spec.is_int:
        raise TypeError(f"a float range ({spec}) cannot be the parent of a conditional field")
    # A log range's step multiplies (keras-tuner): every integer of it then, a superset.
    step = int(spec.step or 1) if spec.sampling == "linear" else 1
    return tuple(range(int(spec.min), int(spec.max) + 1, step))


def sample_configs(fields: Fields, hp: kt.HyperParameters,
                   source: str) -> tuple[ResNetConfig, TrainConfig]:
    """Draws one `(ResNetConfig, TrainConfig)` from parsed space `fields`."""
    drawn: dict[str, Any] = {}  # values decided so far (conditions read them)
    chosen: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
    base = ResNetConfig()
    for section, name, row in DRAW_ORDER:
        if not _applies(row, drawn):
            continue
        target = chosen["train" if section in TRAIN_SECTIONS else "model"]
        spec = fields[section].get(name)
        with contextlib.ExitStack() as stack:
            _scopes(stack, hp, fields, row)
            if name == "preset":
                if spec is not None:
                    base = ResNetConfig.preset(draw(hp, spec, name))
            elif name == "num_stages":  # the first of the stage rows
                target.update(_stages(fields["model"], hp, base, source))
            elif row.derived:
                continue  # read by the stage rule above
            elif spec is not None:
                target[name] = draw(hp, spec, name)
            elif row.default is not INHERIT:
                default = row.default
                target[name] = default(drawn) if callable(default) else default
        drawn[name] = target.get(name, getattr(base, name, None))
    return base.replace(**chosen["model"]), TrainConfig(**chosen["train"])


def _stages(model: dict[str, Fixed | Choice | Range], hp: kt.HyperParameters,
            base: ResNetConfig, source: str) -> dict[str, Any]:
    """Depths, widths and stem width from the stage fields (the preset's where unset)."""

    def value(name: str, hp_name: str | None = None) -> Any:
        spec = model.get(name)
        return None if spec is None else draw(hp, spec, hp_name or name)

    num_stages = value("num_stages")
    depth_spec = model.get("stage_depths")
    if isinstance(depth_spec, Range):
        # One depth per stage: stage2_depth, stage3_depth, ...
        if num_stages is None:
            num_stages = len(model["stage_widths"].value)
        depths = tuple(value("stage_depths", f"stage{s}_depth")
                       for s in range(2, num_stages + 2))
    else:
        depths = value("stage_depths") or base.stage_depths
        if num_stages is not None:
            depths = _fit_length(depths, num_stages)
    widths = value("stage_widths")
    if widths is None:
        base_width = value("base_width")
        if base_width is None:
            widths = _fit_length(base.stage_widths, len(depths), grow=2)
        else:
            widths = tuple(base_width * 2**i for i in range(len(depths)))
    if len(widths) != len(depths):
        raise SpaceError(
            f"{source}: stage_widths {widths} and stage_depths {depths} "
            "have different numbers of stages"
        )
    multiplier = value("width_multiplier") or 1.0
    widths = tuple(max(1, round(w * multiplier)) for w in widths)
    # The stem feeds the first stage: by default it is as wide as that stage
    # (true of every network of the paper and of the `mini_resnet` preset).
    stem_width = value("stem_width") or widths[0]
    return {"stage_depths": depths, "stage_widths": widths, "stem_width": stem_width}


def _fit_length(values: tuple, length: int, grow: int = 1) -> tuple:
    """Truncates `values`, or extends it by repeating (times `grow`) its last entry."""
    values = tuple(values[:length])
    while len(values) < length:
        values += (values[-1] * grow,)
    return values
