"""`build_resnet`: a pure function from a `ResNetConfig` to a Keras model.

The builder never sees a keras-tuner `HyperParameters` object, so it is unit
tested on its own and rebuilds any searched model from its `config.json`.

A model is `uint8 image -> Rescaling(1/255) -> augmentation (training only)
-> backbone -> head`. What lives where:

* `blocks`: stems, shortcut modes and residual blocks, one dispatch table per
  family (`STEMS`, `SHORTCUTS`, `BLOCKS`), and `residual_backbone`.
* `augment`: `AUGMENTATIONS`, config field -> layer + neutral value, read by
  the builder and by the export (which builds with every field neutral).
* `backbones`: `BACKBONES`, one record per pretrained network (builder,
  preprocessing, weights file, stage names), and the stage names of any
  model (`layer_stages`).
* `weights`: the records' weights files, found, checked and installed
  (`resolve_weights`, `install_weights`).
* `path_backbone`: the user's own model (a bundle or `.keras` file) as
  backbone (`user_backbone`), cut before its head (`feature_extractor`).
* `layers`: the serializable custom layers the models carry.
* `features`: a model split at its last frozen stage (`split_at_stage`) and
  the rest trained on the frozen stages' cached output (`cached_fit`); the
  one module using Keras' private API (`_nodes_by_depth`, `_distribute_strategy`).
* `feature_cache`: that output computed once per images, layers and weights,
  kept on disk beside the image cache (`cached_features`).
* here: the head, stage freezing (`freeze_stages` at build time,
  `set_frozen_stages` between the phases of two-phase fine-tuning), the
  dtype-policy scope (`precision`) and `build_resnet` itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import keras

from resnet_tuner.config import PRECISIONS, ResNetConfig, is_backbone_path
from resnet_tuner.model.augment import augmentation_layers
from resnet_tuner.model.backbones import (
    BACKBONES,
    OWN_STAGE,
    USER_BACKBONE,
    backbone_label,
    layer_stages,
    pretrained_backbone,
)
from resnet_tuner.model.blocks import residual_backbone
from resnet_tuner.model.path_backbone import user_backbone

__all__ = ["backbone_of", "build_resnet", "classifier_head", "describe", "dtype_policy",
           "freeze_stages", "precision_of", "set_frozen_stages", "stage_of"]


def classifier_head(x, cfg: ResNetConfig, num_classes: int):
    """Global average pooling -> dropout -> optional hidden dense -> classifier.

    The classifier computes in float32 whatever the dtype policy: a softmax in
    float16 loses small probabilities, and the model's output stays float32.
    """
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if cfg.dropout > 0:
        x = keras.layers.Dropout(cfg.dropout, name="head_dropout")(x)
    if cfg.head_hidden:
        x = keras.layers.Dense(cfg.head_hidden, activation="relu", name="head_hidden")(x)
    if cfg.binary_head:
        return keras.layers.Dense(1, activation="sigmoid", name="predictions",
                                  dtype="float32")(x)
    return keras.layers.Dense(num_classes, activation="softmax", name="predictions",
                              dtype="float32")(x)


def stage_of(layer_name: str, backbone: str | None = None) -> int | None:
    """The stage a layer belongs to from its name (1 = stem), or None (head, augmentation).

    Reads this builder's names (`stem_conv`, `stage3_block2_conv1`) and those of
    every pretrained backbone in `BACKBONES` (for ResNet50: `conv1_conv`,
    `pool1_pool`, `conv3_block2_1_conv`), or only `backbone`'s. Context-free:
    `freeze_stages` reads each model's layout with `backbones.layer_stages`
    (which also puts a pre-activation model's `post_bn` in its last stage).
    """
    if backbone is not None:
        return BACKBONES[backbone].stage_of(layer_name)
    match = OWN_STAGE.match(layer_name)
    if match:
        return int(match.group(1)) if match.group(1) else 1
    for record in BACKBONES.values():
        stage = record.stage_of(layer_name)
        if stage is not None:
            return stage
    return None


def freeze_stages(model: keras.Model, stages: int, batchnorm: bool = False) -> list[str]:
    """Freezes every layer of stages 1..`stages` (nested models included).

    Stages come from `backbones.layer_stages`: a nested pretrained network by
    its record's prefixes, a user backbone and this builder's layers by their
    `stem_` / `stage<s>_` names. Frozen BatchNormalization layers run in
    inference mode (Keras 3 semantics of `trainable=False`), so fine-tuning
    does not disturb pretrained statistics. `batchnorm=True`
    (`ResNetConfig.frozen_batchnorm`) freezes every BatchNormalization layer of
    the nested backbone too, also in the stages that train: their statistics
    and scale/offset stay the pretrained ones (the Keras transfer-learning
    guide calls its backbone with `training=False`; detection models use
    torchvision's `FrozenBatchNorm2d`).

    Returns:
        The names of the frozen layers.
    """
    frozen = []
    for layer, stage in layer_stages(model):
        if stage is not None and stage <= stages:
            layer.trainable = False
            frozen.append(layer.name)
    backbone = backbone_of(model) if batchnorm else None
    if backbone is not None:
        for layer, _ in layer_stages(backbone):
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
                layer.trainable = False
                frozen.append(layer.name)
    return frozen


def backbone_of(model: keras.Model) -> keras.Model | None:
    """The nested backbone of a `build_resnet` model, or None (a scratch model has none).

    A pretrained network is nested as one layer named after its `BACKBONES`
    key (`resnet50`), the user's own model as `user_backbone`.
    """
    return next((layer for layer in model.layers if isinstance(layer, keras.Model)
                 and (layer.name in BACKBONES or layer.name == USER_BACKBONE)), None)


def set_frozen_stages(model: keras.Model, stages: int | None,
                      batchnorm: bool = False) -> list[str]:
    """Sets what trains, both ways, between the phases of two-phase fine-tuning.

    `stages=None` freezes the whole backbone (`backbone_of`), every layer of
    it, staged or not: phase 1, the head trains alone. An integer `k` leaves
    the model as `build_resnet` with `freeze_stages=k` does: the backbone
    trainable again, then stages 1..k frozen (`freeze_stages`), and with
    `batchnorm` every BatchNormalization layer of the backbone. Frozen
    BatchNormalization layers run in inference mode, their moving statistics
    untouched (Keras 3: `trainable=False`).

    Returns:
        The names of the frozen layers (leaves; for `None`, every leaf of the backbone).

    Raises:
        ValueError: `stages=None` for a model without a nested backbone.
    """
    backbone = backbone_of(model)
    if stages is None:
        if backbone is None:
            raise ValueError(f"model {model.name} has no pretrained or path backbone to freeze "
                             "whole (a scratch model); give a number of stages")
        backbone.trainable = False  # Keras sets every layer inside it
        return [layer.name for layer, _ in layer_stages(backbone)]
    if backbone is not None:
        backbone.trainable = True
    else:
        for layer, stage in layer_stages(model):
            if stage is not None:
                layer.trainable = True
    return freeze_stages(model, stages, batchnorm)


@contextlib.contextmanager
def dtype_policy(precision: str) -> Iterator[None]:
    """Layers made inside take the Keras dtype policy `precision`; the previous one after.

    Keras' global policy is per thread and read when a layer is made, so this
    scopes it to one build (a pretrained `keras.applications` backbone takes no
    `dtype=` argument, only the global policy). Setting it for good would leak
    into the next trial of the same process.
    """
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {PRECISIONS} (resolve 'auto' with "
            f"resnet_tuner.devices.resolve_precision). Received: precision={precision!r}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_resnet(
    config: ResNetConfig,
    input_shape: Sequence[int] = (224, 224, 3),
    num_classes: int = 1000,
    name: str | None = None,
    precision: str = "float32",
) -> keras.Model:
    """Builds the classifier `config` describes.

    The model takes uint8 (or 0..255 float) images of `input_shape`, rescales
    them to [0, 1] itself, augments them only when called with
    `training=True`, and outputs class probabilities (one sigmoid unit when
    `config.binary_head`).

    Args:
        config: the architecture.
        input_shape: `(height, width, channels)` of the images.
        num_classes: number of classes (2 for a sigmoid `binary_head`).
        name: model name; defaults to a short description of the config.
        precision: the Keras dtype policy of its layers, one of
            `config.PRECISIONS`: `"float32"`, or `"mixed_float16"` /
            `"mixed_bfloat16"` (float32 weights, 16-bit compute). The input
            (uint8) and the output (the float32 classifier) are the same
            whatever the policy; the weights are float32 in all three, so they
            move between policies with `set_weights`.

    Returns:
        An uncompiled `keras.Model`. Compiled with a `mixed_float16` policy,
        Keras wraps its optimizer in a `LossScaleOptimizer`.

    Raises:
        ValueError: on an input shape or class count the config cannot take.

    Example:
        >>> cfg = ResNetConfig.preset("resnet20")
        >>> build_resnet(cfg, (32, 32, 3), 10).count_params()
        271098
    """
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or not all(isinstance(d, int) and d > 0 for d in input_shape):
        raise ValueError(
            "input_shape must be (height, width, channels) positive integers. "
            f"Received: input_shape={input_shape}"
        )
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"num_classes must be an integer >= 2. Received: num_classes={num_classes!r}"
        )
    if config.binary_head and num_classes != 2:
        raise ValueError(
            "binary_head=True (one sigmoid unit) needs num_classes=2. "
            f"Received: num_classes={num_classes}"
        )

    # The Model itself is made in the scope too: its policy decides whether
    # compile() adds loss scaling (mixed_float16).
    with dtype_policy(precision):
        inputs = keras.Input(shape=input_shape, dtype="uint8", name="image")
        x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
        for layer in augmentation_layers(config):
            x = layer(x)
        if config.backbone in BACKBONES:
            x = pretrained_backbone(x, config)
        elif is_backbone_path(config.backbone):
            x = user_backbone(x, config)
        else:
            x = residual_backbone(x, config)
        outputs = classifier_head(x, config, num_classes)
        model = keras.Model(inputs, outputs, name=name or describe(config))
    if config.freeze_stages or config.frozen_batchnorm:
        freeze_stages(model, config.freeze_stages, config.frozen_batchnorm)
    return model


def precision_of(model: keras.Model) -> str:
    """The dtype policy a model of `build_resnet` computes with (its `rescale` layer's).

    A reloaded model's own policy is Keras' default; its layers keep theirs.
    """
    try:
        return model.get_layer("rescale").dtype_policy.name
    except ValueError:  # not one of ours: the first layer that computes
        return next((layer.dtype_policy.name for layer in model.layers
                     if not isinstance(layer, keras.layers.InputLayer)), "float32")


def describe(config: ResNetConfig) -> str:
    """A short model name, e.g. `resnet_basic_2-2-2-2_w64_B` or `resnet50_transfer_f3`.

    A path backbone is named by its folder (a bundle) or file: `best_transfer_f3`.
    """
    if config.backbone != "scratch":
        return f"{backbone_label(config.backbone)}_transfer_f{config.freeze_stages}"
    depths = "-".join(map(str, config.stage_depths))
    return f"resnet_{config.block}_{depths}_w{config.stage_widths[0]}_{config.shortcut}"
