"""Writes Fashion-MNIST as a folder of PNGs, the way a user would have it.

    OUT/train/<class>/<index>.png   the 60,000 official training images
    OUT/test/<class>/<index>.png    the 10,000 official test images

Grayscale 28x28 PNGs written with `cv2.imwrite`; `<index>` is the image's
index in its idx file (zero-padded, so file order is the official order).
"T-shirt/top" is a folder name only without its slash: `T-shirt_top` (a slash
would make a `T-shirt/` class with a `top/` subfolder). `ImageFolder` sorts
class folders by name, so its labels are not Fashion-MNIST's 0..9 order.

Loading OUT with `ImageFolder` (or `resnet-tuner search OUT`) uses test/ as the
test split and, as there is no val/, splits val off train/ stratified with
the `split` fractions: `split=(0.9, 0.1, 0)` (`--split 0.9,0.1,0`) holds out
0.1 of train/ (6,000), as `fashion_mnist()` does; the default (0.8, 0.1, 0.1)
holds out 0.1 / 0.9 of it (6,667).

The idx files come from where `resnet_tuner.datasets.fashion_mnist()` finds
them (`--path`, $RESNET_TUNER_FASHION_MNIST, Debian's dataset-fashion-mnist,
Keras' cache, a Keras download).

Usage:
    python bench/fashion_folder.py OUT               # all 70,000 images
    python bench/fashion_folder.py OUT --limit 200   # the first 200 of each split
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resnet_tuner.data.fashion import (  # noqa: E402
    FASHION_MNIST_CLASSES,
    load_fashion_mnist_arrays,
)


def folder_name(class_name: str) -> str:
    """A class name as one folder name: `T-shirt/top` -> `T-shirt_top`."""
    return class_name.replace("/", "_").replace(os.sep, "_")


def write_split(out: Path, images: np.ndarray, labels: np.ndarray, workers: int) -> int:
    """Writes `images` as `out/<class>/<index>.png`; returns the number written."""
    for name in FASHION_MNIST_CLASSES:
        (out / folder_name(name)).mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(len(images) - 1)))

    def write(i: int) -> None:
        path = out / folder_name(FASHION_MNIST_CLASSES[labels[i]]) / f"{i:0{width}d}.png"
        if not cv2.imwrite(str(path), np.ascontiguousarray(images[i])):
            raise OSError(f"cv2.imwrite could not write {path}")

    with ThreadPoolExecutor(workers) as pool:  # cv2.imwrite releases the GIL
        for _ in pool.map(write, range(len(images)), chunksize=256):
            pass
    return len(images)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the folder to write (train/ and test/)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="write only the first N images of each split")
    parser.add_argument("--path", type=Path, default=None,
                        help="a folder holding the four idx files (default: where "
                             "fashion_mnist() finds them)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="threads writing PNGs (default: the CPU count)")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be a positive integer, got {args.limit}")

    started = time.perf_counter()
    (x_train, y_train, x_test, y_test), source = load_fashion_mnist_arrays(args.path)
    read = time.perf_counter() - started
    written = 0
    for split, images, labels in (("train", x_train, y_train), ("test", x_test, y_test)):
        n = len(images) if args.limit is None else min(args.limit, len(images))
        written += write_split(args.out / split, images[:n], labels[:n], max(1, args.workers))
    elapsed = time.perf_counter() - started
    print(f"wrote {written} PNGs from {source} to {args.out} in {elapsed:.1f} s "
          f"(reading the idx files {read:.1f} s; {written / max(elapsed - read, 1e-9):.0f} "
          "images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
