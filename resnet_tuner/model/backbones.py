"""Pretrained backbones: one `Backbone` record each.

A record says how to build the network (without its top), which
preprocessing layer turns [0, 1] images into what its weights expect, where
its weights file comes from (name, URL, hash) and how its layers are named by
stage, which `freeze_stages` reads. Adding a backbone is one record in
`BACKBONES` and its stage count in `config.PRETRAINED_STAGES`.

Weights come from Keras' cache (`$KERAS_HOME/models`, `~/.keras/models` by
default), from a download when the machine is online, or from a file the user
names. Loading always goes through `keras.Model.load_weights`, the same call
keras.applications makes, so a test can exercise it with a file it saved.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from resnet_tuner.config import PRETRAINED_STAGES, ResNetConfig
from resnet_tuner.model.layers import CaffePreprocess

_KERAS_APPLICATIONS = "https://storage.googleapis.com/tensorflow/keras-applications/"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached, downloadable nor given as a file."""


@dataclass(frozen=True)
class Backbone:
    """One pretrained network usable as `ResNetConfig.backbone`.

    Attributes:
        title: the name used in messages, e.g. `"ResNet50"`.
        build: `input_shape -> keras.Model` without top and without weights;
            the model's name is the record's key (the layer name in the model).
        preprocess: `() -> layer` mapping [0, 1] images to the network's input.
        weights_file: file name of the ImageNet weights (Keras' cache name).
        weights_url: where `weights_file` downloads from.
        weights_hash: its MD5, checked by `keras.utils.get_file`.
        stage_prefixes: for stage 1, 2, ... the prefixes of its layers' names;
            `freeze_stages=k` freezes the layers of stages 1..k.
    """

    title: str
    build: Callable[[tuple[int, ...]], keras.Model]
    preprocess: Callable[[], keras.layers.Layer]
    weights_file: str
    weights_url: str
    weights_hash: str
    stage_prefixes: tuple[tuple[str, ...], ...]


def _resnet50(input_shape: tuple[int, ...]) -> keras.Model:
    return keras.applications.ResNet50(include_top=False, weights=None, input_shape=input_shape)


_RESNET50_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"

BACKBONES: dict[str, Backbone] = {
    # keras.applications.ResNet50: a stem (conv1, pool1) and four residual
    # stages (conv2..conv5), named as in He et al. 2015, Table 1.
    "resnet50": Backbone(
        title="ResNet50",
        build=_resnet50,
        preprocess=lambda: CaffePreprocess(name="caffe_preprocess"),
        weights_file=_RESNET50_FILE,
        weights_url=_KERAS_APPLICATIONS + "resnet/" + _RESNET50_FILE,
        weights_hash="4d473c1dd8becc155b73f8504c6f6626",
        stage_prefixes=(("conv1_", "pool1_"), ("conv2_",), ("conv3_",), ("conv4_",),
                        ("conv5_",)),
    ),
}

for _name, _record in BACKBONES.items():
    # config.py validates freeze_stages without Keras, from its own stage counts.
    if PRETRAINED_STAGES.get(_name) != len(_record.stage_prefixes):
        raise ImportError(
            f"resnet_tuner.config.PRETRAINED_STAGES[{_name!r}] must be "
            f"{len(_record.stage_prefixes)}, the number of stages of backbone {_name!r}"
        )
if set(BACKBONES) != set(PRETRAINED_STAGES):
    raise ImportError(
        f"resnet_tuner.config.PRETRAINED_STAGES {sorted(PRETRAINED_STAGES)} must name the "
        f"backbones {sorted(BACKBONES)}"
    )


def keras_cache_path(backbone: str = "resnet50") -> Path:
    """Where Keras keeps the downloaded weights of `backbone`."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models" / BACKBONES[backbone].weights_file


def resolve_weights(weights: str | None, backbone: str = "resnet50") -> Path | None:
    """Finds the weights file for `ResNetConfig.weights`.

    Args:
        weights: `"imagenet"` (Keras cache, else download), a path to a weights
            file (`.h5` as keras.applications ships, or `.weights.h5`), or None.
        backbone: a key of `BACKBONES`.

    Returns:
        The file to load, or None for random initialisation.

    Raises:
        FileNotFoundError: `weights` is a path that does not exist.
        WeightsUnavailableError: ImageNet weights are not cached and cannot be
            downloaded; the message says how to provide them.
    """
    record = BACKBONES[backbone]
    if weights is None:
        return None
    if weights == "imagenet":
        cached = keras_cache_path(backbone)
        if cached.is_file():
            return cached
        try:
            return Path(
                keras.utils.get_file(
                    record.weights_file,
                    record.weights_url,
                    cache_subdir="models",
                    file_hash=record.weights_hash,
                )
            )
        except Exception as err:  # no network, proxy, bad hash ...
            raise WeightsUnavailableError(
                f"ImageNet weights for {record.title} are not in the Keras cache "
                f"({cached}) and could not be downloaded ({type(err).__name__}: {err}). "
                f"Download {record.weights_url} on a machine with internet access, then "
                f"either copy it to {cached} or give its path: in a search space file, "
                f"weights = \"/path/to/{record.weights_file}\" under [transfer]; in Python, "
                f"ResNetConfig(weights='/path/to/{record.weights_file}'). To train from "
                "random initialisation instead: weights = \"none\" in the space file, "
                "weights=None in Python."
            ) from err
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{record.title} weights file not found: {path}. Pass weights='imagenet', None, "
            "or the path of an existing .h5 / .weights.h5 file."
        )
    return path


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
    weights_path = resolve_weights(config.weights, config.backbone)
    if weights_path is not None:
        base.load_weights(str(weights_path))
    return base(x)
