"""Image folders -> stratified splits -> a decode-once `tf.data` pipeline.

`ImageFolder` scans a folder with one subfolder per class (or already split
into `train/`, `val/` or `validation/`, `test/`), decodes every image once with
OpenCV into RGB uint8 at `image_size`, caches the result on disk as a `.npy`
array keyed by the files' names, sizes and modification times, and splits it
stratified with scikit-learn. Every trial of a search, and every later run on
the same folder, reads the cache instead of decoding again.

Bad files (unreadable, truncated, empty, not images, too small, hidden) never
stop a load: they are listed in `data.skipped` with the reason and summarised
in one warning.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

SPLITS = ("train", "val", "test")
VAL_DIR_NAMES = ("val", "validation")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
RESIZE_MODES = ("stretch", "crop", "pad")
#: Bumped whenever the cache layout or decoding changes, so old caches are not reused.
CACHE_VERSION = 2
#: Splits up to this size are read into memory once per `dataset()` call and
#: sliced by tf.data (fastest); larger ones stream from the cache by row.
IN_MEMORY_BYTES = 512 * 2**20
MANIFEST_VERSION = 1


class ImageError(ValueError):
    """One image cannot be used; the message is the reason recorded in `skipped`."""


# --------------------------------------------------------------------------- decoding


def _check_image_size(image_size: Any) -> tuple[int, int]:
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in image_size)
    ):
        raise ValueError(
            "image_size must be a positive integer or a (height, width) pair of them. "
            f"Received: image_size={image_size!r}"
        )
    return int(image_size[0]), int(image_size[1])


def _jpeg_layout(data: bytes) -> tuple[int, int, int] | None:
    """(height, width, offset of the first scan) from a JPEG's markers, or None if unparsable.

    Walking the marker segments by their lengths skips APPn payloads, so the
    EXIF thumbnail (a whole JPEG with its own SOF, SOS and EOI inside APP1)
    is never mistaken for the image.
    """
    size, pos, n = None, 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers carry no length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and pos + 9 <= n:
            size = (int.from_bytes(data[pos + 5 : pos + 7], "big"),
                    int.from_bytes(data[pos + 7 : pos + 9], "big"))
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return (*size, pos) if size else None
        pos += 2 + length
    return None


def _truncation(data: bytes) -> str | None:
    """Why a file is cut short, or None. cv2 decodes a cut JPEG or PNG anyway (grey rest)."""
    if data[:2] == b"\xff\xd8":
        layout = _jpeg_layout(data)
        # Entropy-coded data never holds FF D9 (0xFF is stuffed as FF 00), so the
        # image is whole iff an EOI follows its first scan. Data after the EOI
        # (camera trailers) is allowed.
        if layout is None or data.rfind(b"\xff\xd9") < layout[2]:
            return "truncated (JPEG without its end-of-image marker)"
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in data[-1024:]:
            return "truncated (PNG without its IEND chunk)"
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        if len(data) < int.from_bytes(data[4:8], "little") + 8:
            return "truncated (WebP shorter than its RIFF size)"
    return None


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any `IMREAD_UNCHANGED` decode (gray, BGR, BGRA, gray+alpha, 16-bit, float) -> RGB uint8."""
    if image.dtype == np.uint16:
        # Scale the full 16-bit range to 8 bits (rounded); truncating to the low
        # byte would turn smooth gradients into noise.
        image = (image.astype(np.float32) * (255.0 / 65535.0) + 0.5).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = cv2.normalize(image.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX)
        image = image.astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels in (2, 4):
        # Composite on white: transparent areas of logos and scans are usually paper.
        color = image[:, :, :-1] if channels == 4 else image[:, :, :1]
        alpha = image[:, :, -1:].astype(np.float32) / 255.0
        blended = color.astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        image = (blended + 0.5).astype(np.uint8)
        if channels == 2:
            return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_BGR2RGB)


def _resize_to(image: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """Resizes to `target` (width, height): area-averaging when shrinking, bicubic when enlarging.

    A shrink by less than 2x (most photos after the JPEG DCT reduction, so
    the cold decode's main cost) is bilinear: its 2x2 footprint spans more
    than the input pixel spacing, so every input pixel still contributes and
    nothing aliases, and it is twice as fast as OpenCV's fractional
    INTER_AREA. Shrinks of 2x or more use INTER_AREA, which averages the
    whole footprint where bilinear would skip pixels.
    """
    w, h = image.shape[1], image.shape[0]
    tw, th = target
    if (tw, th) == (w, h):
        return image
    if tw >= w and th >= h:
        return cv2.resize(image, target, interpolation=cv2.INTER_CUBIC)
    if w < 2 * tw and h < 2 * th:
        return cv2.resize(image, target, interpolation=cv2.INTER_LINEAR)
    return cv2.resize(image, target, interpolation=cv2.INTER_AREA)


def resize_image(
    image: np.ndarray, image_size: tuple[int, int], resize: str = "stretch"
) -> np.ndarray:
    """Resizes an RGB image to `image_size` (height, width).

    `stretch` ignores the aspect ratio (what the seed posts do); `crop` keeps it
    and cuts the centre; `pad` keeps it and pads with black (letterbox).
    Shrinking uses area interpolation (no aliasing); enlarging uses bicubic.

    Args:
        image: `(h, w, 3)` uint8.
        image_size: `(height, width)` of the result.
        resize: `"stretch"`, `"crop"` or `"pad"`.

    Returns:
        A contiguous `(height, width, 3)` uint8 array.
    """
    height, width = image_size
    h, w = image.shape[:2]
    if resize == "crop":
        scale = max(height / h, width / w)
    elif resize == "pad":
        scale = min(height / h, width / w)
    else:
        scale = None
    if scale is None:
        target = (width, height)
    else:
        target = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = _resize_to(image, target)
    if resize == "crop":
        top = (out.shape[0] - height) // 2
        left = (out.shape[1] - width) // 2
        out = out[top : top + height, left : left + width]
    elif resize == "pad":
        canvas = np.zeros((height, width, 3), np.uint8)
        top = (height - out.shape[0]) // 2
        left = (width - out.shape[1]) // 2
        canvas[top : top + out.shape[0], left : left + out.shape[1]] = out
        out = canvas
    return np.ascontiguousarray(out)


#: JPEG decode flags for a DCT-domain reduction by 2, 4 or 8, straight to RGB.
_JPEG_REDUCED = {
    factor: (getattr(cv2, f"IMREAD_REDUCED_COLOR_{factor}") & ~cv2.IMREAD_COLOR)
    | cv2.IMREAD_COLOR_RGB
    for factor in (8, 4, 2)
}


def decode_image(
    data: bytes,
    image_size: int | tuple[int, int],
    resize: str = "stretch",
    min_size: int = 1,
) -> np.ndarray:
    """Decodes an encoded image (the bytes of a file) into RGB uint8 of `image_size`.

    JPEGs are decoded by libjpeg-turbo straight to RGB (grayscale and CMYK
    converted, EXIF orientation applied), and a JPEG at least twice the target
    size is decoded already reduced by 2, 4 or 8 in the DCT domain, which is
    several times faster on camera photos. Other formats are decoded unchanged
    and converted: 16-bit scaled to 8, alpha composited on white, palette and
    grayscale expanded.

    Args:
        data: the encoded bytes.
        image_size: `(height, width)` or one int for a square.
        resize: `"stretch"`, `"crop"` or `"pad"`.
        min_size: smallest usable side in pixels (of the original image).

    Returns:
        A `(height, width, 3)` uint8 array.

    Raises:
        ImageError: the data is empty, truncated, not a decodable image or too
            small; the message says which.
    """
    image_size = _check_image_size(image_size)
    if not data:
        raise ImageError("empty file (0 bytes)")
    reason = _truncation(data)
    if reason:
        raise ImageError(reason)
    buffer = np.frombuffer(data, np.uint8)
    original = None
    if data[:2] == b"\xff\xd8":
        layout = _jpeg_layout(data)
        flags = cv2.IMREAD_COLOR_RGB
        if layout is not None:
            original = layout[:2]
            # Reduce only while the result still covers the target in any
            # orientation, so the final resize always shrinks (INTER_AREA).
            room = min(original) / max(image_size)
            flags = next((f for k, f in _JPEG_REDUCED.items() if room >= k), flags)
        image = cv2.imdecode(buffer, flags)
    else:
        image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
        if image is not None and image.size:
            image = _to_rgb_uint8(image)
    if image is None or image.size == 0:
        raise ImageError("not a decodable image")
    height, width = original or image.shape[:2]
    if min(height, width) < min_size:
        raise ImageError(f"too small ({width}x{height} px; min_size={min_size})")
    return resize_image(image, image_size, resize)


def load_image(
    path: str | os.PathLike,
    image_size: int | tuple[int, int],
    resize: str = "stretch",
    min_size: int = 1,
) -> np.ndarray:
    """Decodes one image file into RGB uint8 of `image_size`, exactly as training saw it.

    Works on any path (non-ASCII names, spaces): the bytes are read in Python
    and decoded by `cv2.imdecode`, never by `cv2.imread`'s path handling.

    Args:
        path: the image file.
        image_size: `(height, width)` or one int for a square.
        resize: `"stretch"`, `"crop"` or `"pad"`.
        min_size: smallest usable side in pixels.

    Returns:
        A `(height, width, 3)` uint8 array.

    Raises:
        ImageError: the file is unreadable, empty, truncated, not a decodable
            image or too small; the message says which.

    Example:
        >>> load_image("pets/猫/咪咪.jpg", (128, 128)).shape
        (128, 128, 3)
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as err:
        raise ImageError(f"unreadable ({err.strerror or err})") from err
    return decode_image(data, image_size, resize, min_size)


# --------------------------------------------------------------------------- the data object


class ImageData:
    """Images split into train / val / test, shared by every trial of a search.

    Images are uint8 `(rows, height, width, 3)`, held in memory or in a `.npy`
    cache file; labels are int32 class indices, one per row. Each split is an
    array of row numbers, so K-fold views and manifests never copy images.
    Rows that no split lists (e.g. files skipped while decoding) are unused.

    Batches are gathered by row: only row numbers go through `tf.data`
    (shuffled, batched) and each batch's images are copied out of the array
    in one call. A cache file up to `IN_MEMORY_BYTES` is memory-mapped; a
    larger one is read with `pread` per batch, so a dataset larger than RAM
    streams with resident memory bounded by a few batches.

    Attributes:
        class_names: class names, index = label.
        image_size: `(height, width)`.
        resize: how images were resized (`stretch`, `crop` or `pad`).
        skipped: `[(path, reason), ...]` of files that could not be used.
        batch_size: batch size of `train`, `val` and `test`.
        seed: seed of the split and of shuffling.
        root: where the images came from.
        split: the split fractions, or `"given"` for a pre-split folder.
    """

    def __init__(
        self,
        images: np.ndarray | Path,
        labels: np.ndarray,
        files: Sequence[str],
        index: dict[str, np.ndarray],
        class_names: Sequence[str],
        image_size: tuple[int, int],
        resize: str = "stretch",
        batch_size: int = 32,
        seed: int = 0,
        root: str | None = None,
        skipped: Sequence[tuple[str, str]] = (),
        split: Any = None,
    ):
        self._images = images
        self._labels = np.asarray(labels, dtype=np.int32)
        self._files = list(files)
        self._index = {s: np.asarray(index.get(s, []), dtype=np.int64) for s in SPLITS}
        self.class_names = list(class_names)
        self.image_size = tuple(image_size)
        self.resize = resize
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.root = root
        self.skipped = list(skipped)
        self.split = split
        self._source = _open_rows(images)

    # ---------------------------------------------------------------- facts
    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """`(height, width, 3)`, the models' input shape."""
        return (*self.image_size, 3)

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class: `{"train": {"cat": 80, ...}, ...}`."""
        out = {}
        for split in SPLITS:
            per_class = np.bincount(self._labels[self._index[split]], minlength=self.num_classes)
            out[split] = {name: int(n) for name, n in zip(self.class_names, per_class, strict=True)}
        return out

    def labels(self, split: str) -> np.ndarray:
        """int32 labels of a split, in the order of `arrays(split)` and `split_files(split)`."""
        return self._labels[self._index[_check_split(split)]]

    def split_files(self, split: str) -> list[str]:
        """The files of a split (relative to `root`), in the order of `arrays(split)`."""
        return [self._files[i] for i in self._index[_check_split(split)]]

    # ---------------------------------------------------------------- access
    def _gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._source(rows), self._labels[rows]

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The whole split in memory, e.g. for `tuner.search(x, y, ...)`.

        Args:
            split: `"train"`, `"val"` or `"test"`.

        Returns:
            `(x, y)`: uint8 `(N, height, width, 3)` and int32 `(N,)`.
        """
        return self._gather(self._index[_check_split(split)])

    def dataset(self, split: str, batch_size: int | None = None, shuffle: bool | None = None,
                drop_remainder: bool | None = None):
        """A batched `tf.data.Dataset` of `(uint8 images, int32 labels)`.

        Row numbers are shuffled (train: seeded, reshuffled every epoch) and
        batched by `tf.data`; each batch of images is then copied out of the
        memory map (or read from the cache file) in one call. Nothing holds the
        whole split, and images stay uint8 until the model's Rescaling layer.

        Args:
            split: `"train"`, `"val"` or `"test"`.
            batch_size: defaults to `self.batch_size`.
            shuffle: defaults to True for `train`, False otherwise.
            drop_remainder: leave out the last, smaller batch of each pass.
                Defaults to True when shuffling a split of at least one batch
                (every image still takes part, as the order changes each
                epoch): training steps then all have one shape, which avoids
                a crash of TensorFlow's oneDNN CPU kernels (see
                `bench/ragged_batch.py`). Evaluation keeps every image.

        Returns:
            A `tf.data.Dataset` yielding `(images, labels)` batches.

        Raises:
            ValueError: unknown split or a non-positive batch size.
        """
        import tensorflow as tf

        rows = self._index[_check_split(split)]
        batch_size = self.batch_size if batch_size is None else batch_size
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer. Received: {batch_size!r}")
        shuffle = split == "train" if shuffle is None else shuffle
        if drop_remainder is None:
            drop_remainder = shuffle and len(rows) >= batch_size
        height, width = self.image_size

        ds = tf.data.Dataset.from_tensor_slices(rows)
        if shuffle:
            ds = ds.shuffle(max(1, len(rows)), seed=self.seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size, drop_remainder=bool(drop_remainder))

        def read(batch_rows):
            images, labels = tf.numpy_function(self._gather, [batch_rows], [tf.uint8, tf.int32])
            images.set_shape((None, height, width, 3))
            labels.set_shape((None,))
            return images, labels

        ds = ds.map(read, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    @property
    def train(self):
        """`dataset("train")`: shuffled batches of `batch_size`."""
        return self.dataset("train")

    @property
    def val(self):
        """`dataset("val")`: batches of `batch_size` in file order."""
        return self.dataset("val")

    @property
    def test(self):
        """`dataset("test")`: batches of `batch_size` in file order."""
        return self.dataset("test")

    def class_weights(self) -> dict[int, float]:
        """scikit-learn's "balanced" weights from the training labels, for `fit(class_weight=)`.

        Returns:
            `{label: n_train / (num_classes * n_train_of_label)}`; 1.0 for a
            class absent from train.
        """
        from sklearn.utils.class_weight import compute_class_weight

        y = self.labels("train")
        present = np.unique(y)
        weights = compute_class_weight("balanced", classes=present, y=y)
        out = dict.fromkeys(range(self.num_classes), 1.0)
        out.update({int(c): float(w) for c, w in zip(present, weights, strict=True)})
        return out

    def folds(self, k: int = 5) -> Iterator[ImageData]:
        """Stratified K-fold over train + val; the test split stays untouched.

        Args:
            k: number of folds, from 2 to the smallest class's train+val count.

        Yields:
            `ImageData` views (no image copies) whose `train`/`val` are the
            folds and whose `test` is this object's test split, e.g.
            `for fold in data.folds(5): tuner.search(fold.train, ...)`.

        Raises:
            ValueError: `k` is not an integer in range.
        """
        from sklearn.model_selection import StratifiedKFold

        pool = np.concatenate([self._index["train"], self._index["val"]])
        smallest = int(np.bincount(self._labels[pool], minlength=self.num_classes).min())
        if not isinstance(k, int) or isinstance(k, bool) or k < 2 or k > smallest:
            raise ValueError(
                f"folds needs an integer k from 2 to {smallest} (the smallest class has "
                f"{smallest} train+val images). Received: k={k!r}"
            )
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=self.seed)
        for train_pos, val_pos in splitter.split(pool, self._labels[pool]):
            index = {"train": np.sort(pool[train_pos]), "val": np.sort(pool[val_pos]),
                     "test": self._index["test"]}
            yield self._with_index(index)

    def _with_index(self, index: dict[str, np.ndarray]) -> ImageData:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._index = {s: np.asarray(index[s], dtype=np.int64) for s in SPLITS}
        return clone

    # ---------------------------------------------------------------- manifest
    def manifest(self) -> dict[str, Any]:
        """Which file is in which split, with the settings that made it (JSON-ready)."""
        return {
            "version": MANIFEST_VERSION,
            "root": self.root,
            "class_names": self.class_names,
            "image_size": list(self.image_size),
            "resize": self.resize,
            "min_size": getattr(self, "min_size", 1),
            "seed": self.seed,
            "split": list(self.split) if isinstance(self.split, tuple) else self.split,
            "files": {
                s: [[self._files[i], self.class_names[self._labels[i]]] for i in self._index[s]]
                for s in SPLITS
            },
        }

    def write_manifest(self, path: str | os.PathLike) -> Path:
        """Writes `manifest()` as JSON, atomically, so a run and its export share one split.

        Args:
            path: the JSON file to write (parent folders are created).

        Returns:
            The path written.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.manifest(), indent=1, ensure_ascii=False), "utf-8")
        os.replace(tmp, path)
        return path

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(self._index[s])}" for s in SPLITS)
        return (
            f"{type(self).__name__}(root={self.root!r}, classes={self.num_classes}, {sizes}, "
            f"image_size={self.image_size}, skipped={len(self.skipped)})"
        )


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}. Received: split={split!r}")
    return split


def _open_rows(images: np.ndarray | Path):
    """A function `rows -> uint8 images` over an array or a `.npy` cache file."""
    if not isinstance(images, (str, os.PathLike)):
        return functools.partial(_take, images)
    path = Path(images)
    if path.stat().st_size <= IN_MEMORY_BYTES:
        # Small: map it. Pages come from the OS page cache, shared by every
        # process (trials, distributed workers) reading the same cache.
        return functools.partial(_take, np.load(path, mmap_mode="r"))
    return _RowReader(path)


def _take(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A copy of `array[rows]`; one block copy when the rows are consecutive (val, test)."""
    rows = np.asarray(rows)
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):
        # A copy, never a view: TF may reuse a tensor's buffer in place, and a
        # read-only memory map must not be written to.
        return np.array(array[rows[0] : rows[-1] + 1])
    return np.take(array, rows, axis=0)


class _RowReader:
    """Reads rows of a `.npy` file with `pread`.

    Used for caches larger than `IN_MEMORY_BYTES`: pages touched through a
    memory map count as this process's resident memory until the kernel
    reclaims them, so one epoch over a mapped 50 GB cache would show 50 GB of
    RSS. `pread` copies only the rows asked for; the page cache stays the
    kernel's. Runs of consecutive rows are read in one call.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        header = np.load(self.path, mmap_mode="r")  # only to read shape, dtype and offset
        self.shape, self.dtype, self.offset = header.shape, header.dtype, header.offset
        del header
        self.row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self._fd: int | None = None
        self._lock = threading.Lock()

    def _descriptor(self) -> int:
        with self._lock:  # tf.data calls in parallel; open once
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
            return self._fd

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        fd = self._descriptor()
        rows = np.asarray(rows, dtype=np.int64)
        # Read in file order (kinder to disks, and consecutive rows coalesce),
        # then put the rows back in the order asked for.
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        flat = out.reshape(len(rows), -1).view(np.uint8)
        start = 0
        while start < len(rows):
            stop = start + 1
            while stop < len(rows) and rows[stop] == rows[stop - 1] + 1:
                stop += 1
            offset = self.offset + int(rows[start]) * self.row_bytes
            want = (stop - start) * self.row_bytes
            chunk = os.preadv(fd, [memoryview(flat[start:stop]).cast("B")], offset)
            if chunk != want:
                raise OSError(f"Short read from the image cache {self.path}; delete it to rebuild.")
            start = stop
        if np.any(order[1:] < order[:-1]):
            unsorted = np.empty_like(out)
            unsorted[order] = out
            out = unsorted
        return out

    def __getstate__(self):  # picklable for subprocesses: reopen there
        return {k: v for k, v in self.__dict__.items() if k not in ("_fd", "_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state, _fd=None, _lock=threading.Lock())

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass


# --------------------------------------------------------------------------- folders


def default_cache_dir() -> Path:
    """`$RESNET_TUNER_CACHE`, else `~/.cache/resnet_tuner`."""
    env = os.environ.get("RESNET_TUNER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "resnet_tuner"


def _is_hidden(name: str) -> bool:
    # ".DS_Store", "._photo.jpg" (macOS resource forks), ".git", Windows' thumbnails.
    return name.startswith(".") or name in ("Thumbs.db", "desktop.ini", "__MACOSX")


#: A file to decode: (path, size in bytes, mtime in ns, label, given split or None).
_Candidate = tuple[str, int, int, int, "str | None"]


def _scan_class_dirs(folder: Path) -> list[Path]:
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if e.is_dir() and not _is_hidden(e.name))


def _scan_files(class_dir: Path, skipped: list) -> list[tuple[str, int, int]]:
    """Image files under `class_dir` (recursively, sorted), with size and mtime for the cache key.

    `os.scandir` instead of `Path.rglob`: warm loads scan the whole folder to
    compute the cache key, so the scan is on the hot path of every run.
    """
    files = []
    with os.scandir(class_dir) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if _is_hidden(entry.name):
                skipped.append((entry.path, "hidden file"))
            elif entry.is_dir():
                files += _scan_files(Path(entry.path), skipped)
            elif os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
                suffix = os.path.splitext(entry.name)[1] or "none"
                skipped.append((entry.path, f"not an image file extension ({suffix})"))
            else:
                try:
                    stat = entry.stat()
                except OSError as err:  # e.g. a dangling symlink
                    skipped.append((entry.path, f"unreadable ({err.strerror or err})"))
                    continue
                files.append((entry.path, stat.st_size, stat.st_mtime_ns))
    return files


def _detect_presplit(root: Path) -> dict[str, Path] | None:
    """`train/` plus `val/` or `validation/` and/or `test/` -> the split folders found."""
    with os.scandir(root) as entries:
        names = {e.name.lower(): Path(e.path) for e in entries if e.is_dir()}
    if "train" not in names:
        return None
    found = {"train": names["train"]}
    val = next((names[n] for n in VAL_DIR_NAMES if n in names), None)
    if val is not None:
        found["val"] = val
    if "test" in names:
        found["test"] = names["test"]
    return found if len(found) > 1 else None


class ImageFolder(ImageData):
    """A folder of images, one subfolder per class, as stratified splits.

    Every image is decoded once (in parallel, with OpenCV) into RGB uint8 at
    `image_size` and cached on disk as a `.npy` keyed by the files' paths,
    sizes and modification times plus the decode settings; every trial, and
    every later run on the unchanged folder, reads the cache instead.

    Args:
        root: the folder. Either `root/<class>/<images>` (split here,
            stratified), or `root/train/`, `root/val/` (or `validation/`),
            `root/test/` each with the same class subfolders (used as given;
            if only one of val/test exists, the other is split off train,
            stratified, with the `split` fractions).
        image_size: `(height, width)` every image is resized to, or one int.
        split: `(train, val, test)` fractions, each > 0, summing to 1.
        seed: seed of the split and of shuffling.
        cache_dir: where decoded images are cached (`None`: the default,
            `$RESNET_TUNER_CACHE` or `~/.cache/resnet_tuner`; `False`: no disk
            cache, images held in memory).
        resize: `"stretch"` (default, like the seed posts), `"crop"` (keep the
            aspect ratio, cut the centre) or `"pad"` (keep it, pad with black).
        batch_size: batch size of `train`, `val` and `test`.
        min_size: images with a side under this many pixels are skipped.
        manifest: a manifest (path or dict) written by `write_manifest`; the
            same files go to the same splits (the folder must still hold them).
        verbose: 1 shows a progress line (with images/s) while decoding.

    Raises:
        FileNotFoundError: `root` (or a manifest's file) does not exist.
        ValueError: fewer than two classes, an empty class, a class missing
            from a split, a class too small to split, or bad arguments.

    Example:
        >>> data = ImageFolder("pets/", image_size=(128, 128), split=(0.8, 0.1, 0.1))
        >>> data.counts["test"]
        {'cat': 10, 'dog': 10}
        >>> x, y = data.arrays("train")
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int | tuple[int, int] = (128, 128),
        split: Sequence[float] = (0.8, 0.1, 0.1),
        seed: int = 0,
        cache_dir: str | os.PathLike | None | bool = None,
        resize: str = "stretch",
        batch_size: int = 32,
        min_size: int = 8,
        manifest: str | os.PathLike | dict | None = None,
        verbose: int = 1,
    ):
        image_size = _check_image_size(image_size)
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}. Received: resize={resize!r}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer. Received: {batch_size!r}")
        if not isinstance(min_size, int) or min_size < 1:
            raise ValueError(f"min_size must be a positive integer. Received: {min_size!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an integer. Received: seed={seed!r}")
        root_path = Path(root).expanduser()
        if not root_path.exists():
            raise FileNotFoundError(f"Image folder not found: {root_path}")
        if not root_path.is_dir():
            raise NotADirectoryError(
                f"Expected a folder of class subfolders, got a file: {root_path}"
            )
        root_path = root_path.resolve()
        skipped: list[tuple[str, str]] = []

        if manifest is not None:
            plan = _plan_from_manifest(root_path, manifest)
            split_spec: Any = plan["split"]
        else:
            fractions = _check_split_fractions(split)
            plan = _plan_from_folder(root_path, skipped)
            split_spec = plan["split"] or fractions

        class_names: list[str] = plan["class_names"]
        candidates: list[_Candidate] = plan["files"]
        images, kept, decode_skipped = _decode_all(
            candidates, image_size, resize, min_size, cache_dir, verbose
        )
        skipped.extend(decode_skipped)
        if manifest is not None and decode_skipped:
            path, reason = decode_skipped[0]
            raise ValueError(
                f"{len(decode_skipped)} file(s) the manifest lists can no longer be used, e.g. "
                f"{path}: {reason}. The manifest's splits cannot be rebuilt; start a new run."
            )
        labels = np.array([c[3] for c in candidates], dtype=np.int32)
        files = [os.path.relpath(c[0], root_path) for c in candidates]
        kept_rows = np.asarray(kept, dtype=np.int64)
        _check_classes(class_names, labels[kept_rows], plan)

        if manifest is None and plan["split"] is None:
            local = _stratified_split(labels[kept_rows], fractions, seed, class_names, root_path)
            index = {s: kept_rows[local[s]] for s in SPLITS}
        else:
            given = np.array([candidates[r][4] for r in kept_rows], dtype=object)
            index = {s: kept_rows[given == s] for s in SPLITS}
            missing_split = [s for s in ("val", "test") if s not in plan["split_dirs"]]
            if missing_split:
                index = _split_off(index, missing_split[0], labels, fractions, seed,
                                   class_names, plan["split_dirs"]["train"])
            for s in SPLITS:
                absent = sorted(set(range(len(class_names))) - set(labels[index[s]].tolist()))
                if absent:
                    raise ValueError(
                        f"Class(es) {[class_names[c] for c in absent]} have no usable images in "
                        f"the {s!r} split of {root_path}; every class needs images in train, "
                        "val and test."
                    )

        super().__init__(
            images=images, labels=labels, files=files, index=index, class_names=class_names,
            image_size=image_size, resize=resize, batch_size=batch_size, seed=seed,
            root=str(root_path), skipped=skipped, split=split_spec,
        )
        self.min_size = min_size
        if skipped:
            reasons = Counter(reason.split(" (")[0] for _, reason in skipped)
            summary = ", ".join(f"{n} {r}" for r, n in reasons.most_common())
            warnings.warn(
                f"Skipped {len(skipped)} file(s) in {root_path}: {summary}. "
                "See data.skipped for each path and reason.",
                stacklevel=2,
            )

    @classmethod
    def from_manifest(cls, path: str | os.PathLike, **kwargs: Any) -> ImageFolder:
        """Loads the very same splits a manifest describes (root, classes, files, size).

        Args:
            path: a JSON file written by `write_manifest`.
            **kwargs: `ImageFolder` arguments; `root` overrides the manifest's
                (e.g. the folder moved), others default to the manifest's.

        Returns:
            An `ImageFolder` whose splits list exactly the manifest's files.

        Raises:
            FileNotFoundError: the manifest or one of its files is missing.
        """
        manifest = json.loads(Path(path).read_text("utf-8"))
        kwargs.setdefault("image_size", tuple(manifest["image_size"]))
        kwargs.setdefault("resize", manifest.get("resize", "stretch"))
        kwargs.setdefault("seed", manifest.get("seed", 0))
        kwargs.setdefault("min_size", manifest.get("min_size", 1))
        root = kwargs.pop("root", manifest["root"])
        return cls(root, manifest=manifest, **kwargs)


def _check_split_fractions(split: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(split) if isinstance(split, (tuple, list)) else ()
    if len(values) != 3 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values
    ):
        raise ValueError(
            "split must be three positive fractions (train, val, test). "
            f"Received: split={split!r}"
        )
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(
            f"split fractions must sum to 1. Received: split={split!r} (sum {sum(values):g})"
        )
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def _plan_from_folder(root: Path, skipped: list) -> dict[str, Any]:
    presplit = _detect_presplit(root)
    files: list[_Candidate] = []
    if presplit:
        class_sets = {s: [p.name for p in _scan_class_dirs(d)] for s, d in presplit.items()}
        class_names = sorted(set().union(*class_sets.values()))
        for s, names in class_sets.items():
            missing = sorted(set(class_names) - set(names))
            if missing:
                raise ValueError(
                    f"Class folder(s) {missing} are missing from the {s!r} split "
                    f"({presplit[s]}); train, val and test need the same classes."
                )
        for s, folder in presplit.items():
            for label, name in enumerate(class_names):
                files += [(*f, label, s) for f in _scan_files(folder / name, skipped)]
        class_dirs = {n: [presplit[s] / n for s in presplit] for n in class_names}
    else:
        dirs = _scan_class_dirs(root)
        with os.scandir(root) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_file() and not _is_hidden(entry.name):
                    skipped.append((entry.path, "not in a class folder"))
        class_names = [d.name for d in dirs]
        for label, d in enumerate(dirs):
            files += [(*f, label, None) for f in _scan_files(d, skipped)]
        class_dirs = {d.name: [d] for d in dirs}
    if len(class_names) < 2:
        found = f"only {class_names[0]!r}" if class_names else "none"
        raise ValueError(
            f"{root} needs at least two class subfolders (root/<class>/<images>, or "
            f"train/ val/ test/ each with class subfolders); found {found}."
        )
    return {"class_names": class_names, "files": files, "class_dirs": class_dirs,
            "split_dirs": presplit or {}, "split": "given" if presplit else None}


def _plan_from_manifest(root: Path, manifest: str | os.PathLike | dict) -> dict[str, Any]:
    if not isinstance(manifest, dict):
        manifest = json.loads(Path(manifest).read_text("utf-8"))
    class_names = list(manifest["class_names"])
    lookup = {name: i for i, name in enumerate(class_names)}
    files: list[_Candidate] = []
    for s in SPLITS:
        for rel, name in manifest["files"][s]:
            path = root / rel
            try:
                stat = path.stat()
            except OSError:
                stat = None
            if stat is None or not path.is_file():
                raise FileNotFoundError(
                    f"The manifest lists {rel!r} ({s} split) but {path} does not exist; the "
                    "folder changed since the manifest was written. Start a new run."
                )
            files.append((str(path), stat.st_size, stat.st_mtime_ns, lookup[name], s))
    split = manifest.get("split")
    return {"class_names": class_names, "files": files, "split": split,
            "class_dirs": {n: [root] for n in class_names},
            "split_dirs": dict.fromkeys(SPLITS, root)}


def _check_classes(class_names, kept_labels: np.ndarray, plan) -> None:
    counts = np.bincount(kept_labels, minlength=len(class_names))
    empty = [n for n, count in zip(class_names, counts, strict=True) if count == 0]
    if empty:
        where = ", ".join(str(p) for n in empty for p in plan["class_dirs"][n])
        raise ValueError(f"Class folder(s) {empty} contain no usable images ({where}).")


def _per_class(labels: np.ndarray, class_names) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(class_names))
    return {name: int(n) for name, n in zip(class_names, counts, strict=True)}


def _stratified_split(labels, fractions, seed, class_names, root) -> dict[str, np.ndarray]:
    """scikit-learn's stratified split of positions 0..n-1: test first, then val from the rest."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    counts = _per_class(labels, class_names)
    train_f, val_f, test_f = fractions
    # Each class needs one image in every split: at least 3, and enough that
    # its smallest fraction rounds to one image.
    need = max(3, round(1.0 / min(fractions)))
    small = {name: n for name, n in counts.items() if n < need}
    if small:
        raise ValueError(
            f"Class(es) with too few images to split {fractions} stratified in {root}: "
            f"{small}; each class needs at least {need} usable images. Add images or change "
            "split (e.g. (0.6, 0.2, 0.2))."
        )
    rows = np.arange(len(labels))
    try:
        rest, test = train_test_split(rows, test_size=test_f, stratify=labels, random_state=seed)
        train, val = train_test_split(
            rest, test_size=val_f / (train_f + val_f), stratify=labels[rest], random_state=seed
        )
    except ValueError as err:
        raise ValueError(
            f"Cannot split {root} stratified with split={fractions}: {err}. "
            f"Images per class: {counts}"
        ) from err
    index = {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
    for split, rows_of_split in index.items():
        missing = sorted(set(np.flatnonzero(np.bincount(labels))) - set(labels[rows_of_split]))
        if missing:
            raise ValueError(
                f"Splitting {root} with split={fractions} leaves class(es) "
                f"{[class_names[c] for c in missing]} out of the {split!r} split; each class "
                f"needs about {need} or more usable images. Images per class: {counts}"
            )
    return index


def _split_off(index, name, labels, fractions, seed, class_names, train_dir) -> dict:
    """Splits the missing `val` or `test` off a pre-split folder's train images, stratified."""
    from sklearn.model_selection import train_test_split

    train_rows = index["train"]
    train_f = fractions[0]
    part_f = fractions[SPLITS.index(name)]
    counts = _per_class(labels[train_rows], class_names)
    try:
        kept, part = train_test_split(train_rows, test_size=part_f / (train_f + part_f),
                                      stratify=labels[train_rows], random_state=seed)
    except ValueError as err:
        raise ValueError(
            f"{train_dir.parent} has no {name}/ folder, and its train/ images cannot be split "
            f"into train and {name} stratified ({err}). Train images per class: {counts}. Add "
            f"a {name}/ folder or more images."
        ) from err
    return {**index, "train": np.sort(kept), name: np.sort(part)}


# --------------------------------------------------------------------------- decode once, cache


def _cache_key(candidates: list[_Candidate], image_size, resize: str, min_size: int) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_VERSION, list(image_size), resize, min_size]).encode())
    for path, size, mtime_ns, *_ in candidates:
        digest.update(f"{path}\0{size}\0{mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _decode_all(candidates, image_size, resize, min_size, cache_dir, verbose):
    """Decodes every candidate once; returns (images array or cache Path, kept rows, skipped).

    Row `i` of the images holds candidate `i`; rows of skipped files stay zero
    and are never listed by a split. Images are written straight to their row
    (the cache file with `pwrite`), so a cold decode of a folder larger than
    RAM does not hold it in memory either.
    """
    paths = [c[0] for c in candidates]
    height, width = image_size
    shape = (len(paths), height, width, 3)
    if cache_dir is False:
        array = np.zeros(shape, np.uint8)

        def store(i, image):
            array[i] = image

        kept, skipped = _decode_into(paths, image_size, resize, min_size, store, verbose)
        return array, kept, skipped

    folder = Path(cache_dir).expanduser() if cache_dir not in (None, True) else default_cache_dir()
    entry = folder / f"images-{_cache_key(candidates, image_size, resize, min_size)}"
    meta_path = entry / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text("utf-8"))
        return entry / "images.npy", meta["kept"], [tuple(s) for s in meta["skipped"]]

    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=folder))
    try:
        header = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, shape)
        offset, row_bytes = header.offset, height * width * 3
        del header  # a sparse file of the right size; rows are written below
        fd = os.open(tmp / "images.npy", os.O_WRONLY)
        try:

            def store(i, image):
                os.pwrite(fd, memoryview(image).cast("B"), offset + i * row_bytes)

            kept, skipped = _decode_into(paths, image_size, resize, min_size, store, verbose)
        finally:
            os.close(fd)
        meta = {"version": CACHE_VERSION, "files": len(paths), "kept": kept, "skipped": skipped}
        (tmp / "meta.json").write_text(json.dumps(meta, ensure_ascii=False), "utf-8")
        try:
            os.replace(tmp, entry)  # atomic: readers see a complete cache or none
        except OSError:
            if not meta_path.is_file():  # not a concurrent writer's finished copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry / "images.npy", kept, skipped


def _decode_into(paths, image_size, resize, min_size, store, verbose):
    """Decodes `paths` in parallel threads (cv2 releases the GIL), calling `store(i, image)`."""
    reasons: list[str | None] = [None] * len(paths)
    progress = _Progress(len(paths), enabled=bool(verbose))

    def work(i: int) -> None:
        try:
            store(i, load_image(paths[i], image_size, resize, min_size))
        except ImageError as err:
            reasons[i] = str(err)

    # cv2's own thread pool would compete with ours for the same cores.
    cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            # Bounded windows of work: a million files must not mean a million futures.
            for start in range(0, len(paths), 1024):
                for _ in pool.map(work, range(start, min(len(paths), start + 1024))):
                    progress.update()
    finally:
        cv2.setNumThreads(cv2_threads)
        progress.close()
    kept = [i for i, reason in enumerate(reasons) if reason is None]
    skipped = [(paths[i], reason) for i, reason in enumerate(reasons) if reason is not None]
    return kept, skipped


class _Progress:
    """One stderr line updated in place: count, total and images/s."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled and total > 0
        self.start = time.perf_counter()
        self.last = 0.0

    def update(self) -> None:
        self.done += 1
        now = time.perf_counter()
        if self.enabled and (now - self.last > 0.2 or self.done == self.total):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            sys.stderr.write(
                f"\rdecoding images {self.done}/{self.total} ({rate:,.0f} images/s)"
            )
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            sys.stderr.write("\n")
            sys.stderr.flush()
