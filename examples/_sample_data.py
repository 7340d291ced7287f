"""Small image folders made from data that installed packages ship (no download).

* `two_class_photos`: crops of scikit-learn's two sample photos (china.jpg and
  flower.jpg) as a cats-vs-dogs style binary folder;
* `digit_folders`: scikit-learn's handwritten digits written out as PNG files,
  one folder per class, optionally already split into train/ validation/ test/
  like the 004 seed's VOC folders.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def two_class_photos(root: str | Path, per_class: int = 60, seed: int = 0) -> Path:
    """`root/china/*.jpg` and `root/flower/*.jpg`: random 120-240 px crops."""
    from sklearn.datasets import load_sample_images

    root = Path(root)
    if root.is_dir() and any(root.iterdir()):  # made by an earlier run
        return root
    rng = np.random.default_rng(seed)
    for name, photo in zip(("china", "flower"), load_sample_images().images, strict=True):
        (root / name).mkdir(parents=True, exist_ok=True)
        h, w = photo.shape[:2]
        for i in range(per_class):
            side = int(rng.integers(120, 241))
            top, left = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
            crop = cv2.cvtColor(photo[top: top + side, left: left + side], cv2.COLOR_RGB2BGR)
            ok, buf = cv2.imencode(".jpg", crop)
            (root / name / f"{name}_{i:03d}.jpg").write_bytes(buf.tobytes())
    return root


def digit_folders(root: str | Path, presplit: bool = False, size: int = 32,
                  seed: int = 0) -> Path:
    """scikit-learn's digits as PNGs: `root/<digit>/` or `root/train|validation|test/<digit>/`
    split 8:1:1 like the 004 seed's VOC folders."""
    from sklearn.datasets import load_digits

    root = Path(root)
    if root.is_dir() and any(root.iterdir()):  # made by an earlier run: keep its cache valid
        return root
    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.images))
    for rank, i in enumerate(order):
        split = ("train", "validation", "test")[0 if rank % 10 < 8 else 1 if rank % 10 == 8 else 2]
        folder = root / split if presplit else root
        image = cv2.resize((digits.images[i] * 255 / 16).astype(np.uint8), (size, size),
                           interpolation=cv2.INTER_CUBIC)
        path = folder / str(digits.target[i]) / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image)
    return root
