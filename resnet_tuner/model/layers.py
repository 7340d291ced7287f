"""Serializable layers the models carry with them.

Every layer here is registered with `keras.saving.register_keras_serializable`
under the package name `resnet_tuner` (kept stable: saved models refer to it),
so that a saved model reloads with `safe_mode=True` (no `Lambda` layers) and
carries its own preprocessing into the export bundle.

Random layers are inference by default: a plain `model(x)` is deterministic,
only `training=True` (as `fit` passes) augments.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

#: The serialization package of every registered object (`"resnet_tuner>RandomGamma"`).
#: Changing it breaks loading of saved models.
PACKAGE = "resnet_tuner"

#: BGR channel means that keras.applications.resnet50.preprocess_input subtracts
#: ("caffe" mode, the preprocessing the ImageNet weights were trained with).
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package=PACKAGE)
class RandomFlip(keras.layers.RandomFlip):
    """`keras.layers.RandomFlip` that flips only when called with `training=True`.

    Keras' own layer defaults to `training=True`, so `model(x)` without the
    argument would flip at inference.
    """

    def call(self, data, training=False):
        return super().call(data, training=training)


@keras.saving.register_keras_serializable(package=PACKAGE)
class RandomTranslation(keras.layers.RandomTranslation):
    """`keras.layers.RandomTranslation` that shifts only when called with `training=True`."""

    def call(self, data, training=False):
        return super().call(data, training=training)


@keras.saving.register_keras_serializable(package=PACKAGE)
class RandomGamma(keras.layers.Layer):
    """Random gamma correction `x ** g` per image, in training only.

    Expects inputs scaled to [0, 1]. `g` is drawn uniformly from `[low, high]`
    for each image (the cats-vs-dogs tutorial's mini-ResNet draws it from
    0.4..0.7). At inference the layer is the identity.

    Args:
        low: smallest gamma (> 0).
        high: largest gamma (>= low).
        seed: optional seed of the layer's random generator.
    """

    def __init__(self, low: float = 0.4, high: float = 0.7, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0 < low <= high:
            raise ValueError(
                f"RandomGamma needs 0 < low <= high. Received: low={low!r}, high={high!r}"
            )
        self.low = float(low)
        self.high = float(high)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training:
            return inputs
        batch = ops.shape(inputs)[0]
        gamma = keras.random.uniform(
            (batch, 1, 1, 1),
            minval=self.low,
            maxval=self.high,
            dtype=inputs.dtype,
            seed=self.seed_generator,
        )
        return ops.power(ops.clip(inputs, 0.0, 1.0), gamma)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "low": self.low, "high": self.high, "seed": self.seed}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ZeroPadShortcut(keras.layers.Layer):
    """Option A shortcut: parameter-free identity with subsampling and zero channels.

    He et al. 2015, sec. 3.3 (A): "the shortcut still performs identity mapping,
    with extra zero entries padded for increasing dimensions"; a strided shortcut
    takes every `strides`-th pixel, matching a 'same'-padded strided conv. The
    input channels come first, the zero channels after them.

    Args:
        strides: spatial subsampling factor.
        out_channels: channels of the output (>= input channels).
    """

    def __init__(self, strides: int = 1, out_channels: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.strides = int(strides)
        self.out_channels = out_channels

    def call(self, inputs):
        x = inputs
        if self.strides > 1:
            x = x[:, :: self.strides, :: self.strides, :]
        pad = (self.out_channels or x.shape[-1]) - x.shape[-1]
        if pad > 0:
            x = ops.pad(x, [[0, 0], [0, 0], [0, 0], [0, pad]])
        return x

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        s = self.strides
        h = None if h is None else -(-h // s)
        w = None if w is None else -(-w // s)
        return (n, h, w, self.out_channels or c)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "strides": self.strides, "out_channels": self.out_channels}


@keras.saving.register_keras_serializable(package=PACKAGE)
class CaffePreprocess(keras.layers.Layer):
    """keras.applications.resnet50.preprocess_input as a layer, for [0, 1] inputs.

    Scales to [0, 255], converts RGB to BGR and subtracts the ImageNet channel
    means, which is what the pretrained ResNet50 weights expect.
    """

    def call(self, inputs):
        x = inputs * 255.0
        x = ops.flip(x, axis=-1)
        mean = ops.convert_to_tensor(CAFFE_BGR_MEAN, dtype=x.dtype)
        return x - mean

    def compute_output_shape(self, input_shape):
        return input_shape
