"""The search-space schema: one row per field a space file may set.

A row gives the field's kind (type, allowed names, bounds), its default when a
space leaves it out, and the condition under which it applies (a parent field
and the parent's values). Rows are listed in the order `sample` draws them.

Names and bounds are not repeated here: choices come from the model's and the
training's tables (`BLOCKS`, `SHORTCUTS`, `STEMS`, `BACKBONES`,
`AUGMENTATIONS`, `OPTIMIZERS`), bounds of config fields from `config.BOUNDS`,
and a block's (or optimizer's) own parameters are conditional on the rows
that declare them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from resnet_tuner.config import (
    BOUNDS,
    FLIP_MODES,
    LR_SCHEDULES,
    PRETRAINED_STAGES,
)
from resnet_tuner.model.augment import AUGMENTATIONS
from resnet_tuner.model.backbones import BACKBONES, backbone_stages
from resnet_tuner.model.blocks import BLOCKS, SHORTCUTS, STEMS
from resnet_tuner.presets import PRESETS
from resnet_tuner.space.fields import Kind
from resnet_tuner.training import OPTIMIZERS

#: `Row.default` of a field whose default is the config's own (or the preset's).
INHERIT = object()

SCRATCH = ("scratch",)
#: At most this many residual stages (`num_stages`); a model has one more (its stem).
MAX_STAGES = 8


@dataclass(frozen=True)
class Matching:
    """Condition values given by a rule, for a parent whose values are open.

    `backbone` may be a path (the user's own model), which no list can name:
    `value in Matching(rule)` applies the rule, and a keras-tuner conditional
    scope gets the parent's choices in the space that match it.
    """

    rule: Callable[[Any], bool]

    def __contains__(self, value: Any) -> bool:
        return self.rule(value)


@dataclass(frozen=True)
class Row:
    """One field of the schema.

    Attributes:
        kind: type, allowed names and inclusive bounds of the field's values.
        default: the value a model gets when the space leaves the field out, or
            a function of the values drawn so far; `INHERIT` keeps the
            config's default (or the preset's value).
        condition: `(parent, values)`: the field applies only when the parent
            field takes one of `values`; it is sampled in a keras-tuner
            conditional scope so the oracle does not explore dead combinations.
        derived: sampled by a rule of `sample.py` rather than as one value
            (`preset`, and the stage fields that make depths and widths).
    """

    kind: Kind
    default: Any = INHERIT
    condition: tuple[str, tuple] | None = None
    derived: bool = False


def bounded(kind_type: str, field: str) -> Kind:
    """A numeric kind with the bounds `config.BOUNDS` gives `field`."""
    low, high = BOUNDS[field]
    return Kind(kind_type, low=low, high=high)


def parameter_of(table: dict, field: str) -> tuple[str, ...]:
    """The rows of `table` (blocks, optimizers) that list `field` in their `params`."""
    return tuple(name for name, row in table.items() if field in row.params)


_scratch = ("backbone", SCRATCH)
#: A keras.applications network of `BACKBONES` (ImageNet weights apply).
_pretrained = ("backbone", Matching(lambda value: value in BACKBONES))
#: Any backbone but scratch: the pretrained networks and a path to the user's own model.
_transfer = ("backbone", Matching(lambda value: value not in SCRATCH))
#: Two-phase fine-tuning: a phase 1 of at least one epoch.
_two_phase = ("head_epochs", Matching(lambda value: _is_count(value) and value > 0))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


SCHEMA: dict[str, dict[str, Row]] = {
    "model": {
        # A name (SCRATCH or a BACKBONES key) or the path of a bundle folder / .keras file.
        "backbone": Row(Kind("backbone", SCRATCH + tuple(BACKBONES)), default="scratch"),
        "preset": Row(Kind("str", tuple(PRESETS)), condition=_scratch, derived=True),
        "stem": Row(Kind("str", tuple(STEMS)), condition=_scratch),
        "shortcut": Row(Kind("str", tuple(SHORTCUTS)), condition=_scratch),
        "preactivation": Row(Kind("bool"), condition=_scratch),
        "conv_bias": Row(Kind("bool"), condition=_scratch),
        "bn_epsilon": Row(bounded("float", "bn_epsilon"), condition=_scratch),
        "bn_momentum": Row(bounded("float", "bn_momentum"), condition=_scratch),
        "block": Row(Kind("str", tuple(BLOCKS)), condition=_scratch),
        "expansion": Row(bounded("int", "expansion"),
                         condition=("block", parameter_of(BLOCKS, "expansion"))),
        # Stage layout: one rule of sample.py reads these six together.
        "num_stages": Row(Kind("int", low=1, high=MAX_STAGES), condition=_scratch,
                          derived=True),
        "stage_depths": Row(bounded("ints", "stage_depths"), condition=_scratch, derived=True),
        "stage_widths": Row(bounded("ints", "stage_widths"), condition=_scratch, derived=True),
        "base_width": Row(Kind("int", low=1, high=4096), condition=_scratch, derived=True),
        "width_multiplier": Row(Kind("float", low=0.01, high=16), condition=_scratch,
                                derived=True),
        "stem_width": Row(bounded("int", "stem_width"), condition=_scratch, derived=True),
        "dropout": Row(bounded("float", "dropout")),
        "head_hidden": Row(bounded("int", "head_hidden")),
        "binary_head": Row(Kind("bool")),
    },
    "transfer": {
        # Default: every stage of the backbone frozen (a new head only). A path
        # backbone's stages are counted in the model (one more than MAX_STAGES
        # at most for ours); the config checks a pretrained network's bound.
        "freeze_stages": Row(Kind("int", low=0,
                                  high=max(*PRETRAINED_STAGES.values(), 1 + MAX_STAGES)),
                             default=lambda drawn: backbone_stages(drawn["backbone"]),
                             condition=_transfer),
        "frozen_batchnorm": Row(Kind("bool"), default=False, condition=_transfer),
        "weights": Row(Kind("weights"), default="imagenet", condition=_pretrained),
    },
    "augment": {
        "flip": Row(Kind("str", FLIP_MODES)),
        "gamma": Row(Kind("gamma")),
        "shift": Row(bounded("float", "shift")),
    },
    "train": {
        "optimizer": Row(Kind("str", tuple(OPTIMIZERS)), default="adam"),
        "learning_rate": Row(bounded("float", "learning_rate")),
        "batch_size": Row(bounded("int", "batch_size")),
        "epochs": Row(bounded("int", "epochs")),
        "label_smoothing": Row(bounded("float", "label_smoothing")),
        "weight_decay": Row(bounded("float", "weight_decay")),
        "lr_schedule": Row(Kind("str", LR_SCHEDULES)),
        "momentum": Row(bounded("float", "momentum"),
                        condition=("optimizer", parameter_of(OPTIMIZERS, "momentum"))),
        # Two-phase fine-tuning (TrainConfig.head_epochs): a backbone to freeze first, and
        # phase 2's learning rate only when there is a phase 1.
        "head_epochs": Row(bounded("int", "head_epochs"), condition=_transfer),
        "finetune_lr_scale": Row(bounded("float", "finetune_lr_scale"), condition=_two_phase),
    },
}

#: Sections whose fields make the `TrainConfig`; the others make the `ResNetConfig`.
TRAIN_SECTIONS = ("train",)
TOP_LEVEL_KEYS = ("description", "initial")

if set(SCHEMA["augment"]) != set(AUGMENTATIONS):
    raise ImportError(
        f"the [augment] schema rows {sorted(SCHEMA['augment'])} must be the augmentations "
        f"of model.augment.AUGMENTATIONS {sorted(AUGMENTATIONS)}"
    )


def find_row(name: str) -> tuple[str, Row]:
    """The section and row of field `name` (field names are unique across sections)."""
    for section, rows in SCHEMA.items():
        if name in rows:
            return section, rows[name]
    raise KeyError(name)


def transfer_only(name: str) -> bool:
    """Whether field `name` applies only to a pretrained or path backbone: one of its
    conditions (its own or an ancestor's) is on `backbone` and excludes scratch."""
    row = find_row(name)[1]
    while row.condition is not None:
        parent, values = row.condition
        if parent == "backbone" and SCRATCH[0] not in values:
            return True
        row = find_row(parent)[1]
    return False


def _under_backbone(name: str, row: Row) -> bool:
    while row.condition is not None:
        name = row.condition[0]
        row = find_row(name)[1]
    return name == "backbone"


#: `(section, field, row)` in the order `sample` draws them: the backbone and
#: every field in its conditional scopes first (the scratch architecture, then
#: the pretrained backbone's transfer fields), then the others in schema order.
DRAW_ORDER: list[tuple[str, str, Row]] = sorted(
    ((section, name, row) for section, rows in SCHEMA.items() for name, row in rows.items()),
    key=lambda item: not _under_backbone(item[1], item[2]),
)
