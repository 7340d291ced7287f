"""Fashion-MNIST from its four idx files: `fashion_mnist()`, `read_idx`.

Zalando's Fashion-MNIST (70,000 real 28x28 grayscale images, 10 classes) as
an `ImageData`: its official 10,000 test images are the test split, val is
stratified from the 60,000 training images. The idx files come from `path=`,
`$RESNET_TUNER_FASHION_MNIST`, Debian's `dataset-fashion-mnist` package,
Keras' cache, or as a last resort a download through
`keras.datasets.fashion_mnist.load_data()`; otherwise an error lists these ways.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resnet_tuner.data.decode import _resize_to, check_image_size
from resnet_tuner.data.images import ImageData
from resnet_tuner.data.splits import stratified_split

# ----------------------------------------------------------------- idx files

#: idx type byte -> NumPy dtype (big-endian, as the format stores them).
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an idx file (the MNIST format), gzip-compressed or plain.

    The header is two zero bytes, a type byte (`IDX_DTYPES`), the number of
    dimensions and each dimension as a big-endian uint32; the values follow,
    big-endian. A gzip file is recognised by its first bytes, whatever its
    name. Decoded arrays are kept in memory per process, keyed by the file's
    path, size and modification time (loading 60,000 gzipped images takes
    about a second), so they are returned read-only.

    Args:
        path: the file.

    Returns:
        A read-only array of the header's shape, in native byte order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file: not gzip-readable, a bad magic number,
            truncated, or more bytes than the header's dimensions hold.
    """
    path = Path(path).expanduser().resolve()
    stat = path.stat()
    return _read_idx(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_idx(path: str, size: int, mtime_ns: int) -> np.ndarray:
    del size, mtime_ns  # cache key only: a changed file is read again
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as err:
            raise ValueError(f"{path} is a damaged or truncated gzip file ({err}).") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in IDX_DTYPES or raw[3] == 0:
        raise ValueError(
            f"{path} is not an idx file: its magic number is {raw[:4].hex(' ') or 'missing'} "
            "(expected 00 00, a type byte "
            f"{'/'.join(f'{c:02x}' for c in IDX_DTYPES)}, and the number of dimensions)."
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated: its header announces {ndim} dimensions but "
                         f"the file ends after {len(raw)} bytes.")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    count = math.prod(dims)
    expected, held = count * dtype.itemsize, len(raw) - header
    if held != expected:
        what = "is truncated" if held < expected else "has a size mismatch"
        raise ValueError(
            f"{path} {what}: its header says {' x '.join(map(str, dims))} values of "
            f"{dtype.name} ({expected} bytes) but {held} bytes follow the header."
        )
    array = np.frombuffer(raw, dtype, count=count, offset=header).reshape(dims)
    if dtype.byteorder not in ("=", "|") and dtype.itemsize > 1:
        array = array.astype(dtype.newbyteorder("="))
    array.flags.writeable = False
    return array


# ----------------------------------------------------------------- Fashion-MNIST

#: Fashion-MNIST's classes, index = label (zalandoresearch/fashion-mnist README).
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
#: The four idx files, without `.gz`: (train images, train labels, test images, test labels).
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
#: A folder holding the four files, looked in after `path=`.
FASHION_MNIST_ENV = "RESNET_TUNER_FASHION_MNIST"
#: Where Debian's `dataset-fashion-mnist` package installs them.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
KERAS_SOURCE = "keras.datasets.fashion_mnist.load_data()"


def _idx_files(folder: Path) -> tuple[list[Path], list[str]]:
    """`(found paths, missing names)` of the four files in `folder`, `.gz` or not.

    Also accepts the `train-images.idx3-ubyte` spelling some unpacked copies use.
    """
    found, missing = [], []
    for name in FASHION_MNIST_FILES:
        dotted = name.replace("-idx", ".idx")
        candidates = [folder / n for n in (name + ".gz", name, dotted + ".gz", dotted)]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            missing.append(name + "[.gz]")
        else:
            found.append(hit)
    return found, missing


def keras_cache_dirs() -> list[Path]:
    """Where `keras.datasets.fashion_mnist.load_data()` keeps its download.

    `$KERAS_HOME/datasets/fashion-mnist` (default `~/.keras/...`), and Keras'
    fallback `/tmp/.keras/...` for a home it cannot write to. Found without
    importing Keras (and so TensorFlow).
    """
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    temp = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
    dirs = [Path(home), Path(temp) / ".keras"]
    return [d / "datasets" / "fashion-mnist" for d in dict.fromkeys(dirs)]


def _ways(failed: Sequence[str]) -> str:
    tried = "".join(f"\n  - {f}" for f in failed)
    return (
        f"Fashion-MNIST's four idx files ({', '.join(n + '.gz' for n in FASHION_MNIST_FILES)}) "
        f"were not found. Tried:{tried}\n"
        "Get them one of three ways:\n"
        "  1. sudo apt-get install dataset-fashion-mnist (Debian/Ubuntu; installs them in "
        f"{DEBIAN_FASHION_MNIST});\n"
        "  2. put the four files (.gz or unpacked) in a folder and pass "
        f"fashion_mnist(path=FOLDER), or set {FASHION_MNIST_ENV}=FOLDER;\n"
        f"  3. go online once so that {KERAS_SOURCE} downloads them (into "
        f"{keras_cache_dirs()[0]})."
    )


def _check_pair(images: np.ndarray, labels: np.ndarray, images_name: str,
                labels_name: str) -> None:
    """Images `(N, 28, 28)` uint8 and as many uint8 labels below 10; ValueError naming the files."""
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{images_name} does not hold Fashion-MNIST images: expected "
                         f"(N, 28, 28) uint8, found {images.shape} {images.dtype}.")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{labels_name} does not hold Fashion-MNIST labels: expected (N,) "
                         f"uint8, found {labels.shape} {labels.dtype}.")
    if len(labels) != len(images):
        raise ValueError(f"{labels_name} holds {len(labels)} labels but {images_name} holds "
                         f"{len(images)} images; they must be counted alike.")
    if len(labels) and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        bad = int(np.flatnonzero(labels >= len(FASHION_MNIST_CLASSES))[0])
        raise ValueError(f"{labels_name}: label {int(labels[bad])} (at index {bad}) is out of "
                         f"range; Fashion-MNIST has labels 0..{len(FASHION_MNIST_CLASSES) - 1}.")


def _read_folder(folder: Path) -> tuple[np.ndarray, ...]:
    files, _ = _idx_files(folder)
    arrays = [read_idx(f) for f in files]
    _check_pair(arrays[0], arrays[1], str(files[0]), str(files[1]))
    _check_pair(arrays[2], arrays[3], str(files[2]), str(files[3]))
    return tuple(arrays)


def _keras_download() -> tuple[np.ndarray, ...]:
    from keras.datasets import fashion_mnist as keras_fashion_mnist

    (x_train, y_train), (x_test, y_test) = keras_fashion_mnist.load_data()
    return x_train, y_train, x_test, y_test


def load_fashion_mnist_arrays(path: str | os.PathLike | None = None) -> tuple[tuple, str]:
    """`((x_train, y_train, x_test, y_test), source)`: the official arrays and where they came from.

    Looks in this order: `path`, `$RESNET_TUNER_FASHION_MNIST`, Debian's
    folder, Keras' cache, then downloads with `keras.datasets`. A folder
    given by `path` or the variable must hold the files (no other source is
    tried behind its back).

    Raises:
        FileNotFoundError: no source has them (each tried source and the three
            ways to get them are named).
        ValueError: a file is not what it should be (named).
    """
    failed = []
    given = [(path, "path="), (os.environ.get(FASHION_MNIST_ENV) or None, f"${FASHION_MNIST_ENV}")]
    for folder, how in given:
        if folder is None:
            continue
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(_ways([f"{how} {folder}: not a folder"]))
        _, missing = _idx_files(folder)
        if missing:
            raise FileNotFoundError(_ways([f"{how} {folder}: no {', '.join(missing)}"]))
        return _read_folder(folder), str(folder)
    for folder, how in [(DEBIAN_FASHION_MNIST, "Debian's dataset-fashion-mnist"),
                        *((d, "Keras' cache") for d in keras_cache_dirs())]:
        _, missing = _idx_files(folder)
        if not missing:
            return _read_folder(folder), str(folder)
        failed.append(f"{how} {folder}: " + ("no such folder" if not folder.is_dir()
                                               else f"no {', '.join(missing)}"))
    try:
        arrays = _keras_download()
    except Exception as err:  # offline, no Keras, a damaged download: say it, with the rest
        failed.append(f"{KERAS_SOURCE}: {type(err).__name__}: {err}")
        raise FileNotFoundError(_ways(failed)) from err
    _check_pair(arrays[0], arrays[1], f"{KERAS_SOURCE} x_train", f"{KERAS_SOURCE} y_train")
    _check_pair(arrays[2], arrays[3], f"{KERAS_SOURCE} x_test", f"{KERAS_SOURCE} y_test")
    return arrays, "keras.datasets.fashion_mnist"


def _check_classes_argument(classes: Any) -> list[int]:
    """`classes=` as class indices: at least two different indices (or names), in order."""
    names = FASHION_MNIST_CLASSES
    if classes is None:
        return list(range(len(names)))
    out: list[int] = []
    if isinstance(classes, (Sequence, np.ndarray)) and not isinstance(classes, (str, bytes)):
        for c in classes:
            if isinstance(c, str) and c in names:
                out.append(names.index(c))
            elif isinstance(c, (int, np.integer)) and not isinstance(c, bool) and (
                0 <= c < len(names)
            ):
                out.append(int(c))
            else:
                out = []
                break
    if len(out) < 2 or len(set(out)) != len(out):
        raise ValueError(
            "classes must be a sequence of at least two different Fashion-MNIST class indices "
            f"0..{len(names) - 1} (or names: {', '.join(names)}), e.g. [5, 6, 7, 8, 9]. "
            f"Received: classes={classes!r}"
        )
    return out


def _check_int(name: str, value: Any, minimum: int | None) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or (
        minimum is not None and value < minimum
    ):
        kind = "an integer" if minimum is None else (
            "a positive integer" if minimum == 1 else f"an integer >= {minimum}")
        raise ValueError(f"{name} must be {kind}. Received: {name}={value!r}")


def fashion_mnist(
    image_size: int | tuple[int, int] = (28, 28),
    val_fraction: float = 0.1,
    seed: int = 0,
    batch_size: int = 32,
    classes: Sequence[int | str] | None = None,
    train_per_class: int | None = None,
    path: str | os.PathLike | None = None,
) -> ImageData:
    """Fashion-MNIST as RGB uint8 images: the official test split, val stratified from train.

    The 10,000 official test images (`t10k-*`) are the `test` split (a search
    never sees them); `val` is a stratified `val_fraction` of the 60,000
    training images (by default 6,000, leaving 54,000 to train on). The 28x28
    grayscale images are repeated over three channels and, when `image_size`
    is not 28x28, resized with `ImageFolder`'s interpolation ("stretch": area
    or bilinear to shrink, bicubic to enlarge; one channel resized, so bicubic
    may differ by one grey level from a folder of the same images as PNGs).
    All images are held in memory: 165 MB at 28x28, 860 MB at 64x64.

    The idx files come from the first of: `path`, the folder in
    `$RESNET_TUNER_FASHION_MNIST`, Debian's `dataset-fashion-mnist` package
    (`/usr/share/datasets/fashion-mnist/`), Keras' cache
    (`$KERAS_HOME/datasets/fashion-mnist`, default `~/.keras/...`), and else
    `keras.datasets.fashion_mnist.load_data()`, which downloads them when online.

    Args:
        image_size: `(height, width)` or one int.
        val_fraction: the share of the training images held out for validation,
            above 0 and below 1, stratified.
        seed: seed of the validation split, of `train_per_class`'s draw and of
            shuffling.
        batch_size: batch size of `train`, `val` and `test`.
        classes: keep only these classes (indices 0..9 or names), relabelled
            0..k-1 in the given order, e.g. `[5, 6, 7, 8, 9]` (Sandal, Shirt,
            Sneaker, Bag, Ankle boot). Default: all ten.
        train_per_class: keep only this many training images per class, drawn
            at random (seeded) from the train split; val and test are unchanged
            (e.g. 20 for a few-shot transfer-learning benchmark).
        path: a folder holding the four idx files (`.gz` or not).

    Returns:
        An `ImageData` whose class names are the readable ones ("T-shirt/top",
        "Trouser", ...) and whose files are `fashion-mnist/train/<index>` and
        `fashion-mnist/test/<index>` (the index in the official file).

    Raises:
        ValueError: a bad argument, or an idx file that is damaged or not
            Fashion-MNIST's (named).
        FileNotFoundError: no source has the files; the message says the three
            ways to get them.

    Example:
        >>> data = fashion_mnist()
        >>> {s: len(data.labels(s)) for s in ("train", "val", "test")}
        {'train': 54000, 'val': 6000, 'test': 10000}
        >>> few = fashion_mnist(classes=[5, 6, 7, 8, 9], train_per_class=20)
        >>> few.class_names, len(few.labels("train"))
        (['Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'], 100)
    """
    image_size = check_image_size(image_size)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not (
        0 < val_fraction < 1
    ):
        raise ValueError("val_fraction must be a number above 0 and below 1 (0.1: 6,000 of the "
                         f"60,000 training images). Received: val_fraction={val_fraction!r}")
    _check_int("seed", seed, None)
    _check_int("batch_size", batch_size, 1)
    if train_per_class is not None:
        _check_int("train_per_class", train_per_class, 1)
    kept = _check_classes_argument(classes)
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a folder (str or path). Received: path={path!r}")

    (x_train, y_train, x_test, y_test), root = load_fashion_mnist_arrays(path)
    class_names = [FASHION_MNIST_CLASSES[c] for c in kept]
    relabel = np.full(len(FASHION_MNIST_CLASSES), -1, np.int64)
    relabel[kept] = np.arange(len(kept))
    pool = np.flatnonzero(relabel[y_train] >= 0)  # official train indices of the kept classes
    test = np.flatnonzero(relabel[y_test] >= 0)
    pool_labels = relabel[y_train[pool]].astype(np.int32)
    test_labels = relabel[y_test[test]].astype(np.int32)
    absent = sorted(set(range(len(kept))) - set(test_labels.tolist()))
    if absent:
        raise ValueError(f"The test file in {root} has no images of class(es) "
                         f"{[class_names[c] for c in absent]}; every class needs test images.")

    fractions = (1.0 - float(val_fraction), float(val_fraction), 0.0)
    try:
        local = stratified_split(pool_labels, fractions, seed, class_names, root)
    except ValueError as err:
        raise ValueError(f"Cannot hold out val_fraction={val_fraction!r} of the training images "
                         f"stratified: {err}") from None
    train_pos, val_pos = local["train"], local["val"]
    if train_per_class is not None:
        train_pos = _draw_per_class(train_pos, pool_labels, train_per_class, seed, class_names)

    used = np.sort(np.concatenate([train_pos, val_pos]))  # positions in `pool`
    rows_from_train = pool[used]
    images = _to_rgb([x_train, x_test], [rows_from_train, test], image_size)
    labels = np.concatenate([pool_labels[used], test_labels])
    files = ([f"fashion-mnist/train/{i:05d}" for i in rows_from_train]
             + [f"fashion-mnist/test/{i:05d}" for i in test])
    index = {"train": np.searchsorted(used, train_pos), "val": np.searchsorted(used, val_pos),
             "test": len(used) + np.arange(len(test))}
    split = f"official test; val {float(val_fraction):g} of train"
    if train_per_class is not None:
        split += f"; {train_per_class} train images per class"
    return ImageData(images=images, labels=labels, files=files, index=index,
                     class_names=class_names, image_size=image_size, resize="stretch",
                     batch_size=batch_size, seed=seed, root=root, split=split)


def _draw_per_class(train_pos: np.ndarray, labels: np.ndarray, n: int, seed: int,
                    class_names: list[str]) -> np.ndarray:
    """`n` positions per class drawn (seeded) from `train_pos`, sorted."""
    rng = np.random.default_rng(seed)
    drawn = []
    for c, name in enumerate(class_names):
        of_class = train_pos[labels[train_pos] == c]
        if len(of_class) < n:
            raise ValueError(f"train_per_class={n} is more than the {len(of_class)} training "
                             f"images class {name!r} has after the validation split.")
        drawn.append(rng.choice(of_class, n, replace=False))
    return np.sort(np.concatenate(drawn))


def _to_rgb(sources: list[np.ndarray], rows: list[np.ndarray],
            image_size: tuple[int, int]) -> np.ndarray:
    """The given rows of grayscale `(N, h, w)` arrays as one `(rows, height, width, 3)` uint8."""
    height, width = image_size
    out = np.empty((sum(len(r) for r in rows), height, width, 3), np.uint8)
    start = 0
    for source, take in zip(sources, rows, strict=True):
        gray = source[take]
        if gray.shape[1:] == (height, width):
            out[start:start + len(gray)] = gray[..., None]
        else:
            for i, image in enumerate(gray):
                out[start + i] = _resize_to(image, (width, height))[..., None]
        start += len(gray)
    return out
