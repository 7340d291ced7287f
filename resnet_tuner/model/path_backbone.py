"""A path backbone: the user's own model as the backbone of a new one.

`backbone = "path/to/best"` in a space (`ResNetConfig.backbone`): a
`resnet_tuner` bundle folder or any `.keras` model file, cut before its
classifier head (`feature_extractor`), nested as one layer named
`user_backbone` and frozen by its stage names (`backbones.layer_stages`: ours,
or keras.applications'), so a team that trained on its own domain, or an
earlier search, starts the next search from it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import keras

from resnet_tuner.config import ResNetConfig
from resnet_tuner.model.backbones import USER_BACKBONE, layer_stages, stage_count

__all__ = ["feature_extractor", "load_user_model", "user_backbone", "user_backbone_stages",
           "user_model_file"]


def user_model_file(path: str | os.PathLike) -> Path:
    """The `.keras` file of a path backbone: the file itself, or a bundle's `model.keras`.

    Raises:
        FileNotFoundError: nothing there, or a folder without `model.keras`.
    """
    where = Path(path).expanduser()
    if where.is_dir():
        if not (where / "model.keras").is_file():
            raise FileNotFoundError(
                f"backbone {path}: not a resnet_tuner bundle (no model.keras in that folder)")
        return where / "model.keras"
    if not where.is_file():
        raise FileNotFoundError(
            f"backbone not found: {path} (give a resnet_tuner bundle folder, e.g. runs/pets/best, "
            "or a .keras model file)")
    if where.suffix != ".keras":
        raise FileNotFoundError(f"backbone {path}: not a .keras model file or bundle folder")
    return where


def load_user_model(path: str | os.PathLike) -> keras.Model:
    """Loads a path backbone with `safe_mode=True` (our layers are registered)."""
    return keras.saving.load_model(user_model_file(path), safe_mode=True, compile=False)


def _is_ours(model: keras.Model) -> bool:
    """A model of `build_resnet`: uint8 input, then its own `rescale` (pixels / 255)."""
    try:
        rescale = model.get_layer("rescale")
    except ValueError:
        return False
    return isinstance(rescale, keras.layers.Rescaling) and abs(
        float(rescale.scale) * 255 - 1) < 1e-6 and float(rescale.offset) == 0


def feature_extractor(model: keras.Model, name: str = USER_BACKBONE) -> tuple[keras.Model, bool]:
    """`model` without its classifier head: `(extractor, ours)`.

    The head is everything after the last layer whose output is a 4-D feature
    map (global pooling, dropout, dense, ...). For one of resnet_tuner's own
    models (`ours`), the extractor also starts after its `rescale` and
    augmentation layers: it takes [0, 1] images, what the new model's own
    `rescale` and augmentation hand it. Any other model keeps its input and
    whatever preprocessing it holds. The extractor shares the layers (and
    weights) of `model`.

    Raises:
        ValueError: more than one input or output, or no 4-D feature map.
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"a backbone model must have one input and one output; {model.name} "
                         f"has {len(model.inputs)} and {len(model.outputs)}")
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    maps = [i for i, layer in enumerate(layers)
            if isinstance(layer.output, keras.KerasTensor) and len(layer.output.shape) == 4]
    if not maps:
        raise ValueError(f"backbone model {model.name} has no layer with a 4-D "
                         "(batch, height, width, channels) output to cut its head at")
    # The map as the head receives it: a nested model's own `.output` is the
    # tensor inside it, not the one it made in `model`'s graph.
    features = model.outputs[0]
    for layer in layers[maps[-1] + 1:]:
        inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        fed = [t for t in inputs if len(t.shape) == 4]
        if fed:
            features = fed[0]
            break
    ours = _is_ours(model)
    entry = model.inputs[0]
    if ours:
        front = [layer for layer in layers
                 if layer.name == "rescale" or layer.name.startswith("augment_")]
        entry = front[-1].output
    extractor = keras.Model(entry, features, name=name)
    if ours:  # Keras names the input it made for the cut `keras_tensor_<n>CLONE`
        extractor.layers[0].name = f"{name}_input"
    return extractor, ours


def user_backbone(x, config: ResNetConfig):
    """Applies the user's model `config.backbone` (a path) up to its head to `x` ([0, 1]).

    Its feature extractor (`feature_extractor`) is nested as one layer named
    `user_backbone`, every layer trainable until `freeze_stages` freezes some.
    One of our own models takes `x` as is (what its own rescale gave its
    stem); any other model gets pixels 0..255, as our uint8 input holds them
    (rounded, for a model with an integer input).

    Raises:
        FileNotFoundError: the path holds no model (named in the message).
        ValueError: `freeze_stages` beyond the stages found in the model.
    """
    extractor, ours = feature_extractor(load_user_model(config.backbone))
    for layer, _ in layer_stages(extractor):  # one saved with frozen stages starts trainable
        layer.trainable = True
    stages = stage_count(extractor)
    if config.freeze_stages > stages:
        found = (f"has {stages} stages (stem and residual stages by their layer names)"
                 if stages else
                 "has no layers named by stage (stem_*, stage2_* ... as resnet_tuner names "
                 "them, or conv1_* ... conv5_* as keras.applications' ResNets), so only "
                 "freeze_stages = 0 (train all of it) applies")
        raise ValueError(f"freeze_stages={config.freeze_stages} but backbone "
                         f"{config.backbone} {found}")
    if not ours:
        integer = "int" in str(extractor.inputs[0].dtype)
        # An integer input truncates what it is given: + 0.5 rounds instead.
        x = keras.layers.Rescaling(255.0, offset=0.5 if integer else 0.0,
                                   name=f"{USER_BACKBONE}_pixels")(x)
    return extractor(x)


@functools.lru_cache(maxsize=32)
def _user_stage_count(path: str, mtime: float) -> int:
    return stage_count(feature_extractor(load_user_model(path))[0])


def user_backbone_stages(path: str) -> int:
    """The stages `freeze_stages` counts in a path backbone (loaded once per file version)."""
    return _user_stage_count(path, user_model_file(path).stat().st_mtime)
