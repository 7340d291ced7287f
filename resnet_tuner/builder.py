"""`build_resnet`: a pure function from a `ResNetConfig` to a compiled-ready Keras model.

The builder never sees a keras-tuner `HyperParameters` object, so it is unit
tested on its own and rebuilds any searched model from its `config.json`.

A model is `uint8 image -> Rescaling(1/255) -> augmentation (training only)
-> backbone -> head`. Block types, shortcut modes and stems each live in one
dispatch table (`BLOCKS`, `SHORTCUTS`, `STEMS`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import keras
from keras import layers

from resnet_tuner.config import ResNetConfig
from resnet_tuner.layers import RandomGamma, ZeroPadShortcut

# --------------------------------------------------------------------------- helpers


def _conv(x, filters: int, kernel: int, strides: int, cfg: ResNetConfig, name: str):
    return layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding="same",
        use_bias=cfg.conv_bias,
        kernel_initializer="he_normal",
        name=name,
    )(x)


def _bn(x, cfg: ResNetConfig, name: str):
    return layers.BatchNormalization(
        momentum=cfg.bn_momentum, epsilon=cfg.bn_epsilon, name=name
    )(x)


def _relu(x, name: str):
    return layers.Activation("relu", name=name)(x)


# --------------------------------------------------------------------------- shortcuts
# He et al. 2015, sec. 3.3: (A) zero-padding identity for increasing dimensions,
# (B) projection shortcuts only where dimensions change, (C) projection everywhere.
# Each returns the shortcut branch given the block input (for pre-activation
# blocks, the projection reads the pre-activated input, as in He et al. 2016).


def _needs_change(x, out_channels: int, strides: int) -> bool:
    return strides != 1 or x.shape[-1] != out_channels


def _projection(x, out_channels, strides, cfg, name):
    y = _conv(x, out_channels, 1, strides, cfg, f"{name}_shortcut_conv")
    # A pre-activation block normalises its sum in the next block's BN.
    return y if cfg.preactivation else _bn(y, cfg, f"{name}_shortcut_bn")


def zero_pad_identity(x, preact, out_channels, strides, cfg, name):
    """Option A: parameter-free; subsample and pad channels with zeros when needed."""
    if not _needs_change(x, out_channels, strides):
        return x
    return ZeroPadShortcut(strides, out_channels, name=f"{name}_shortcut_pad")(x)


def project_if_needed(x, preact, out_channels, strides, cfg, name):
    """Option B: identity, or a 1x1 projection (+ BN) where the shape changes."""
    if not _needs_change(x, out_channels, strides):
        return x
    return _projection(preact, out_channels, strides, cfg, name)


def project_always(x, preact, out_channels, strides, cfg, name):
    """Option C: a 1x1 projection (+ BN) on every block."""
    return _projection(preact, out_channels, strides, cfg, name)


SHORTCUTS: dict[str, Callable] = {
    "A": zero_pad_identity,
    "B": project_if_needed,
    "C": project_always,
}

# --------------------------------------------------------------------------- blocks


def _residual(x, convs: Sequence[tuple[int, int, int]], cfg: ResNetConfig, name: str):
    """One residual block: `convs` lists (filters, kernel, strides) of the residual branch."""
    out_channels = convs[-1][0]
    strides = max(s for _, _, s in convs)
    if cfg.preactivation:
        # ResNet v2 (He et al. 2016): BN -> ReLU -> conv, identity path untouched.
        preact = _relu(_bn(x, cfg, f"{name}_preact_bn"), f"{name}_preact_relu")
        shortcut = SHORTCUTS[cfg.shortcut](x, preact, out_channels, strides, cfg, name)
        y = preact
        for i, (filters, kernel, s) in enumerate(convs, start=1):
            if i > 1:
                y = _relu(_bn(y, cfg, f"{name}_bn{i - 1}"), f"{name}_relu{i - 1}")
            y = _conv(y, filters, kernel, s, cfg, f"{name}_conv{i}")
        return layers.Add(name=f"{name}_add")([shortcut, y])

    shortcut = SHORTCUTS[cfg.shortcut](x, x, out_channels, strides, cfg, name)
    y = x
    for i, (filters, kernel, s) in enumerate(convs, start=1):
        y = _bn(_conv(y, filters, kernel, s, cfg, f"{name}_conv{i}"), cfg, f"{name}_bn{i}")
        if i < len(convs):
            y = _relu(y, f"{name}_relu{i}")
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return _relu(y, f"{name}_out")


def basic_block(x, width: int, strides: int, cfg: ResNetConfig, name: str):
    """Two 3x3 convolutions (ResNet-18/34 and the CIFAR networks)."""
    return _residual(x, [(width, 3, strides), (width, 3, 1)], cfg, name)


def bottleneck_block(x, width: int, strides: int, cfg: ResNetConfig, name: str):
    """1x1 reduce -> 3x3 -> 1x1 expand (ResNet-50/101/152).

    The stride sits on the 3x3 convolution ("ResNet v1.5", as torchvision and
    timm do): same parameters as the paper's stride on the first 1x1, better
    accuracy because the 1x1 no longer skips three quarters of the input.
    """
    convs = [(width, 1, 1), (width, 3, strides), (width * cfg.expansion, 1, 1)]
    return _residual(x, convs, cfg, name)


BLOCKS: dict[str, Callable] = {"basic": basic_block, "bottleneck": bottleneck_block}

# --------------------------------------------------------------------------- stems


def imagenet_stem(x, cfg: ResNetConfig):
    """7x7/2 conv + 3x3/2 max-pool, padded exactly as keras.applications.ResNet50."""
    x = layers.ZeroPadding2D(3, name="stem_pad")(x)
    x = layers.Conv2D(
        cfg.stem_width, 7, strides=2, use_bias=cfg.conv_bias,
        kernel_initializer="he_normal", name="stem_conv",
    )(x)
    if not cfg.preactivation:
        x = _relu(_bn(x, cfg, "stem_bn"), "stem_relu")
    x = layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
    return layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)


def cifar_stem(x, cfg: ResNetConfig):
    """3x3/1 conv (He et al. 2015, sec. 4.2)."""
    x = _conv(x, cfg.stem_width, 3, 1, cfg, "stem_conv")
    return x if cfg.preactivation else _relu(_bn(x, cfg, "stem_bn"), "stem_relu")


def strided3x3_stem(x, cfg: ResNetConfig):
    """3x3/2 conv, no pooling (the 003 seed's mini_resnet)."""
    x = _conv(x, cfg.stem_width, 3, 2, cfg, "stem_conv")
    return x if cfg.preactivation else _relu(_bn(x, cfg, "stem_bn"), "stem_relu")


STEMS: dict[str, Callable] = {
    "imagenet": imagenet_stem,
    "cifar": cifar_stem,
    "strided3x3": strided3x3_stem,
}

# --------------------------------------------------------------------------- public API


def residual_backbone(x, cfg: ResNetConfig):
    """Applies the stem and residual stages of `cfg` to the tensor `x`.

    Stage `s` (2, 3, ...) has blocks named `stage{s}_block{b}`; the first block
    of every stage after the first halves the resolution.
    """
    x = STEMS[cfg.stem](x, cfg)
    stages = zip(cfg.stage_depths, cfg.stage_widths, strict=True)
    for stage, (depth, width) in enumerate(stages, start=2):
        for block in range(1, depth + 1):
            strides = 2 if block == 1 and stage > 2 else 1
            x = BLOCKS[cfg.block](x, width, strides, cfg, f"stage{stage}_block{block}")
    if cfg.preactivation:
        x = _relu(_bn(x, cfg, "post_bn"), "post_relu")
    return x


def augmentation_layers(cfg: ResNetConfig) -> list[keras.layers.Layer]:
    """The training-only augmentation layers of `cfg`, in the order they run."""
    out: list[keras.layers.Layer] = []
    if cfg.flip != "none":
        mode = {"both": "horizontal_and_vertical"}.get(cfg.flip, cfg.flip)
        out.append(layers.RandomFlip(mode, name="augment_flip"))
    if cfg.shift > 0:
        out.append(
            layers.RandomTranslation(
                cfg.shift, cfg.shift, fill_mode="reflect", name="augment_shift"
            )
        )
    if cfg.gamma is not None:
        out.append(RandomGamma(*cfg.gamma, name="augment_gamma"))
    return out


def classifier_head(x, cfg: ResNetConfig, num_classes: int):
    """Global average pooling -> dropout -> optional hidden dense -> classifier."""
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if cfg.dropout > 0:
        x = layers.Dropout(cfg.dropout, name="head_dropout")(x)
    if cfg.head_hidden:
        x = layers.Dense(cfg.head_hidden, activation="relu", name="head_hidden")(x)
    if cfg.binary_head:
        return layers.Dense(1, activation="sigmoid", name="predictions")(x)
    return layers.Dense(num_classes, activation="softmax", name="predictions")(x)


_STAGE_PATTERN = re.compile(r"^(?:stem|conv1|pool1)_|^(?:stage|conv)(\d+)_")


def stage_of(layer_name: str) -> int | None:
    """The stage a layer belongs to from its name (1 = stem), or None (head, augmentation).

    Works for this builder's names (`stem_conv`, `stage3_block2_conv1`) and for
    keras.applications.ResNet50's (`conv1_conv`, `pool1_pool`, `conv3_block2_1_conv`).
    """
    match = _STAGE_PATTERN.match(layer_name)
    if not match:
        return None
    return int(match.group(1)) if match.group(1) else 1


def freeze_stages(model: keras.Model, stages: int) -> list[str]:
    """Freezes every layer of stages 1..`stages` (nested models included).

    Frozen BatchNormalization layers run in inference mode (Keras 3 semantics of
    `trainable=False`), so fine-tuning does not disturb pretrained statistics.

    Returns:
        The names of the frozen layers.
    """
    frozen = []
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.Model):
            stack.extend(layer.layers)
            continue
        stage = stage_of(layer.name)
        if stage is not None and stage <= stages:
            layer.trainable = False
            frozen.append(layer.name)
    return frozen


def build_resnet(
    config: ResNetConfig,
    input_shape: Sequence[int] = (224, 224, 3),
    num_classes: int = 1000,
    name: str | None = None,
) -> keras.Model:
    """Builds the classifier `config` describes.

    The model takes uint8 (or 0..255 float) images of `input_shape`, rescales
    them to [0, 1] itself, augments them in training only, and outputs class
    probabilities (one sigmoid unit when `config.binary_head`).

    Args:
        config: the architecture.
        input_shape: `(height, width, channels)` of the images.
        num_classes: number of classes (2 for a sigmoid `binary_head`).
        name: model name; defaults to a short description of the config.

    Returns:
        An uncompiled `keras.Model`.

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

    inputs = keras.Input(shape=input_shape, dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for layer in augmentation_layers(config):
        x = layer(x)
    if config.backbone == "resnet50":
        from resnet_tuner.transfer import resnet50_backbone

        x = resnet50_backbone(x, config)
    else:
        x = residual_backbone(x, config)
    outputs = classifier_head(x, config, num_classes)
    model = keras.Model(inputs, outputs, name=name or describe(config))
    if config.freeze_stages:
        freeze_stages(model, config.freeze_stages)
    return model


def describe(config: ResNetConfig) -> str:
    """A short model name, e.g. `resnet_basic_2-2-2-2_w64_B` or `resnet50_transfer_f3`."""
    if config.backbone == "resnet50":
        return f"resnet50_transfer_f{config.freeze_stages}"
    depths = "-".join(map(str, config.stage_depths))
    return f"resnet_{config.block}_{depths}_w{config.stage_widths[0]}_{config.shortcut}"
