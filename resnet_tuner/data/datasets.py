"""Datasets by name, for demos, docs, tests, benchmarks and the command line.

`digits` is scikit-learn's bundled copy of the UCI handwritten digits (1,797
real 8x8 scans, 10 classes); nothing downloads. `fashion_mnist` (module
`data.fashion`) is Zalando's Fashion-MNIST, read from its idx files.
`named_dataset` is what the command line's DATA_DIR names
(`run.options.DATASETS`) load.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from resnet_tuner.data.decode import check_image_size
from resnet_tuner.data.fashion import fashion_mnist
from resnet_tuner.data.images import ImageData
from resnet_tuner.data.splits import DEFAULT_SPLIT, SPLITS, check_split_fractions, stratified_split


def digits(
    image_size: int | tuple[int, int] = (32, 32),
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    batch_size: int = 32,
) -> ImageData:
    """scikit-learn's handwritten digits as RGB uint8 images, split stratified.

    The 8x8 scans (values 0..16) are scaled to 0..255, enlarged with bicubic
    interpolation to `image_size` and repeated over three channels, so they go
    through the same models as photos. They are small enough to build in
    memory in well under a second, so no disk cache is involved.

    Args:
        image_size: `(height, width)` or one int.
        split: `(train, val, test)` fractions.
        seed: seed of the split and of shuffling.
        batch_size: batch size of `train`, `val` and `test`.

    Returns:
        An `ImageData` with classes "0".."9".

    Example:
        >>> data = digits()
        >>> data.arrays("train")[0].shape
        (1437, 32, 32, 3)
    """
    from sklearn.datasets import load_digits

    image_size = check_image_size(image_size)
    fractions = check_split_fractions(split)
    bunch = load_digits()
    height, width = image_size
    scans = np.clip(bunch.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    images = np.empty((len(scans), height, width, 3), np.uint8)
    for i, scan in enumerate(scans):
        gray = cv2.resize(scan, (width, height), interpolation=cv2.INTER_CUBIC)
        images[i] = gray[:, :, None]
    labels = bunch.target.astype(np.int32)
    class_names = [str(c) for c in range(10)]
    index = stratified_split(labels, fractions, seed, class_names, "sklearn digits")
    return ImageData(
        images=images,
        labels=labels,
        files=[f"digits/{i:04d}" for i in range(len(images))],
        index=index,
        class_names=class_names,
        image_size=image_size,
        resize="stretch",
        batch_size=batch_size,
        seed=seed,
        root="sklearn.datasets.load_digits",
        split=fractions,
    )


# ----------------------------------------------------------------- by name

#: The datasets a name loads (`run.options.DATASETS` lists the same names, TF-free).
NAMED_DATASETS = ("digits", "fashion-mnist")


def named_dataset(
    name: str,
    image_size: int | tuple[int, int],
    split: Sequence[float] = DEFAULT_SPLIT,
    seed: int = 0,
    *,
    manifest: str | os.PathLike | dict | None = None,
    given: str | None = None,
) -> ImageData:
    """The dataset a command line's DATA_DIR names (`NAMED_DATASETS`), split as a run asks.

    `digits` is split `split` (train, val, test). `fashion-mnist`'s test split
    is always its official 10,000 test images, so `split`'s test fraction does
    not apply: val is `split[1] / (split[0] + split[1])` of the 60,000 training
    images for a split other than `DEFAULT_SPLIT`, else 0.1 (6,000); such a
    split warns once (`SplitIgnoredWarning`) that its test fraction is ignored.

    Args:
        name: one of `NAMED_DATASETS`.
        image_size: `(height, width)` or one int.
        split: `(train, val, test)` fractions.
        seed: seed of the split and of shuffling.
        manifest: a run's manifest (path or dict, `ImageData.write_manifest`):
            the splits are the manifest's, file by file, so a resumed run has
            the very split it started with (and no warning is repeated).
        given: how the caller spelled `split`, for the warning (default
            `split=(...)`).

    Raises:
        ValueError: an unknown name, a bad split, or a manifest listing images
            or classes the dataset does not have.
    """
    from resnet_tuner.data.folder import SplitIgnoredWarning

    if name not in NAMED_DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose from {NAMED_DATASETS}.")
    fractions = check_split_fractions(split)
    if name == "digits":
        data = digits(image_size=image_size, split=fractions, seed=seed)
    else:
        default = fractions == DEFAULT_SPLIT
        val = 0.1 if default else fractions[1] / (fractions[0] + fractions[1])
        if not default and manifest is None:
            given = given or f"split={fractions}"
            warnings.warn(SplitIgnoredWarning(
                f"The test fraction of {given} ignored: fashion-mnist's test split is its "
                f"official 10,000 test images; val is {val:.3g} of its 60,000 training images "
                f"(train {fractions[0]:g} : val {fractions[1]:g})."), stacklevel=2)
        data = fashion_mnist(image_size=image_size, val_fraction=val, seed=seed)
    return data if manifest is None else _with_manifest_splits(data, manifest, name)


def _with_manifest_splits(data: ImageData, manifest, name: str) -> ImageData:
    """`data` with the splits a manifest lists, file by file (the same images, the same split)."""
    if not isinstance(manifest, dict):
        manifest = json.loads(Path(manifest).read_text("utf-8"))
    row_of = {f: i for i, f in enumerate(data._files)}
    index = {}
    for s in SPLITS:
        listed = manifest["files"][s]
        rows = np.array([row_of.get(f, -1) for f, _ in listed], dtype=np.int64)
        unknown = [listed[i] for i in np.flatnonzero(rows < 0)[:3]]
        wrong = [listed[i] for i, r in enumerate(rows)
                 if r >= 0 and data.class_names[data._labels[r]] != listed[i][1]][:3]
        if unknown or wrong:
            raise ValueError(
                f"The run's manifest does not match the {name} dataset loaded now ("
                + (f"images it does not have: {unknown}" if unknown else
                   f"images of other classes: {wrong}")
                + "). Start a new run (--overwrite), or load the data the run was made with."
            )
        index[s] = rows
    return data._with_index(index)
