"""Frozen stages computed once: split a model at a stage, cache the prefix's features, fit the rest.

When the first k stages of a model are frozen (`ResNetConfig.freeze_stages`),
their output for a training image is the same in every epoch, and in every
trial with the same frozen layers, weights and images. Then:

* `split_at_stage(model, k)` cuts `model` into a `prefix` (uint8 image ->
  output of stage k) and a `suffix` (that tensor -> class probabilities), two
  functional models sharing the layers of `model`: training the suffix trains
  `model`. Nested backbones (a keras.applications ResNet, a user's model) are
  cut inside and composed back.
* `cached_features(prefix, images)` runs the prefix once over the images and
  keeps the result on disk beside the image cache (`store.default_cache_dir()`),
  as `features-<key>/features.npy` (+ `meta.json`), keyed by what determines it.
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

import hashlib
import inspect
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from resnet_tuner.data.store import default_cache_dir
from resnet_tuner.model.backbones import layer_stages

__all__ = ["NotCacheableError", "cached_features", "cached_fit", "split_at_stage"]

#: Bumped whenever the layout or the computation of a feature cache changes.
FEATURES_VERSION = 1
#: Images per prefix call; the last batch is padded to it (one input shape, one trace).
FEATURE_BATCH = 32
#: What float16 can hold; a feature beyond it is stored in float32 instead.
_FLOAT16_MAX = float(np.finfo(np.float16).max)
#: `fit` arguments that need the images themselves: `cached_fit` returns None with them.
_UNSUPPORTED_FIT_ARGS = ("sample_weight", "validation_split")


class NotCacheableError(ValueError):
    """The first k stages of a model cannot be computed once (the message says why)."""


# --------------------------------------------------------------------------- split


def _leaves(layer) -> list:
    """The non-model layers in `layer` (nested models opened), input layers left out."""
    if isinstance(layer, keras.Model):
        return [leaf for inner in layer.layers for leaf in _leaves(inner)]
    return [] if isinstance(layer, keras.layers.InputLayer) else [layer]


def _calls(graph: keras.Model) -> dict[int, tuple[list, list]]:
    """`id(layer) -> (input tensors, output tensors)` of each layer's call in `graph`.

    Not `layer.input` / `layer.output`: those are a layer's first call, and a
    layer belongs to several graphs (a model made from intermediate tensors,
    such as `backbones.feature_extractor`'s, calls copies of its nodes; a
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


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class _Images:
    """Images to compute features of: how many, what they are, their batches in order."""

    count: int
    fingerprint: Callable[[], str]
    batches: Callable[[int], Iterator[np.ndarray]]


def _digest() -> Any:
    return hashlib.blake2b(digest_size=16)


def _array_images(x: np.ndarray) -> _Images:
    def fingerprint() -> str:
        digest = _digest()
        digest.update(f"array {x.shape} {x.dtype.str}".encode())
        for start in range(0, len(x), 256):  # in chunks: a memory map is not read whole
            digest.update(memoryview(np.ascontiguousarray(x[start:start + 256])).cast("B"))
        return digest.hexdigest()

    def batches(size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(x), size):
            yield np.asarray(x[start:start + size])

    return _Images(len(x), fingerprint, batches)


def _split_images(data: Any, split: str) -> _Images:
    """A split of an `ImageFolder`-like object (`dataset`, `labels`, `class_names`)."""
    from resnet_tuner.data.images import ImageData

    def batches(size: int) -> Iterator[np.ndarray]:
        for images, _ in data.dataset(split, batch_size=size, shuffle=False):
            yield np.asarray(images)

    def fingerprint() -> str:
        digest = _digest()
        cache = getattr(data, "_images", None) if isinstance(data, ImageData) else None
        if isinstance(cache, (str, os.PathLike)):
            # The decode-once cache is named by its files and decode settings
            # (store.cache_key); the split's row numbers say which images.
            stat = Path(cache).stat()
            digest.update(f"cache {Path(cache).resolve()} {stat.st_size} "
                          f"{stat.st_mtime_ns}".encode())
            digest.update(np.asarray(data._index[split], np.int64).tobytes())
        else:  # anything else: the images themselves, as the model receives them
            for images in batches(256):
                digest.update(f"{images.shape} {images.dtype.str}".encode())
                digest.update(memoryview(np.ascontiguousarray(images)).cast("B"))
        return digest.hexdigest()

    return _Images(len(data.labels(split)), fingerprint, batches)


def _as_images(x: Any, split: str = "train") -> _Images:
    if isinstance(x, np.ndarray):
        return _array_images(x)
    from resnet_tuner.hypermodel import _is_image_data

    if _is_image_data(x):
        return _split_images(x, split)
    raise TypeError(f"images must be a numpy array or an ImageFolder-like object. "
                    f"Received: {type(x).__name__}")


# --------------------------------------------------------------------------- cache


def _model_digest(prefix: keras.Model) -> dict[str, str]:
    """Digests of the prefix's layers (class and config, names left out) and weights.

    The weights digest is the honest key for every source of weights
    (ImageNet file, user file, a user's model, random initialisation): the
    computation depends on the values, not on where they came from.
    """
    layers, weights = _digest(), _digest()
    for leaf in _leaves(prefix):
        config = {k: v for k, v in leaf.get_config().items() if k != "name"}
        layers.update(f"{type(leaf).__module__}.{type(leaf).__qualname__} ".encode())
        layers.update(json.dumps(config, sort_keys=True, default=str).encode())
    for variable in prefix.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).reshape(-1)
        weights.update(f"{value.shape} {value.dtype.str}".encode())
        weights.update(memoryview(value).cast("B"))
    return {"layers": layers.hexdigest(), "weights": weights.hexdigest()}


def _run_prefix(prefix: keras.Model, batch: np.ndarray) -> np.ndarray:
    """The prefix on one batch (padded to `FEATURE_BATCH`). Tests replace it to count calls."""
    rows = len(batch)
    if rows < FEATURE_BATCH:
        pad = np.zeros((FEATURE_BATCH - rows, *batch.shape[1:]), batch.dtype)
        batch = np.concatenate([batch, pad])
    return np.asarray(prefix.predict_on_batch(batch))[:rows]


class _Float16Overflow(Exception):
    pass


def _write(entry: Path, prefix: keras.Model, images: _Images, dtype: str,
           meta: dict, verbose: bool) -> None:
    """Writes `entry/features.npy` under a temporary name, renamed when complete."""
    shape = (images.count, *prefix.outputs[0].shape[1:])
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    started = time.perf_counter()
    try:
        header = np.lib.format.open_memmap(tmp / "features.npy", "w+", np.dtype(dtype), shape)
        offset, row_bytes = header.offset, int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
        del header  # a sparse file of the right size; rows are written below
        fd = os.open(tmp / "features.npy", os.O_WRONLY)
        row = 0
        try:
            for batch in images.batches(FEATURE_BATCH):
                out = _run_prefix(prefix, batch)
                if dtype == "float16" and np.abs(out).max(initial=0) > _FLOAT16_MAX:
                    raise _Float16Overflow
                data = memoryview(np.ascontiguousarray(out, dtype=dtype)).cast("B")
                if os.pwrite(fd, data, offset + row * row_bytes) != len(data):
                    raise OSError(f"short write to {tmp / 'features.npy'}")
                row += len(out)
                if verbose:
                    sys.stderr.write(f"\rfeatures of {prefix.name}: {row}/{images.count} images")
        finally:
            os.close(fd)
            if verbose:
                sys.stderr.write("\n")
        if row != images.count:
            raise RuntimeError(f"expected {images.count} images, the data gave {row}")
        meta = {**meta, "seconds": round(time.perf_counter() - started, 3)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), "utf-8")
        try:
            os.replace(tmp, entry)  # atomic: readers see a complete cache or none
        except OSError:
            if not (entry / "meta.json").is_file():  # not a concurrent writer's copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cached_features(prefix: keras.Model, images: Any, *, split: str = "train",
                    cache_dir: str | os.PathLike | None = None, dtype: str = "float16",
                    verbose: bool = False) -> np.ndarray:
    """The prefix's output for every image, computed once and kept on disk.

    The entry is `<cache_dir>/features-<key>/features.npy` (rows in the images'
    order) with a `meta.json`; `key` digests the images (a numpy array's
    bytes, shape and dtype; an `ImageData`'s decode cache file and split rows;
    another data object's images), the prefix's layers (class and config) and
    weights (values, whatever their source), its input and output specs, the
    Keras version and the stored dtype. Written in batches of
    `FEATURE_BATCH` images straight to the file (never the whole float array
    in memory), under a temporary name renamed when complete.

    Args:
        prefix: the first model of `split_at_stage`.
        images: uint8 images as a numpy array, or an `ImageFolder`-like object.
        split: which split of an `ImageFolder`-like object.
        cache_dir: defaults to `store.default_cache_dir()`.
        dtype: `"float16"` (half the disk and reading; 11 significant bits;
            a set with a feature beyond float16's range is stored as float32)
            or `"float32"` (what the model computes, for exact equality). A
            prefix computing in float16 stores float16 either way.
        verbose: print progress while computing.

    Returns:
        A read-only memory map `(images, *prefix output shape)`.
    """
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32'. Received: dtype={dtype!r}")
    if keras.backend.standardize_dtype(prefix.outputs[0].dtype) == "float16":
        dtype = "float16"
    source = images if isinstance(images, _Images) else _as_images(images, split)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    meta = {"version": FEATURES_VERSION, "keras": keras.__version__,
            "images": source.fingerprint(), **_model_digest(prefix),
            "input": [list(prefix.inputs[0].shape[1:]), str(prefix.inputs[0].dtype)],
            "output": [list(prefix.outputs[0].shape[1:]), str(prefix.outputs[0].dtype)]}

    def entry(stored: str) -> Path:
        key = hashlib.sha256(json.dumps({**meta, "stored": stored}, sort_keys=True).encode())
        return folder / f"features-{key.hexdigest()[:24]}"

    # A float32 entry answers a float16 request too (it is the more exact).
    choices = ["float16", "float32"] if dtype == "float16" else ["float32"]
    for stored in choices:
        if (entry(stored) / "meta.json").is_file():
            return _open(entry(stored), source.count, prefix)
    for stored in choices:
        try:
            _write(entry(stored), prefix, source, stored,
                   {**meta, "stored": stored, "model": prefix.name, "rows": source.count},
                   verbose)
            return _open(entry(stored), source.count, prefix)
        except _Float16Overflow:
            continue
    raise AssertionError("unreachable: float32 does not overflow")


def _open(entry: Path, rows: int, prefix: keras.Model) -> np.ndarray:
    features = np.load(entry / "features.npy", mmap_mode="r")
    if features.shape != (rows, *prefix.outputs[0].shape[1:]):
        raise OSError(f"feature cache {entry} holds {features.shape}, expected "
                      f"{(rows, *prefix.outputs[0].shape[1:])}; delete it to rebuild")
    return features


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
        train, labels = _array_images(x), np.asarray(y)
        if len(labels) != len(x):
            raise ValueError(f"x and y hold different numbers of samples: {len(x)} and "
                             f"{len(labels)}")
    elif isinstance(x, ImageData):  # its labels(split) are in its dataset(split)'s order
        train, labels = _split_images(x, "train"), np.asarray(x.labels("train"))
    else:
        return None
    if validation_data is None and isinstance(x, ImageData) and len(x.labels("val")):
        val = (_split_images(x, "val"), np.asarray(x.labels("val")))
    elif validation_data is None:
        val = None
    elif (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2
          and isinstance(validation_data[0], np.ndarray)):
        val = (_array_images(validation_data[0]), np.asarray(validation_data[1]))
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

    def batches(images: _Images, y_: np.ndarray, size: int, training: bool):
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
