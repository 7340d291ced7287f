"""Pretrained backbones: one `Backbone` record each, and the user's own models.

A record says how to build the network (without its top), which
preprocessing layer turns [0, 1] images into what its weights expect, where
its weights file comes from (name, URL, hash) and how its layers are named by
stage, which `freeze_stages` reads. `BACKBONES` has every ResNet of
keras.applications: ResNet50/101/152 (caffe preprocessing, `CaffePreprocess`)
and ResNet50V2/101V2/152V2 ("tf" preprocessing, [-1, 1]). Adding a backbone
is one record in `BACKBONES` and its stage count in `config.PRETRAINED_STAGES`.

Where a record's weights file is found, checked and installed is
`model.weights`' (`resolve_weights`, `install_weights`).

The user's own model as backbone (`backbone = "path/to/best"`) is
`path_backbone`'s; its stages are named as here (`layer_stages`), and
`backbone_stages` / `backbone_label` answer for both kinds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from resnet_tuner.config import PRETRAINED_STAGES, ResNetConfig, is_backbone_path
from resnet_tuner.model.layers import CaffePreprocess

#: Where keras.applications' ResNet weights files download from (V1 and V2 alike).
WEIGHTS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"


@dataclass(frozen=True)
class Backbone:
    """One pretrained network usable as `ResNetConfig.backbone`.

    Attributes:
        title: the name used in messages, e.g. `"ResNet50"`.
        family: the keras.applications module it comes from (`"resnet"`,
            `"resnet_v2"`), whose `preprocess_input` `preprocess` reproduces.
        build: `input_shape -> keras.Model` without top and without weights;
            the model's name is the record's key (the layer name in the model).
        preprocess: `() -> layer` mapping [0, 1] images to the network's input.
        weights_file: file name of the ImageNet weights (Keras' cache name).
        weights_url: where `weights_file` downloads from.
        weights_hash: its MD5, checked by `keras.utils.get_file` and by
            `install_weights`.
        stage_prefixes: for stage 1, 2, ... the prefixes of its layers' names;
            `freeze_stages=k` freezes the layers of stages 1..k.
    """

    title: str
    family: str
    build: Callable[[tuple[int, ...]], keras.Model]
    preprocess: Callable[[], keras.layers.Layer]
    weights_file: str
    weights_url: str
    weights_hash: str
    stage_prefixes: tuple[tuple[str, ...], ...]

    def stage_of(self, layer_name: str) -> int | None:
        """The stage of one of this network's layers (1 = stem), or None."""
        for stage, prefixes in enumerate(self.stage_prefixes, start=1):
            if layer_name.startswith(prefixes):
                return stage
        return None


def _name_shortcut_pools(model: keras.Model) -> None:
    """Names the V2 shortcut max-pools after their block: `conv3_block4_0_pool`.

    keras.applications' ResNet V2 leaves the 1x1 max-pool of each strided
    block's shortcut unnamed, so it gets a process-wide counter name
    (`max_pooling2d_7`) that no stage prefix can match. Its block is the `Add`
    it feeds (`conv3_block4_out`); `_0_` is the shortcut branch, as in V1's
    `conv3_block1_0_conv`. The layer holds no weights, so weights files are
    not affected.
    """
    pools = {id(layer.output): layer for layer in model.layers
             if isinstance(layer, keras.layers.MaxPooling2D)
             and layer.name.startswith("max_pooling2d")}
    for layer in model.layers:
        if pools and isinstance(layer, keras.layers.Add):
            for tensor in layer.input:
                pool = pools.pop(id(tensor), None)
                if pool is not None:
                    pool.name = layer.name.removesuffix("_out") + "_0_pool"


def _application(function: str) -> Callable[[tuple[int, ...]], keras.Model]:
    def build(input_shape: tuple[int, ...]) -> keras.Model:
        model = getattr(keras.applications, function)(
            include_top=False, weights=None, input_shape=input_shape)
        _name_shortcut_pools(model)
        return model

    build.__name__ = build.__qualname__ = f"build_{function}"
    return build


def _caffe() -> keras.layers.Layer:
    # keras.applications.resnet.preprocess_input: RGB -> BGR, minus the ImageNet means.
    return CaffePreprocess(name="caffe_preprocess")


def _tf() -> keras.layers.Layer:
    # keras.applications.resnet_v2.preprocess_input ("tf" mode): pixels / 127.5 - 1.
    # The input holds pixels / 255, so 2 x - 1.
    return keras.layers.Rescaling(2.0, offset=-1.0, name="tf_preprocess")


#: Stem (conv1, pool1) and four residual stages (conv2..conv5), named as in
#: He et al. 2015, Table 1; V2 ends with `post_bn` / `post_relu` after conv5.
_V1_STAGES = (("conv1_", "pool1_"), ("conv2_",), ("conv3_",), ("conv4_",), ("conv5_",))
_V2_STAGES = (*_V1_STAGES[:4], ("conv5_", "post_"))


def _record(key: str, title: str, md5: str) -> Backbone:
    """A keras.applications ResNet; `md5` is its `_notop` file's (keras' `WEIGHTS_HASHES`)."""
    v2 = key.endswith("v2")
    weights_file = f"{key}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    return Backbone(
        title=title,
        family="resnet_v2" if v2 else "resnet",
        build=_application(title),
        preprocess=_tf if v2 else _caffe,
        weights_file=weights_file,
        weights_url=WEIGHTS_BASE_URL + weights_file,
        weights_hash=md5,
        stage_prefixes=_V2_STAGES if v2 else _V1_STAGES,
    )


BACKBONES: dict[str, Backbone] = {
    "resnet50": _record("resnet50", "ResNet50", "4d473c1dd8becc155b73f8504c6f6626"),
    "resnet101": _record("resnet101", "ResNet101", "88cf7a10940856eca736dc7b7e228a21"),
    "resnet152": _record("resnet152", "ResNet152", "ee4c566cf9a93f14d82f913c2dc6dd0c"),
    "resnet50v2": _record("resnet50v2", "ResNet50V2", "fac2f116257151a9d068a22e544a4917"),
    "resnet101v2": _record("resnet101v2", "ResNet101V2", "c0ed64b8031c3730f411d2eb4eea35b5"),
    "resnet152v2": _record("resnet152v2", "ResNet152V2", "ed17cf2e0169df9d443503ef94b23b33"),
}

for _name, _record_ in BACKBONES.items():
    # config.py validates freeze_stages without Keras, from its own stage counts.
    if PRETRAINED_STAGES.get(_name) != len(_record_.stage_prefixes):
        raise ImportError(
            f"resnet_tuner.config.PRETRAINED_STAGES[{_name!r}] must be "
            f"{len(_record_.stage_prefixes)}, the number of stages of backbone {_name!r}"
        )
if set(BACKBONES) != set(PRETRAINED_STAGES):
    raise ImportError(
        f"resnet_tuner.config.PRETRAINED_STAGES {sorted(PRETRAINED_STAGES)} must name the "
        f"backbones {sorted(BACKBONES)}"
    )


# --------------------------------------------------------------------------- stages

#: resnet_tuner's own layer names: `stem_conv`, `stage3_block2_conv1`, `post_bn`.
OWN_STAGE = re.compile(r"^stem_|^stage(\d+)_")


def _own_naming(layers) -> Callable[[str], int | None]:
    """Stages by resnet_tuner's names; `post_*` (pre-activation) ends the last stage."""
    stages = [int(m.group(1)) for m in map(OWN_STAGE.match, (layer.name for layer in layers))
              if m and m.group(1)]
    last = max(stages, default=1)

    def stage(name: str) -> int | None:
        match = OWN_STAGE.match(name)
        if match:
            return int(match.group(1)) if match.group(1) else 1
        return last if name.startswith("post_") else None

    return stage


def layer_stages(model: keras.Model) -> list[tuple[keras.layers.Layer, int | None]]:
    """Every layer of `model` (nested models opened) with its stage (1 = stem), or None.

    A nested model named after a `BACKBONES` key is staged by that record's
    `stage_prefixes`. The layers of any other model are staged by whichever
    naming stages most of them: resnet_tuner's own (`stem_*`, `stage<s>_*`,
    `post_*` in the last stage) or one of the records' (a keras.applications
    ResNet saved flat). A model with none of these names has no stages.
    """
    out: list[tuple[keras.layers.Layer, int | None]] = []

    def walk(m: keras.Model, naming: Callable[[str], int | None] | None) -> None:
        leaves = [layer for layer in m.layers if not isinstance(layer, keras.Model)]
        if naming is None:
            candidates = [_own_naming(leaves)] + [r.stage_of for r in BACKBONES.values()]
            naming = max(candidates, key=lambda f: sum(f(leaf.name) is not None for leaf in leaves))
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                record = BACKBONES.get(layer.name)
                walk(layer, record.stage_of if record else None)
            else:
                out.append((layer, naming(layer.name)))

    walk(model, None)
    return out


def stage_count(model: keras.Model) -> int:
    """The number of stages `layer_stages` finds in `model` (0: none)."""
    return max((s for _, s in layer_stages(model) if s is not None), default=0)


# --------------------------------------------------------------------------- networks


#: The layer name of a user backbone nested in a model (`path_backbone.user_backbone`).
USER_BACKBONE = "user_backbone"


def pretrained_backbone(x, config: ResNetConfig):
    """Applies the pretrained network `config.backbone` names, with its preprocessing, to `x`.

    `x` holds images scaled to [0, 1]. The network is nested as one layer
    named after its key (`resnet50`), whose inner layers keep
    keras.applications' names (`conv1_*`, `conv2_block1_*`, ...), so
    `freeze_stages` finds them by the record's `stage_prefixes`.
    """
    record = BACKBONES[config.backbone]
    x = record.preprocess()(x)
    base = record.build(tuple(x.shape[1:]))
    from resnet_tuner.model.weights import resolve_weights  # it imports us

    weights_path = resolve_weights(config.weights, config.backbone)
    if weights_path is not None:
        base.load_weights(str(weights_path))
    return base(x)


def backbone_stages(backbone: str) -> int:
    """Stages of a pretrained or path backbone: the most `freeze_stages` can freeze."""
    if is_backbone_path(backbone):
        from resnet_tuner.model.path_backbone import user_backbone_stages  # it imports us

        return user_backbone_stages(backbone)
    return PRETRAINED_STAGES[backbone]


def backbone_label(backbone: str) -> str:
    """A model-name-safe name of a backbone: the key, or a path's folder / file stem."""
    if not is_backbone_path(backbone):
        return backbone
    path = Path(backbone.rstrip("/\\"))
    label = path.parent.name if path.name == "model.keras" else path.stem
    return re.sub(r"[^A-Za-z0-9_.-]", "_", label) or USER_BACKBONE
