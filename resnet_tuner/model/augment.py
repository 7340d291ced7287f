"""Training-time augmentation: one table from config field to layer.

`AUGMENTATIONS` maps each augmentation field of `ResNetConfig` to the layer
that implements it and the field's neutral value (augmentation off). The
builder adds a layer for every field that is not neutral, in table order; the
export sets every field to neutral, so a serving model never keeps a random op.
Adding an augmentation is a config field, a search-space schema row and one
row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras

from resnet_tuner.config import ResNetConfig
from resnet_tuner.model.layers import RandomFlip, RandomGamma, RandomTranslation


@dataclass(frozen=True)
class Augmentation:
    """One row of `AUGMENTATIONS`.

    Attributes:
        layer: `(value of the field, name) -> keras layer`; the layer must be
            the identity unless called with `training=True`.
        neutral: the field's value that turns the augmentation off.
        example: a value that turns it on (for documentation and for the
            tests, which run every row).
    """

    layer: Callable[[Any, str], keras.layers.Layer]
    neutral: Any
    example: Any


def _flip(mode: str, name: str) -> keras.layers.Layer:
    return RandomFlip({"both": "horizontal_and_vertical"}.get(mode, mode), name=name)


def _shift(fraction: float, name: str) -> keras.layers.Layer:
    return RandomTranslation(fraction, fraction, fill_mode="reflect", name=name)


def _gamma(bounds: tuple[float, float], name: str) -> keras.layers.Layer:
    return RandomGamma(*bounds, name=name)


#: Config field -> augmentation, in the order the layers run.
AUGMENTATIONS: dict[str, Augmentation] = {
    "flip": Augmentation(_flip, neutral="none", example="both"),
    "shift": Augmentation(_shift, neutral=0.0, example=0.2),
    "gamma": Augmentation(_gamma, neutral=None, example=(0.4, 0.7)),
}


def augmentation_layers(cfg: ResNetConfig) -> list[keras.layers.Layer]:
    """The training-only augmentation layers of `cfg` (named `augment_<field>`), in order."""
    return [
        row.layer(getattr(cfg, field), f"augment_{field}")
        for field, row in AUGMENTATIONS.items()
        if getattr(cfg, field) != row.neutral
    ]


def without_augmentation(cfg: ResNetConfig) -> ResNetConfig:
    """`cfg` with every augmentation turned off (what a serving model is built from)."""
    return cfg.replace(**{field: row.neutral for field, row in AUGMENTATIONS.items()})
