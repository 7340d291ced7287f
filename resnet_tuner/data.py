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
import hashlib
import json
import os
import shutil
import sys
import tempfile
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
CACHE_VERSION = 1
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


def _looks_truncated(data: bytes) -> bool:
    """JPEGs end with the EOI marker and PNGs with an IEND chunk; cv2 decodes cut files anyway."""
    head, tail = data[:8], data[-1024:].rstrip(b"\x00\r\n ")
    if head[:2] == b"\xff\xd8":
        return not tail.endswith(b"\xff\xd9")
    if head == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in tail
    return False


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any OpenCV decode (gray, BGR, BGRA, 16-bit, float) -> RGB uint8."""
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) * (255.0 / 65535.0) + 0.5).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = cv2.normalize(image.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX)
        image = image.astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if channels == 4:
        # Composite on white: transparent areas of logos and scans are usually paper.
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        bgr = image[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return cv2.cvtColor((bgr + 0.5).astype(np.uint8), cv2.COLOR_BGR2RGB)
    return cv2.cvtColor(image[:, :, :3], cv2.COLOR_BGR2RGB)


def resize_image(image: np.ndarray, image_size: tuple[int, int], resize: str = "stretch"):
    """Resizes an RGB image to `image_size` (height, width).

    `stretch` ignores the aspect ratio (what the seed posts do); `crop` keeps it
    and cuts the centre; `pad` keeps it and pads with black. Shrinking uses
    area interpolation (no aliasing); enlarging uses bicubic.
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
        shrinking = width * height < w * h
    else:
        target = (max(1, round(w * scale)), max(1, round(h * scale)))
        shrinking = scale < 1
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    out = cv2.resize(image, target, interpolation=interpolation)
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


def load_image(
    path: str | os.PathLike,
    image_size: int | tuple[int, int],
    resize: str = "stretch",
    min_size: int = 1,
) -> np.ndarray:
    """Decodes one image file into RGB uint8 of `image_size`, as training saw it.

    Works on any path (non-ASCII names, spaces): the bytes are read in Python
    and decoded by `cv2.imdecode`.

    Args:
        path: the image file.
        image_size: `(height, width)` or one int for a square.
        resize: `"stretch"`, `"crop"` or `"pad"`.
        min_size: smallest usable side in pixels.

    Returns:
        A `(height, width, 3)` uint8 array.

    Raises:
        ImageError: the file is empty, truncated, not a decodable image or too
            small; the message says which.
    """
    image_size = _check_image_size(image_size)
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ImageError(f"unreadable ({err.strerror or err})") from err
    if not data:
        raise ImageError("empty file (0 bytes)")
    if _looks_truncated(data):
        raise ImageError("truncated (the file ends before the image does)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ImageError("not a decodable image")
    if min(image.shape[:2]) < min_size:
        raise ImageError(
            f"too small ({image.shape[1]}x{image.shape[0]} px; min_size={min_size})"
        )
    return resize_image(_to_rgb_uint8(image), image_size, resize)


# --------------------------------------------------------------------------- the data object


class ImageData:
    """Images split into train / val / test, shared by every trial of a search.

    Images are uint8 `(N, height, width, 3)`; labels are int32 class indices.
    The images live either in memory or in a `.npy` cache file that batches
    are read from by row, so a dataset larger than RAM streams with bounded
    resident memory.

    Attributes:
        class_names: class names, index = label.
        image_size: `(height, width)`.
        resize: how images were resized (`stretch`, `crop` or `pad`).
        skipped: `[(path, reason), ...]` of files that could not be used.
        batch_size: batch size of `train`, `val` and `test`.
        seed: seed of the split and of shuffling.
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
        self._reader = _RowReader(images) if isinstance(images, Path) else None

    # ---------------------------------------------------------------- facts
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (*self.image_size, 3)

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class: `{"train": {"cat": 80, ...}, ...}`."""
        out = {}
        for split in SPLITS:
            counter = Counter(self._labels[self._index[split]].tolist())
            out[split] = {name: counter.get(i, 0) for i, name in enumerate(self.class_names)}
        return out

    def labels(self, split: str) -> np.ndarray:
        return self._labels[self._index[_check_split(split)]]

    def split_files(self, split: str) -> list[str]:
        """The files of a split, in the order of `arrays(split)`."""
        return [self._files[i] for i in self._index[_check_split(split)]]

    # ---------------------------------------------------------------- access
    def _rows(self, rows: np.ndarray) -> np.ndarray:
        if self._reader is not None:
            return self._reader.read(rows)
        return self._images[rows]

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The whole split in memory: `(x uint8 (N, H, W, 3), y int32 (N,))`."""
        rows = self._index[_check_split(split)]
        return self._rows(rows), self._labels[rows]

    def dataset(self, split: str, batch_size: int | None = None, shuffle: bool | None = None):
        """A batched `tf.data.Dataset` of `(uint8 images, int32 labels)`.

        A split of up to `IN_MEMORY_BYTES` is read once and sliced in memory.
        A larger one streams: only row indices go through `tf.data` and each
        batch is read from the cache file in one call, so nothing holds the
        whole split.

        Args:
            split: `"train"`, `"val"` or `"test"`.
            batch_size: defaults to `self.batch_size`.
            shuffle: defaults to True for `train` (reshuffled every epoch,
                seeded), False otherwise.
        """
        import tensorflow as tf

        rows = self._index[_check_split(split)]
        batch_size = batch_size or self.batch_size
        shuffle = split == "train" if shuffle is None else shuffle
        height, width = self.image_size
        if len(rows) * height * width * 3 <= IN_MEMORY_BYTES:
            ds = tf.data.Dataset.from_tensor_slices(self.arrays(split))
            if shuffle:
                ds = ds.shuffle(max(1, len(rows)), seed=self.seed, reshuffle_each_iteration=True)
            return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

        ds = tf.data.Dataset.from_tensor_slices(rows)
        if shuffle:
            ds = ds.shuffle(max(1, len(rows)), seed=self.seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size)

        def gather(batch_rows):
            batch_rows = np.asarray(batch_rows)
            return self._rows(batch_rows), self._labels[batch_rows]

        def read(batch_rows):
            images, labels = tf.numpy_function(gather, [batch_rows], [tf.uint8, tf.int32])
            images.set_shape((None, height, width, 3))
            labels.set_shape((None,))
            return images, labels

        ds = ds.map(read, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    @property
    def train(self):
        return self.dataset("train")

    @property
    def val(self):
        return self.dataset("val")

    @property
    def test(self):
        return self.dataset("test")

    def class_weights(self) -> dict[int, float]:
        """scikit-learn's "balanced" weights from the training labels."""
        from sklearn.utils.class_weight import compute_class_weight

        y = self.labels("train")
        classes = np.arange(self.num_classes)
        present = np.unique(y)
        weights = compute_class_weight("balanced", classes=present, y=y)
        out = dict.fromkeys(classes.tolist(), 1.0)
        out.update({int(c): float(w) for c, w in zip(present, weights, strict=True)})
        return out

    def folds(self, k: int = 5) -> Iterator[ImageData]:
        """Stratified K-fold over train + val; the test split stays untouched.

        Yields `ImageData` objects whose `train`/`val` are the folds, e.g.
        `for fold in data.folds(5): tuner.search(fold)`.
        """
        from sklearn.model_selection import StratifiedKFold

        pool = np.concatenate([self._index["train"], self._index["val"]])
        smallest = min(Counter(self._labels[pool].tolist()).values())
        if not isinstance(k, int) or k < 2 or k > smallest:
            raise ValueError(
                f"folds needs an integer k from 2 to {smallest} (the smallest class has "
                f"{smallest} train+val images). Received: k={k!r}"
            )
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=self.seed)
        for train_pos, val_pos in splitter.split(pool, self._labels[pool]):
            index = {"train": pool[train_pos], "val": pool[val_pos], "test": self._index["test"]}
            yield self._with_index(index)

    def _with_index(self, index: dict[str, np.ndarray]) -> ImageData:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._index = {s: np.asarray(index[s], dtype=np.int64) for s in SPLITS}
        return clone

    # ---------------------------------------------------------------- manifest
    def manifest(self) -> dict[str, Any]:
        """Which file is in which split, with the settings that made it."""
        return {
            "version": MANIFEST_VERSION,
            "root": self.root,
            "class_names": self.class_names,
            "image_size": list(self.image_size),
            "resize": self.resize,
            "seed": self.seed,
            "split": self.split,
            "files": {
                s: [[self._files[i], self.class_names[self._labels[i]]] for i in self._index[s]]
                for s in SPLITS
            },
        }

    def write_manifest(self, path: str | os.PathLike) -> Path:
        """Writes `manifest()` as JSON (atomically); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
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


class _RowReader:
    """Reads rows of a `.npy` file with `pread`: no mapping, so resident memory stays
    at what the caller holds (the OS page cache is not counted against the process)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        header = np.load(self.path, mmap_mode="r")  # only to read shape, dtype and offset
        self.shape, self.dtype, self.offset = header.shape, header.dtype, header.offset
        del header
        self.row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self._fd: int | None = None

    def read(self, rows: np.ndarray) -> np.ndarray:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        flat = out.reshape(len(rows), -1).view(np.uint8)
        for i, row in enumerate(np.asarray(rows, dtype=np.int64)):
            chunk = os.pread(self._fd, self.row_bytes, self.offset + int(row) * self.row_bytes)
            flat[i] = np.frombuffer(chunk, np.uint8)
        return out

    def __getstate__(self):  # picklable for subprocesses: reopen there
        return {**self.__dict__, "_fd": None}

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
    return Path(env) if env else Path.home() / ".cache" / "resnet_tuner"


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name in ("Thumbs.db", "desktop.ini")


def _scan_class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p))


def _scan_files(class_dir: Path, skipped: list) -> list[Path]:
    files = []
    for path in sorted(class_dir.rglob("*")):
        if path.is_dir():
            continue
        if any(_is_hidden(Path(part)) for part in path.relative_to(class_dir).parts):
            skipped.append((str(path), "hidden file"))
        elif path.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append((str(path), f"not an image file extension ({path.suffix or 'none'})"))
        else:
            files.append(path)
    return files


def _detect_presplit(root: Path) -> dict[str, Path] | None:
    names = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    val = next((names[n] for n in VAL_DIR_NAMES if n in names), None)
    if "train" in names and val is not None and "test" in names:
        return {"train": names["train"], "val": val, "test": names["test"]}
    return None


class ImageFolder(ImageData):
    """A folder of images, one subfolder per class, as stratified splits.

    Args:
        root: the folder. Either `root/<class>/<images>` (split here,
            stratified), or `root/train|val|validation|test/<class>/<images>`
            (used as given).
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
        manifest: a manifest written by `write_manifest`; the same files go to
            the same splits (the folder must still hold them).
        verbose: 1 shows a progress line while decoding.

    Raises:
        FileNotFoundError: `root` (or a manifest's file) does not exist.
        ValueError: fewer than two classes, an empty class, a class missing
            from a split, a class too small to split, or bad arguments.

    Example:
        >>> data = ImageFolder("pets/", image_size=(128, 128), split=(0.8, 0.1, 0.1))
        >>> data.counts["test"]
        {'cat': 10, 'dog': 10}
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
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer. Received: {batch_size!r}")
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
            split_spec = _check_split_fractions(split)
            plan = _plan_from_folder(root_path, skipped)
            if plan["given"]:
                split_spec = "given"

        class_names = plan["class_names"]
        candidates: list[tuple[Path, int, str | None]] = plan["files"]
        images, kept, decode_skipped = _decode_all(
            [p for p, _, _ in candidates], image_size, resize, min_size, cache_dir, verbose
        )
        skipped.extend(decode_skipped)
        labels = np.array([candidates[i][1] for i in kept], dtype=np.int32)
        given_split = [candidates[i][2] for i in kept]
        files = [os.path.relpath(candidates[i][0], root_path) for i in kept]

        _check_classes(class_names, labels, root_path, plan)
        if split_spec == "given" or manifest is not None:
            index = {s: np.array([i for i, g in enumerate(given_split) if g == s]) for s in SPLITS}
            for s in SPLITS:
                present = set(labels[index[s]].tolist()) if len(index[s]) else set()
                missing = [class_names[c] for c in range(len(class_names)) if c not in present]
                if missing:
                    raise ValueError(
                        f"Class(es) {missing} have no usable images in the {s!r} split of "
                        f"{root_path}; every class needs images in train, val and test."
                    )
        else:
            index = _stratified_split(labels, split_spec, seed, class_names, root_path)

        super().__init__(
            images=images, labels=labels, files=files, index=index, class_names=class_names,
            image_size=image_size, resize=resize, batch_size=batch_size, seed=seed,
            root=str(root_path), skipped=skipped, split=split_spec,
        )
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
        """Loads the very same splits a manifest describes (root, classes, files, size)."""
        manifest = json.loads(Path(path).read_text("utf-8"))
        kwargs.setdefault("image_size", tuple(manifest["image_size"]))
        kwargs.setdefault("resize", manifest.get("resize", "stretch"))
        kwargs.setdefault("seed", manifest.get("seed", 0))
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
    files: list[tuple[Path, int, str | None]] = []
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
                files += [(p, label, s) for p in _scan_files(folder / name, skipped)]
        class_dirs = {n: [presplit[s] / n for s in SPLITS] for n in class_names}
    else:
        dirs = _scan_class_dirs(root)
        for path in sorted(root.iterdir()):
            if path.is_file() and not _is_hidden(path):
                skipped.append((str(path), "not in a class folder"))
        class_names = [d.name for d in dirs]
        for label, d in enumerate(dirs):
            files += [(p, label, None) for p in _scan_files(d, skipped)]
        class_dirs = {d.name: [d] for d in dirs}
    if len(class_names) < 2:
        found = f"only {class_names[0]!r}" if class_names else "none"
        raise ValueError(
            f"{root} needs at least two class subfolders (root/<class>/<images>, or "
            f"train/ val/ test/ each with class subfolders); found {found}."
        )
    return {"class_names": class_names, "files": files, "given": bool(presplit),
            "class_dirs": class_dirs, "split": "given" if presplit else None}


def _plan_from_manifest(root: Path, manifest: str | os.PathLike | dict) -> dict[str, Any]:
    if not isinstance(manifest, dict):
        manifest = json.loads(Path(manifest).read_text("utf-8"))
    class_names = list(manifest["class_names"])
    lookup = {name: i for i, name in enumerate(class_names)}
    files = []
    for s in SPLITS:
        for rel, name in manifest["files"][s]:
            path = root / rel
            if not path.is_file():
                raise FileNotFoundError(
                    f"The manifest lists {rel!r} ({s} split) but {path} does not exist; the "
                    "folder changed since the manifest was written. Start a new run."
                )
            files.append((path, lookup[name], s))
    return {"class_names": class_names, "files": files, "given": True,
            "class_dirs": {n: [root] for n in class_names}, "split": manifest.get("split")}


def _check_classes(class_names, labels, root: Path, plan) -> None:
    counts = Counter(labels.tolist())
    empty = [n for i, n in enumerate(class_names) if counts.get(i, 0) == 0]
    if empty:
        where = ", ".join(str(p) for n in empty for p in plan["class_dirs"][n])
        raise ValueError(f"Class folder(s) {empty} contain no usable images ({where}).")


def _stratified_split(labels, fractions, seed, class_names, root) -> dict[str, np.ndarray]:
    """scikit-learn's stratified split: test first, then val out of the rest."""
    from sklearn.model_selection import train_test_split

    counts = Counter(labels.tolist())
    train_f, val_f, test_f = fractions
    # Each class needs one image in every split, and sklearn needs each split
    # to hold at least one image per class.
    need = max(3, round(1.0 / min(fractions)))
    small = {class_names[c]: n for c, n in counts.items() if n < need}
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
            f"Images per class: { {class_names[c]: n for c, n in sorted(counts.items())} }"
        ) from err
    index = {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
    for split, rows_of_split in index.items():
        missing = sorted(set(counts) - set(labels[rows_of_split].tolist()))
        if missing:
            raise ValueError(
                f"Splitting {root} with split={fractions} leaves class(es) "
                f"{[class_names[c] for c in missing]} out of the {split!r} split; each class "
                f"needs about {need} or more usable images. Images per class: "
                f"{ {class_names[c]: n for c, n in sorted(counts.items())} }"
            )
    return index


# --------------------------------------------------------------------------- decode once, cache


def _cache_key(paths: list[Path], image_size, resize: str, min_size: int) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_VERSION, list(image_size), resize, min_size]).encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _decode_all(paths, image_size, resize, min_size, cache_dir, verbose):
    """Returns (images ndarray or cache Path, kept positions, skipped) for `paths`."""
    use_cache = cache_dir is not False
    if use_cache:
        folder = Path(cache_dir) if cache_dir not in (None, True) else default_cache_dir()
        key = _cache_key(paths, image_size, resize, min_size)
        entry = folder / f"images-{key}"
        meta_path = entry / "meta.json"
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text("utf-8"))
            return entry / "images.npy", meta["kept"], [tuple(s) for s in meta["skipped"]]

    height, width = image_size
    results: list[np.ndarray | None] = [None] * len(paths)
    skipped: list[tuple[str, str]] = []
    progress = _Progress(len(paths), enabled=bool(verbose))

    def work(i):
        try:
            return i, load_image(paths[i], image_size, resize, min_size), None
        except ImageError as err:
            return i, None, str(err)

    workers = min(32, (os.cpu_count() or 1) + 2)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for i, image, reason in pool.map(work, range(len(paths))):
            if image is None:
                skipped.append((str(paths[i]), reason))
            else:
                results[i] = image
            progress.update()
    progress.close()
    kept = [i for i, image in enumerate(results) if image is not None]
    if not use_cache:
        stacked = np.empty((len(kept), height, width, 3), np.uint8)
        for row, i in enumerate(kept):
            stacked[row] = results[i]
        return stacked, kept, skipped

    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".images-{key}-", dir=folder))
    try:
        array = np.lib.format.open_memmap(
            tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(kept), height, width, 3)
        )
        for row, i in enumerate(kept):
            array[row] = results[i]
        array.flush()
        del array
        (tmp / "meta.json").write_text(json.dumps({"kept": kept, "skipped": skipped}), "utf-8")
        try:
            os.replace(tmp, entry)  # atomic: readers see a complete cache or none
        except OSError:
            if not meta_path.is_file():  # not a concurrent writer's finished copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry / "images.npy", kept, skipped


class _Progress:
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
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
