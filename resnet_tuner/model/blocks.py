"""Stems, shortcuts and residual blocks, each family in one dispatch table.

`STEMS`, `SHORTCUTS` and `BLOCKS` map the names a `ResNetConfig` uses to the
functions that build them; `residual_backbone` applies a config's stem and
stages through these tables only. Adding a stem or shortcut mode is its
function plus one row; a block type is its function plus one `Block` row that
says how much it widens its output and which config fields only it reads (the
search space samples those in the block's conditional scope).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from keras import layers

from resnet_tuner.config import BLOCK_TYPES, SHORTCUT_MODES, STEM_TYPES, ResNetConfig
from resnet_tuner.model.layers import ZeroPadShortcut

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


@dataclass(frozen=True)
class Block:
    """One row of `BLOCKS`.

    Attributes:
        build: `(x, width, strides, cfg, name) -> tensor`, one residual block.
        expansion: output channels divided by the stage width: a number, or
            the name of the config field that holds it (timm's
            `block_fn.expansion`).
        params: config fields only this block type reads; a search space
            samples them in the block's conditional scope.
    """

    build: Callable
    expansion: int | str = 1
    params: tuple[str, ...] = ()

    def expansion_of(self, cfg: ResNetConfig) -> int:
        """The expansion of this block type under `cfg`."""
        return getattr(cfg, self.expansion) if isinstance(self.expansion, str) else self.expansion


BLOCKS: dict[str, Block] = {
    "basic": Block(basic_block),
    "bottleneck": Block(bottleneck_block, expansion="expansion", params=("expansion",)),
}

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
    """3x3/2 conv, no pooling (the mini-ResNet of a cats-vs-dogs tutorial)."""
    x = _conv(x, cfg.stem_width, 3, 2, cfg, "stem_conv")
    return x if cfg.preactivation else _relu(_bn(x, cfg, "stem_bn"), "stem_relu")


STEMS: dict[str, Callable] = {
    "imagenet": imagenet_stem,
    "cifar": cifar_stem,
    "strided3x3": strided3x3_stem,
}


def _check_names(table: dict, names: Sequence[str], config_name: str) -> None:
    # config.py keeps the option names (TF-free, it validates configs without
    # Keras); a row here without its name there, or the reverse, fails at import.
    if list(table) != list(names):
        raise ImportError(
            f"resnet_tuner.config.{config_name} = {tuple(names)} must list the rows of the "
            f"dispatch table, {tuple(table)}: add the new name there"
        )


_check_names(BLOCKS, BLOCK_TYPES, "BLOCK_TYPES")
_check_names(SHORTCUTS, SHORTCUT_MODES, "SHORTCUT_MODES")
_check_names(STEMS, STEM_TYPES, "STEM_TYPES")

# --------------------------------------------------------------------------- backbone


def residual_backbone(x, cfg: ResNetConfig):
    """Applies the stem and residual stages of `cfg` to the tensor `x`.

    Stage `s` (2, 3, ...) has blocks named `stage{s}_block{b}`; the first block
    of every stage after the first halves the resolution.
    """
    x = STEMS[cfg.stem](x, cfg)
    block = BLOCKS[cfg.block].build
    stages = zip(cfg.stage_depths, cfg.stage_widths, strict=True)
    for stage, (depth, width) in enumerate(stages, start=2):
        for index in range(1, depth + 1):
            strides = 2 if index == 1 and stage > 2 else 1
            x = block(x, width, strides, cfg, f"stage{stage}_block{index}")
    if cfg.preactivation:
        x = _relu(_bn(x, cfg, "post_bn"), "post_relu")
    return x
