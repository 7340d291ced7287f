"""Frozen stages computed once: split a model at a stage, cache the prefix's features, fit the rest.

When the first k stages of a model are frozen (`ResNetConfig.freeze_stages`),
their output for a training image is the same in every epoch, and in every
trial with the same frozen layers, weights and images. Then:

* `split_at_stage(model, k)` cuts `model` into a `prefix` (uint8 image ->
  output of stage k) and a `suffix` (that tensor -> class probabilities), two
  functional models sharing the layers of `model`: training the suffix trains
  `model`. Nested backbones (a keras.applications ResNet, a user's model) are
  cut inside and composed back.
* `feature_cache.cached_features(prefix, images)` runs the prefix once over
  the images and keeps the result on disk beside the image cache
  (`store.default_cache_dir()`), as `features-<key>/features.npy` (+
  `meta.json`), keyed by what determines it.
* `cached_fit(model, k, x, y, ...)` trains the suffix on those features with
  `model`'s compile settings and its own optimizer, while the callbacks see
  `model` itself (`_OnFullModel`); it returns None where caching does not
  apply, and the caller trains `model` as usual.

The rule: a prefix qualifies only if nothing in it changes during training,
i.e. none of its layers has trainable weights and none behaves differently
under `training=True` (augmentation, dropout, noise); a frozen
BatchNormalization qualifies (Keras 3 runs it in inference mode).
"""

from __future__ import annotations

import inspect
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from resnet_tuner.data.store import default_cache_dir
from resnet_tuner.model.backbones import layer_stages
from resnet_tuner.model.feature_cache import (
    Images,
    array_images,
    cached_features,
    split_images,
)
from resnet_tuner.model.feature_cache import leaf_layers as _leaves

__all__ = ["NotCacheableError", "cached_features", "cached_fit", "split_at_stage"]

#: `fit` arguments that need the images themselves: `cached_fit` returns None with them.
_UNSUPPORTED_FIT_ARGS = ("sample_weight", "validation_split")


class NotCacheableError(ValueError):
    """The first k stages of a model cannot be computed once (the message says why)."""


# --------------------------------------------------------------------------- split


def _calls(graph: keras.Model) -> dict[int, tuple[list, list]]:
    """`id(layer) -> (input tensors, output tensors)` of each layer's call in `graph`.

    Not `layer.input` / `layer.output`: those are a layer's first call, and a
    layer belongs to several graphs (a model made from intermediate tensors,
    such as `path_backbone.feature_extractor`'s, calls copies of its nodes; a
    nested model's `.output` is the tensor inside it). Keras keeps a graph's
    own nodes only in `Function._nodes_by_depth` (private; Keras 3.x): this is
    the one use, covered by tests/test_features.py's split tests.
    """
    by_depth = getattr(graph, "_nodes_by_depth", None)
    if not isinstance(by_depth, dict):  # e.g. a Sequential model
        raise NotCacheableError(f"{graph.name} is not a functional model")
    calls: dict[int, tuple[list, list]] = {}
    for nodes in by_depth.values():
        for node in nodes:
            key = id(node.operation)
            calls[key] = None if key in calls else (node.input_tensors, node.output_tensors)
    return calls


def _only(tensors, what: str):
    if isinstance(tensors, (list, tuple, dict)):
        flat = list(tensors.values()) if isinstance(tensors, dict) else list(tensors)
        if len(flat) != 1:
            raise NotCacheableError(f"{what} has {len(flat)} tensors; a cut needs exactly one")
        return flat[0]
    return tensors


def _spec(tensor) -> keras.KerasTensor:
    return keras.Input(shape=tuple(tensor.shape[1:]), dtype=tensor.dtype)


def _cut(graph: keras.Model, frozen: Callable[[Any], bool]) -> tuple[keras.Model, Any]:
    """`(prefix, suffix or None)` of one functional graph; None: the cut is its output.

    The cut is after the last layer (in topological order) holding frozen
    layers; a nested model there is cut inside and composed with the graph
    around it. Keras refuses a suffix that needs any other tensor of the
    prefix (a skip connection over the cut).
    """
    calls = _calls(graph)
    source = _only(graph.inputs, f"the input of {graph.name}")
    target = _only(graph.outputs, f"the output of {graph.name}")
    holders = [layer for layer in graph.layers
               if not isinstance(layer, keras.layers.InputLayer)
               and any(frozen(leaf) for leaf in _leaves(layer))]
    if not holders:
        raise NotCacheableError(f"{graph.name} has no frozen stage layer")
    last = holders[-1]
    call = calls.get(id(last))
    if call is None:
        raise NotCacheableError(f"{last.name} is called more than once in {graph.name}")
    made = _only(call[1], f"the output of {last.name}")
    if isinstance(last, keras.Model):
        entry = _only(call[0], f"the input of {last.name}")
        inner_prefix, inner_suffix = _cut(last, frozen)
        x = _spec(source)
        h = x if entry is source else keras.Model(source, entry, name=f"{graph.name}_in")(x)
        h = inner_prefix(h)
        prefix = keras.Model(x, h, name=f"{graph.name}_prefix")
        if inner_suffix is None and made is target:
            return prefix, None
        z = _spec(h)
        y = z if inner_suffix is None else inner_suffix(z)
        y = y if made is target else keras.Model(made, target, name=f"{graph.name}_out")(y)
        return prefix, keras.Model(z, y, name=f"{graph.name}_suffix")
    prefix = keras.Model(source, made, name=f"{graph.name}_prefix")
    if made is target:
        return prefix, None
    return prefix, keras.Model(made, target, name=f"{graph.name}_suffix")


def _changes_in_training(layer) -> str | None:
    """Why `layer` would not give the same output every epoch, or None."""
    if layer.trainable_weights:
        return "has trainable weights (not frozen)"
    if isinstance(layer, keras.layers.BatchNormalization):
        return None  # frozen: inference mode whatever `training` says (Keras 3)
    if "training" in inspect.signature(layer.call).parameters:
        return "behaves differently with training=True (augmentation, dropout or noise)"
    return None


def split_at_stage(model: keras.Model, stages: int) -> tuple[keras.Model, keras.Model]:
    """`model` as `prefix` (input -> end of stage `stages`) and `suffix` (-> output).

    Stages are `backbones.layer_stages`'s (1 = stem; nested backbones opened;
    a pre-activation model's `post_bn` / `post_relu` end its last stage). The
    cut is the tensor after which no layer of stages 1..`stages` runs: for a
    ResNet the last block's `_out` (V1) or `_add` / `_out` (pre-activation),
    `post_relu` for the last stage of a V2. Both models share the layers of
    `model`, so `suffix(prefix(x)) == model(x)` and fitting `suffix` trains
    `model`'s own weights.

    Args:
        model: a functional model with one input and one output, e.g. of
            `build_resnet`, with stages 1..`stages` frozen.
        stages: the number of frozen stages, at least 1.

    Returns:
        `(prefix, suffix)`, two uncompiled functional models.

    Raises:
        NotCacheableError: no such cut, or a prefix whose output would change
            during training: a layer before the cut has trainable weights or
            depends on `training` (augmentation layers are in the model, before
            the backbone: caching needs `flip="none"`, `shift=0`, `gamma=None`).

    Example:
        >>> prefix, suffix = split_at_stage(model, 3)
        >>> np.allclose(suffix(prefix(x)), model(x), atol=1e-5)
        True
    """
    if not isinstance(stages, int) or isinstance(stages, bool) or stages < 1:
        raise NotCacheableError(f"stages must be a positive integer. Received: stages={stages!r}")
    stage_of = {id(layer): stage for layer, stage in layer_stages(model)}
    in_stages = {i for i, s in stage_of.items() if s is not None and s <= stages}
    if not in_stages:
        raise NotCacheableError(f"{model.name} has no layer of stages 1..{stages}")
    try:
        prefix, suffix = _cut(model, lambda leaf: id(leaf) in in_stages)
    except NotCacheableError:
        raise
    except ValueError as err:  # Keras: the suffix needs another tensor than the cut's
        raise NotCacheableError(f"{model.name} has no single tensor that ends stage {stages}: "
                                f"{err}") from err
    if suffix is None:
        raise NotCacheableError(f"stages 1..{stages} end at the output of {model.name}")
    front, back = _leaves(prefix), _leaves(suffix)
    ids_front, ids_back = {id(x) for x in front}, {id(x) for x in back}
    if not in_stages <= ids_front or in_stages & ids_back or ids_front & ids_back:
        raise NotCacheableError(f"{model.name} has no single tensor that ends stage {stages}")
    for leaf in front:
        why = _changes_in_training(leaf)
        if why:
            raise NotCacheableError(
                f"cannot compute stages 1..{stages} of {model.name} once: layer {leaf.name!r} "
                f"({type(leaf).__name__}) before the end of stage {stages} {why}. Caching needs "
                "every layer up to there frozen and deterministic: augmentation off, "
                f"freeze_stages >= {stages}")
    prefix.name, suffix.name = f"{model.name}_stages1-{stages}", f"{model.name}_after{stages}"
    return prefix, suffix


# --------------------------------------------------------------------------- fit


class _OnFullModel(keras.callbacks.Callback):
    """Runs `callbacks` with `self.model` = the full model while its suffix trains.

    keras-tuner's checkpoint saves `self.model.save_weights(...)` and loads it
    into the full model later; a learning-rate schedule sets
    `self.model.optimizer` (the full model's, which the suffix shares). A
    `stop_training` a callback sets on the full model is copied to the
    training suffix after every hook, so EarlyStopping, a deadline or a
    median rule stop its fit.
    """

    def __init__(self, callbacks, full: keras.Model):
        super().__init__()
        self.full = full
        self.inner = keras.callbacks.CallbackList(list(callbacks or []), model=full)

    def set_params(self, params):
        super().set_params(params)
        self.inner.set_params(params)

    def _forward(self, hook: str, *args) -> None:
        getattr(self.inner, hook)(*args)
        if self.full.stop_training:
            self.model.stop_training = True

    def on_train_begin(self, logs=None):
        self.full.stop_training = False
        self._forward("on_train_begin", logs)

    def on_train_end(self, logs=None):
        self._forward("on_train_end", logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._forward("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._forward("on_epoch_end", epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._forward("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._forward("on_train_batch_end", batch, logs)

    def on_test_begin(self, logs=None):
        self._forward("on_test_begin", logs)

    def on_test_end(self, logs=None):
        self._forward("on_test_end", logs)

    def on_test_batch_begin(self, batch, logs=None):
        self._forward("on_test_batch_begin", batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        self._forward("on_test_batch_end", batch, logs)


def _ordered_batches(x: np.ndarray, y: np.ndarray, batch_size: int, drop_remainder: bool):
    """`(x, y)` rows in order, batch by batch (gathered per batch, as `shuffled_full_batches`)."""
    import tensorflow as tf

    rows = tf.data.Dataset.range(len(x)).batch(batch_size, drop_remainder=drop_remainder)

    def read(index):
        xb, yb = tf.numpy_function(lambda i: (x[i], y[i]), [index],
                                   [tf.as_dtype(x.dtype), tf.as_dtype(y.dtype)])
        xb.set_shape((None, *x.shape[1:]))
        yb.set_shape((None, *y.shape[1:]))
        return xb, yb

    return rows.map(read, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _compile_like(suffix: keras.Model, model: keras.Model) -> None:
    """Compiles `suffix` with `model`'s loss, metrics and settings, and its very optimizer."""
    config = keras.saving.deserialize_keras_object(model.get_compile_config())
    suffix.compile(**{**config, "optimizer": model.optimizer})


def cached_fit(model: keras.Model, frozen_stages: int, x: Any, y: Any = None,
               validation_data: Any = None, *, cache_dir: str | os.PathLike | None = None,
               feature_dtype: str = "float16", seed: int | None = None,
               **fit_kwargs) -> keras.callbacks.History | None:
    """`model.fit` with stages 1..`frozen_stages` computed once (cached) instead of every epoch.

    Trains the suffix of `split_at_stage` on `cached_features` of the
    training (and validation) images: the same weights of `model` change as
    in `model.fit`, with `model`'s optimizer, loss and metrics (so the logs
    and History have the same names, e.g. `val_accuracy`). Batches are
    `batch_size` rows, reshuffled every epoch (`hypermodel.shuffled_full_batches`,
    full batches only) unless `shuffle=False` (rows in order; the last smaller
    batch dropped too). Validation keeps every image. Callbacks see `model`
    as `self.model`; a stop they request stops the suffix's fit.

    Args:
        model: a compiled model (e.g. of `build_resnet`) with stages
            1..`frozen_stages` frozen and no augmentation.
        frozen_stages: `ResNetConfig.freeze_stages`.
        x: uint8 images (numpy, with labels `y`), or an `ImageData`
            (`ImageFolder`, `datasets.*`: its `train` split; validated on its
            `val` split unless `validation_data` is given). Another object with
            a `dataset()` is not cached: nothing says its `labels(split)` are in
            its images' order.
        y: integer labels of `x` when `x` is an array.
        validation_data: None or `(images, labels)` numpy arrays.
        cache_dir: where feature caches live (default `store.default_cache_dir()`).
        feature_dtype: stored dtype, see `cached_features`.
        seed: seed of the batch order (None: random).
        **fit_kwargs: `batch_size` (default 32), `shuffle`,
            `validation_batch_size`, and what goes to `fit` as is: `epochs`,
            `initial_epoch`, `callbacks`, `class_weight`, `verbose`, ...

    Returns:
        The History of the fit, or None when caching does not apply (no frozen
        stage, a prefix that changes in training (`NotCacheableError`), data
        other than numpy arrays or an `ImageData`, `sample_weight` /
        `validation_split`, a model made in a `tf.distribute` strategy's scope),
        or when the cache does not fit in half the free disk or cannot be
        written (a warning says so): train `model` as usual then.
    """
    import tensorflow as tf

    from resnet_tuner.data.images import ImageData
    from resnet_tuner.hypermodel import shuffled_full_batches

    if not frozen_stages or any(k in fit_kwargs for k in _UNSUPPORTED_FIT_ARGS):
        return None
    if getattr(model, "_distribute_strategy", None) is not None:
        return None  # a model of a tf.distribute strategy (--devices): the suffix would not be
    if isinstance(x, np.ndarray) and y is not None:
        train, labels = array_images(x), np.asarray(y)
        if len(labels) != len(x):
            raise ValueError(f"x and y hold different numbers of samples: {len(x)} and "
                             f"{len(labels)}")
    elif isinstance(x, ImageData):  # its labels(split) are in its dataset(split)'s order
        train, labels = split_images(x, "train"), np.asarray(x.labels("train"))
    else:
        return None
    if validation_data is None and isinstance(x, ImageData) and len(x.labels("val")):
        val = (split_images(x, "val"), np.asarray(x.labels("val")))
    elif validation_data is None:
        val = None
    elif (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2
          and isinstance(validation_data[0], np.ndarray)):
        val = (array_images(validation_data[0]), np.asarray(validation_data[1]))
    else:
        return None
    if not model.compiled:
        raise ValueError(f"compile {model.name} before cached_fit (its suffix is compiled "
                         "with the same optimizer, loss and metrics)")
    try:
        prefix, suffix = split_at_stage(model, int(frozen_stages))
    except NotCacheableError:
        return None
    _compile_like(suffix, model)

    batch_size = fit_kwargs.pop("batch_size", None) or 32
    shuffle = fit_kwargs.pop("shuffle", True)
    val_batch = fit_kwargs.pop("validation_batch_size", None) or batch_size
    verbose = fit_kwargs.get("verbose", "auto") not in (0, False)
    cut = keras.backend.standardize_dtype(suffix.inputs[0].dtype)

    def batches(images: Images, y_: np.ndarray, size: int, training: bool):
        features = cached_features(prefix, images, cache_dir=cache_dir,
                                   dtype=feature_dtype, verbose=verbose)
        if training and shuffle:
            ds = shuffled_full_batches(features, y_, size, seed=seed)
        else:
            ds = _ordered_batches(features, y_, size,
                                  drop_remainder=training and len(features) >= size)
        return ds if features.dtype.name == cut else ds.map(lambda f, t: (tf.cast(f, cut), t))

    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    rows = train.count + (0 if val is None else val[0].count)
    needed = 2 * rows * int(np.prod(prefix.outputs[0].shape[1:]))  # float16 bytes
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if needed > free // 2:
        warnings.warn(f"not caching the frozen stages' output of {model.name}: it needs "
                      f"{needed / 2**30:.1f} GiB and {existing} has {free / 2**30:.1f} GiB free; "
                      "the trial trains on the images", stacklevel=2)
        return None
    try:
        train_ds = batches(train, labels, batch_size, training=True)
        val_ds = None if val is None else batches(*val, val_batch, training=False)
    except OSError as err:  # a full disk, a read-only cache folder: train as if uncached
        warnings.warn(f"not caching the frozen stages' output of {model.name} in {folder}: "
                      f"{err}; the trial trains on the images", stacklevel=2)
        return None
    if not model.optimizer.built:  # as model.fit would: slots for all its trainable weights
        model.optimizer.build(model.trainable_variables)
    callbacks = [_OnFullModel(fit_kwargs.pop("callbacks", None), model)]
    # shuffle=False: the dataset orders its rows itself (Keras warns it ignores shuffle=True).
    history = suffix.fit(train_ds, validation_data=val_ds, callbacks=callbacks, shuffle=False,
                         **fit_kwargs)
    history.set_model(model)
    model.history = history
    return history
