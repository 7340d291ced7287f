"""The feature cache: a frozen prefix's output for a set of images, computed once, kept on disk.

`cached_features(prefix, images)` runs the prefix (the first model of
`features.split_at_stage`) once over the images and keeps the result beside
the image cache (`store.default_cache_dir()`) as `features-<key>/features.npy`
(+ `meta.json`), keyed by everything that determines it: the images, the
prefix's layers and weights, its input and output specs, the Keras version and
the stored dtype. Entries are written batch by batch under a temporary name
and renamed when complete; they are read memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from resnet_tuner.data.store import default_cache_dir

__all__ = ["FEATURE_BATCH", "cached_features", "leaf_layers"]

#: Bumped whenever the layout or the computation of a feature cache changes.
FEATURES_VERSION = 1
#: Images per prefix call; the last batch is padded to it (one input shape, one trace).
FEATURE_BATCH = 32
#: What float16 can hold; a feature beyond it is stored in float32 instead.
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def leaf_layers(layer) -> list:
    """The non-model layers in `layer` (nested models opened), input layers left out."""
    if isinstance(layer, keras.Model):
        return [leaf for inner in layer.layers for leaf in leaf_layers(inner)]
    return [] if isinstance(layer, keras.layers.InputLayer) else [layer]


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Images:
    """Images to compute features of: how many, what they are, their batches in order."""

    count: int
    fingerprint: Callable[[], str]
    batches: Callable[[int], Iterator[np.ndarray]]


def _digest() -> Any:
    return hashlib.blake2b(digest_size=16)


def array_images(x: np.ndarray) -> Images:
    def fingerprint() -> str:
        digest = _digest()
        digest.update(f"array {x.shape} {x.dtype.str}".encode())
        for start in range(0, len(x), 256):  # in chunks: a memory map is not read whole
            digest.update(memoryview(np.ascontiguousarray(x[start:start + 256])).cast("B"))
        return digest.hexdigest()

    def batches(size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(x), size):
            yield np.asarray(x[start:start + size])

    return Images(len(x), fingerprint, batches)


def split_images(data: Any, split: str) -> Images:
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

    return Images(len(data.labels(split)), fingerprint, batches)


def as_images(x: Any, split: str = "train") -> Images:
    if isinstance(x, np.ndarray):
        return array_images(x)
    from resnet_tuner.hypermodel import _is_image_data

    if _is_image_data(x):
        return split_images(x, split)
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
    for leaf in leaf_layers(prefix):
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


def _write(entry: Path, prefix: keras.Model, images: Images, dtype: str,
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
        prefix: the first model of `features.split_at_stage`.
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
    source = images if isinstance(images, Images) else as_images(images, split)
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
