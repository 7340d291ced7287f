"""Transfer learning: keras.applications.ResNet50 as a backbone, with pretrained weights.

Weights come from Keras' cache (`$KERAS_HOME/models`, `~/.keras/models` by
default), from a download when the machine is online, or from a file the user
names. Loading always goes through `keras.Model.load_weights`, the same call
keras.applications makes, so a test can exercise it with a file it saved.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

from resnet_tuner.config import ResNetConfig
from resnet_tuner.layers import CaffePreprocess

RESNET50_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
RESNET50_NOTOP_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + RESNET50_NOTOP_FILE
)
RESNET50_NOTOP_HASH = "4d473c1dd8becc155b73f8504c6f6626"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached, downloadable nor given as a file."""


def keras_cache_path() -> Path:
    """Where Keras keeps downloaded application weights."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models" / RESNET50_NOTOP_FILE


def resolve_weights(weights: str | None) -> Path | None:
    """Finds the weights file for `ResNetConfig.weights`.

    Args:
        weights: `"imagenet"` (Keras cache, else download), a path to a weights
            file (`.h5` as keras.applications ships, or `.weights.h5`), or None.

    Returns:
        The file to load, or None for random initialisation.

    Raises:
        FileNotFoundError: `weights` is a path that does not exist.
        WeightsUnavailableError: ImageNet weights are not cached and cannot be
            downloaded; the message says how to provide them.
    """
    if weights is None:
        return None
    if weights == "imagenet":
        cached = keras_cache_path()
        if cached.is_file():
            return cached
        try:
            return Path(
                keras.utils.get_file(
                    RESNET50_NOTOP_FILE,
                    RESNET50_NOTOP_URL,
                    cache_subdir="models",
                    file_hash=RESNET50_NOTOP_HASH,
                )
            )
        except Exception as err:  # no network, proxy, bad hash ...
            raise WeightsUnavailableError(
                "ImageNet weights for ResNet50 are not in the Keras cache "
                f"({cached}) and could not be downloaded ({type(err).__name__}: {err}). "
                f"Download {RESNET50_NOTOP_URL} on a machine with internet access, then "
                f"either copy it to {cached} or pass its path: weights='/path/to/"
                f"{RESNET50_NOTOP_FILE}' (in a search space file: weights = \"/path/...\"). "
                "Use weights=None to train from random initialisation."
            ) from err
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"ResNet50 weights file not found: {path}. Pass weights='imagenet', None, "
            "or the path of an existing .h5 / .weights.h5 file."
        )
    return path


def resnet50_backbone(x, config: ResNetConfig):
    """Applies keras.applications.ResNet50 (no top) with its own preprocessing to `x`.

    `x` holds images scaled to [0, 1]; `CaffePreprocess` turns them into what
    the ImageNet weights expect. The backbone is nested as one layer named
    `resnet50`, whose inner layers keep keras.applications' names (`conv1_*`,
    `conv2_block1_*`, ...), so `freeze_stages` finds them.
    """
    x = CaffePreprocess(name="caffe_preprocess")(x)
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=x.shape[1:])
    weights_path = resolve_weights(config.weights)
    if weights_path is not None:
        base.load_weights(str(weights_path))
    return base(x)
