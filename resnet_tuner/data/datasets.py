"""Datasets that ship inside installed packages, for demos, docs, tests and benchmarks.

Nothing here downloads: `digits` is scikit-learn's bundled copy of the UCI
handwritten digits (1,797 real 8x8 scans, 10 classes).
"""

from __future__ import annotations

import cv2
import numpy as np

from resnet_tuner.data.decode import check_image_size
from resnet_tuner.data.images import ImageData
from resnet_tuner.data.splits import check_split_fractions, stratified_split


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
