"""`ResNetConfig`: the contract between a search space and the network builder.

A config is a frozen, validated dataclass that fully describes one model: the
residual backbone (or the pretrained network used for transfer learning), the
augmentation layers that run in training only, and the classification head.
It round-trips through JSON so the best model of a search can be rebuilt from
`config.json` alone, without keras-tuner.

This module imports neither TensorFlow nor Keras (the CLI reads it to answer
`--help` quickly), so it keeps the option *names* of the model's dispatch
tables; `resnet_tuner.model` checks at import that its tables have exactly
these rows. `BOUNDS` is the one source of numeric bounds: validation here and
the search-space schema both read it.

Training settings (optimizer, learning rate, batch size, ...) are not part of
the network and live in `TrainConfig`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

#: Rows of `model.blocks.BLOCKS`, `SHORTCUTS` and `STEMS`.
BLOCK_TYPES = ("basic", "bottleneck")
SHORTCUT_MODES = ("A", "B", "C")
STEM_TYPES = ("imagenet", "cifar", "strided3x3")
#: Pretrained backbones (`model.backbones.BACKBONES`) -> number of stages that
#: `freeze_stages` counts: every keras.applications ResNet has a stem (conv1)
#: and four residual stages (conv2..conv5), `freeze_stages=k` freezes conv1..convk.
PRETRAINED_STAGES = {"resnet50": 5, "resnet101": 5, "resnet152": 5,
                     "resnet50v2": 5, "resnet101v2": 5, "resnet152v2": 5}
BACKBONES = ("scratch", *PRETRAINED_STAGES)
FLIP_MODES = ("none", "horizontal", "vertical", "both")
#: Rows of `training.OPTIMIZERS`.
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
LR_SCHEDULES = ("cosine", "constant")
TUNERS = ("hyperband", "random", "bayesian", "grid")
#: Keras dtype policies a model can train with (`build_resnet(precision=...)`);
#: `"auto"` is resolved to one of them by `resnet_tuner.devices.resolve_precision`.
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")

#: Inclusive bounds of the numeric fields of `ResNetConfig` and `TrainConfig`
#: (of every entry for `stage_depths` and `stage_widths`).
BOUNDS: dict[str, tuple[float, float]] = {
    "stage_depths": (1, 64),
    "stage_widths": (1, 4096),
    "stem_width": (1, 4096),
    "expansion": (1, 16),
    "bn_epsilon": (1e-9, 1.0),
    "bn_momentum": (0.0, 0.999),
    "dropout": (0.0, 0.95),
    "head_hidden": (0, 16384),
    "shift": (0.0, 0.5),
    "learning_rate": (1e-8, 10.0),
    "batch_size": (1, 65536),
    "epochs": (1, 100000),
    "label_smoothing": (0.0, 0.5),
    "weight_decay": (0.0, 1.0),
    "momentum": (0.0, 0.999),
    # Phase 1 of two-phase fine-tuning is shorter than the whole run (`epochs`).
    "head_epochs": (0, 99999),
    "finetune_lr_scale": (1e-4, 1.0),
}


def is_backbone_path(value: Any) -> bool:
    """Whether a `backbone` value names the user's own model rather than a `BACKBONES` row.

    A path holds a `/` (or the OS separator) or ends in `.keras`: a
    `resnet_tuner` bundle folder (`"runs/pets/best"`, `"./best"`) or a `.keras`
    file. Whether it exists is checked where it is read (space file, build).
    """
    return (isinstance(value, str) and value not in BACKBONES
            and ("/" in value or os.sep in value or value.endswith(".keras")))


def _fail(name: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"{name} must be {expected}. Received: {name}={value!r}")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise _fail(name, value, f"one of {', '.join(map(repr, choices))}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_bounded(obj: Any, name: str) -> None:
    """Checks field `name` of `obj` against `BOUNDS` (an integer field if its bounds are)."""
    low, high = BOUNDS[name]
    value = getattr(obj, name)
    if isinstance(low, int):
        if not _is_int(value) or not low <= value <= high:
            raise _fail(name, value, f"an integer from {low} to {high}")
    elif not _is_number(value) or not low <= value <= high:
        raise _fail(name, value, f"a number from {low} to {high}")


def _check_bounds(config: Any) -> None:
    """Checks every scalar field of `config` that `BOUNDS` lists."""
    for field in dataclasses.fields(config):
        if field.name in BOUNDS and field.name not in STAGE_FIELDS:
            _check_bounded(config, field.name)


#: Fields with one entry per stage; `BOUNDS` gives the bounds of each entry.
STAGE_FIELDS = ("stage_depths", "stage_widths")


def _check_stage_ints(name: str, values: Any) -> None:
    low, high = BOUNDS[name]
    if (
        not isinstance(values, tuple)
        or not values
        or not all(_is_int(v) and low <= v <= high for v in values)
    ):
        raise _fail(name, values, f"a non-empty sequence of integers from {low} to {high}")


@dataclass(frozen=True)
class ResNetConfig:
    """Everything needed to build one ResNet classifier.

    Stages are numbered as in He et al. 2015 (Table 1): the stem is stage 1
    ("conv1") and residual stages are 2, 3, ... ("conv2_x", "conv3_x", ...).
    The first residual stage keeps the resolution; every later one halves it.

    Attributes:
        block: `"basic"` (two 3x3 convs) or `"bottleneck"` (1x1 -> 3x3 -> 1x1).
        stage_depths: residual blocks per stage, e.g. `(3, 4, 6, 3)`.
        stage_widths: filters per stage (the bottleneck's inner width), same
            length as `stage_depths`.
        shortcut: `"A"` zero-padding identity (parameter-free), `"B"`
            projection where the shape changes, `"C"` projection on every block
            (He et al. 2015, sec. 3.3).
        stem: `"imagenet"` (7x7/2 conv + 3x3/2 max-pool), `"cifar"` (3x3/1
            conv) or `"strided3x3"` (3x3/2 conv, no pool, as the mini-ResNet
            of a cats-vs-dogs tutorial).
        stem_width: filters of the stem convolution.
        expansion: output channels of a bottleneck block divided by its inner
            width (4 in the paper). Ignored by basic blocks.
        preactivation: ResNet v2 ordering (BN -> ReLU -> conv, He et al. 2016).
        conv_bias: give convolutions a bias. Off by default: a bias right
            before BatchNormalization is redundant. keras.applications.ResNet50
            and the cats-vs-dogs tutorial's mini-ResNet keep it.
        bn_epsilon: BatchNormalization epsilon.
        bn_momentum: BatchNormalization moving-average momentum. 0.9 (PyTorch's
            and timm's 0.1 in their convention), not Keras' 0.99: a search
            trains each model for few steps, and with 0.99 the moving
            statistics are still far from the data when validation runs.
        dropout: dropout rate before the classifier.
        head_hidden: units of an optional hidden ReLU dense layer in the head
            (0 for none; the cats-vs-dogs mini-ResNet uses 10).
        binary_head: for 2 classes, one sigmoid unit instead of a softmax.
        backbone: `"scratch"` (this builder), a pretrained network of
            `PRETRAINED_STAGES` (`"resnet50"`: keras.applications.ResNet50,
            `"resnet101v2"`: ResNet101V2, ...), or the path of the user's own
            model (`is_backbone_path`): a `resnet_tuner` bundle folder or a
            `.keras` file, whose layers up to its classifier head become the
            backbone (see `model.path_backbone.user_backbone`).
        freeze_stages: stages frozen from the input side, 0 (all trainable) to
            5 for the keras.applications ResNets (conv1..conv5 frozen); for a
            path, up to the stages of that model (its stem and residual
            stages). Frozen BatchNorm layers run in inference mode. With
            two-phase fine-tuning (`TrainConfig.head_epochs`), the depth of
            phase 2; phase 1 freezes the whole backbone.
        frozen_batchnorm: with a pretrained or path backbone, every
            BatchNormalization layer of it frozen (inference mode, its
            statistics and scale/offset kept) in every phase, also in the
            stages that train; False (the default): those of the trained
            stages update on the batches. Small datasets give noisy batch
            statistics; the Keras transfer-learning guide keeps them frozen.
        weights: for a pretrained network of `PRETRAINED_STAGES`:
            `"imagenet"`, a path to a weights file, or `None` for random
            initialisation. A path backbone brings its own weights and ignores it.
        flip: random flips in training: `"none"`, `"horizontal"`,
            `"vertical"` or `"both"` (cv2.flip codes 1, 0, -1).
        gamma: `(low, high)` range of a random gamma `x ** g` applied in
            training, or `None` (a cats-vs-dogs tutorial draws g from 0.4..0.7).
        shift: random translation in training, as a fraction of height and
            width (0.1 is common); 0 disables it.

    The augmentation fields (flip, gamma, shift) are rows of
    `model.augment.AUGMENTATIONS`; at inference their layers are the identity.
    """

    block: str = "basic"
    stage_depths: tuple[int, ...] = (2, 2, 2, 2)
    stage_widths: tuple[int, ...] = (64, 128, 256, 512)
    shortcut: str = "B"
    stem: str = "imagenet"
    stem_width: int = 64
    expansion: int = 4
    preactivation: bool = False
    conv_bias: bool = False
    bn_epsilon: float = 1e-3
    bn_momentum: float = 0.9
    dropout: float = 0.0
    head_hidden: int = 0
    binary_head: bool = False
    backbone: str = "scratch"
    freeze_stages: int = 0
    frozen_batchnorm: bool = False
    weights: str | None = "imagenet"
    flip: str = "none"
    gamma: tuple[float, float] | None = None
    shift: float = 0.0

    def __post_init__(self) -> None:
        # Accept lists (from JSON or TOML) but store tuples so configs hash.
        for name in ("stage_depths", "stage_widths", "gamma"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Checks every field. Raises `ValueError` naming the field and value."""
        _check_choice("block", self.block, BLOCK_TYPES)
        _check_choice("shortcut", self.shortcut, SHORTCUT_MODES)
        _check_choice("stem", self.stem, STEM_TYPES)
        if not is_backbone_path(self.backbone):
            _check_choice("backbone", self.backbone, BACKBONES)
        _check_choice("flip", self.flip, FLIP_MODES)
        _check_stage_ints("stage_depths", self.stage_depths)
        _check_stage_ints("stage_widths", self.stage_widths)
        if len(self.stage_depths) != len(self.stage_widths):
            raise ValueError(
                "stage_depths and stage_widths must have the same length (one entry per "
                f"stage). Received: stage_depths={self.stage_depths}, "
                f"stage_widths={self.stage_widths}"
            )
        _check_bounds(self)
        for name in ("preactivation", "conv_bias", "binary_head", "frozen_batchnorm"):
            if not isinstance(getattr(self, name), bool):
                raise _fail(name, getattr(self, name), "True or False")
        if self.frozen_batchnorm and self.backbone == "scratch":
            raise ValueError(
                "frozen_batchnorm=True keeps the statistics of a pretrained or path backbone; "
                "a model built from scratch has none to keep (its BatchNorm layers would stay "
                "at their initial values). Use frozen_batchnorm=False or a pretrained backbone.")
        if self.gamma is not None:
            g = self.gamma
            if (
                not isinstance(g, tuple)
                or len(g) != 2
                or not all(isinstance(v, (int, float)) and v > 0 for v in g)
                or g[0] > g[1]
            ):
                raise _fail("gamma", g, "None or a (low, high) pair with 0 < low <= high")
        if is_backbone_path(self.backbone):
            # Its stages are counted when it is loaded (`build_resnet` checks the bound).
            if not _is_int(self.freeze_stages) or self.freeze_stages < 0:
                raise _fail("freeze_stages", self.freeze_stages, "an integer from 0")
        else:
            max_freeze = PRETRAINED_STAGES.get(self.backbone, 1 + len(self.stage_depths))
            if not _is_int(self.freeze_stages) or not 0 <= self.freeze_stages <= max_freeze:
                raise _fail("freeze_stages", self.freeze_stages,
                            f"an integer from 0 to {max_freeze}")
        if self.weights is not None and not isinstance(self.weights, str):
            raise _fail("weights", self.weights, "'imagenet', a file path or None")
        if self.shortcut == "A" and self.backbone == "scratch":
            # Option A pads the identity with zero channels; it cannot drop channels.
            channels = [self.stem_width] + [w * self.block_expansion for w in self.stage_widths]
            if any(b < a for a, b in zip(channels, channels[1:], strict=False)):
                raise ValueError(
                    "shortcut='A' (zero-padding identity) needs channels that never decrease "
                    f"from stage to stage; got stem_width={self.stem_width} then stage outputs "
                    f"{channels[1:]}. Use shortcut='B' or widen the later stages."
                )

    @property
    def block_expansion(self) -> int:
        """Output channels of a block divided by `stage_widths` (1 for basic blocks).

        Mirrors `model.blocks.BLOCKS[block].expansion` without importing Keras
        (the option A check of `validate` needs it); a test runs every block row
        against it.
        """
        return self.expansion if self.block == "bottleneck" else 1

    @property
    def num_stages(self) -> int:
        """Number of residual stages (the stem not counted)."""
        return len(self.stage_depths)

    def replace(self, **changes: Any) -> ResNetConfig:
        """Returns a copy with `changes` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-compatible dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResNetConfig:
        """Builds a config from `to_dict()` output, rejecting unknown fields.

        Raises:
            ValueError: on an unknown field or an invalid value.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"Unknown ResNetConfig field(s) {unknown}. Known fields: {sorted(known)}"
            )
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ResNetConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ResNetConfig:
        """Returns a named architecture, optionally with fields overridden.

        Args:
            name: one of `ResNetConfig.preset_names()`: the paper's ImageNet
                networks `resnet18/34/50/101/152`, its CIFAR networks
                `resnet20/32/44/56/110`, and `mini_resnet` (the mini-ResNet of a
                cats-vs-dogs tutorial).
            **overrides: any field, e.g. `conv_bias=True`.

        Example:
            >>> ResNetConfig.preset("resnet50").stage_depths
            (3, 4, 6, 3)
        """
        from resnet_tuner.presets import PRESETS  # it imports us

        if name not in PRESETS:
            raise ValueError(
                f"Unknown architecture preset {name!r}. Available: {', '.join(PRESETS)}"
            )
        return dataclasses.replace(PRESETS[name], **overrides)

    @staticmethod
    def preset_names() -> list[str]:
        from resnet_tuner.presets import PRESETS  # it imports us

        return list(PRESETS)


@dataclass(frozen=True)
class TrainConfig:
    """Per-trial training settings (kept out of the network config).

    Attributes:
        optimizer: `"adam"`, `"adamw"`, `"sgd"` (with Nesterov momentum) or `"rmsprop"`.
        learning_rate: initial learning rate.
        batch_size: training batch size.
        epochs: epochs to train when the tuner does not set them.
        label_smoothing: label smoothing of the cross-entropy loss.
        weight_decay: decoupled weight decay of the optimizer (0 for none).
        momentum: momentum for SGD and RMSprop.
        lr_schedule: `"cosine"` (decay to 1 % over the trial's epochs, stepped
            every batch) or `"constant"`. Cosine settles the short training
            runs of a search. With two phases, each phase has its own curve.
        head_epochs: two-phase fine-tuning of a pretrained or path backbone
            (`ResNetConfig.backbone`): phase 1 trains the head alone for
            `head_epochs` epochs on the whole backbone frozen; phase 2
            unfreezes down to `ResNetConfig.freeze_stages` (stages
            1..freeze_stages stay frozen) and trains the other
            `epochs - head_epochs` epochs at `finetune_lr_scale` times the
            learning rate (the Keras transfer-learning guide's recipe: a new
            head first, so its random gradients do not wreck the pretrained
            features). 0 (the default): one phase, stages 1..freeze_stages
            frozen throughout at `learning_rate`. Must be less than `epochs`.
            A scratch model has no backbone to freeze: a space refuses it.
        finetune_lr_scale: phase 2's learning rate as a multiple of
            `learning_rate` (e.g. 0.1); read only when `head_epochs` > 0.
    """

    optimizer: str = "adam"
    learning_rate: float = 1e-3
    batch_size: int = 32
    epochs: int = 10
    label_smoothing: float = 0.0
    weight_decay: float = 0.0
    momentum: float = 0.9
    lr_schedule: str = "cosine"
    head_epochs: int = 0
    finetune_lr_scale: float = 0.1

    def __post_init__(self) -> None:
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_bounds(self)
        if self.head_epochs and self.head_epochs >= self.epochs:
            raise ValueError(
                "head_epochs must be less than epochs: phase 1 trains the head for head_epochs "
                "epochs, phase 2 fine-tunes for the other epochs - head_epochs. Lower "
                "head_epochs (0: one phase) or raise epochs. "
                f"Received: head_epochs={self.head_epochs}, epochs={self.epochs}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown TrainConfig field(s) {unknown}. Known: {sorted(known)}")
        return cls(**data)
