"""`ImageData`: labelled uint8 images split into train / val / test, served by `tf.data`.

The object every trial of a search shares. It holds the images (an array or
the decode-once cache file, read through `store.open_rows`), one label per
row and one array of row numbers per split; K-fold views, manifests and
`tf.data` pipelines are built from those row numbers without copying images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resnet_tuner.data.decode import MAX_PIXELS
from resnet_tuner.data.splits import SPLITS, check_split
from resnet_tuner.data.store import open_rows

MANIFEST_VERSION = 1


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
        self._source = open_rows(images)

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
        return self._labels[self._index[check_split(split)]]

    def split_files(self, split: str) -> list[str]:
        """The files of a split (relative to `root`), in the order of `arrays(split)`."""
        return [self._files[i] for i in self._index[check_split(split)]]

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
        return self._gather(self._index[check_split(split)])

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

        rows = self._index[check_split(split)]
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
            "max_pixels": getattr(self, "max_pixels", MAX_PIXELS),
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
