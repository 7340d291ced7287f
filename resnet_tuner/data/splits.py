"""Stratified train / val / test splits and the checks on split fractions.

Each split is an array of row numbers. `stratified_split` splits a labelled
set with scikit-learn (test first, then val from the rest), `split_off` splits
a missing `val` or `test` off a pre-split folder's train rows; both keep every
class in every split or say which class is too small. A test fraction of 0
leaves the test split empty (every image goes to the search).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")


def check_split(split: str) -> str:
    """`split` if it names one of `SPLITS`; raises ValueError otherwise."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}. Received: split={split!r}")
    return split


#: `(train, val, test)` when no split is given.
DEFAULT_SPLIT = (0.8, 0.1, 0.1)


def check_split_fractions(split: Any) -> tuple[float, float, float]:
    """`(train, val, test)` fractions as floats: train and val > 0, test >= 0, summing to 1.

    A test fraction of 0 keeps every image for training and validation (little
    data); the search's validation accuracy is then the only estimate there is,
    and an optimistic one (it chose the model).

    Raises:
        ValueError: naming the received value, e.g. `split=(0.8, 0.3, 0.1) (sum 1.2)`,
            or saying that the search needs a validation split.
    """
    values = tuple(split) if isinstance(split, (tuple, list)) else ()
    if len(values) != 3 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in values
    ) or values[0] <= 0:
        raise ValueError(
            "split must be three fractions (train, val, test): train and val positive, test "
            f"positive or 0 for no test split. Received: split={split!r}"
        )
    if values[1] <= 0:
        raise ValueError(
            "split needs a validation fraction above 0: the search ranks its models by their "
            f"validation accuracy. Received: split={split!r}. To keep every image for the "
            "search, set the test fraction to 0 instead: change split (e.g. (0.8, 0.2, 0))."
        )
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(
            f"split fractions must sum to 1. Received: split={split!r} (sum {sum(values):g})"
        )
    return tuple(float(v) + 0.0 for v in values)  # type: ignore[return-value]  # -0.0 -> 0.0


def per_class(labels: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
    """`{class name: number of labels}`, zero for absent classes."""
    counts = np.bincount(labels, minlength=len(class_names))
    return {name: int(n) for name, n in zip(class_names, counts, strict=True)}


def stratified_split(labels, fractions, seed, class_names, root) -> dict[str, np.ndarray]:
    """scikit-learn's stratified split of positions 0..n-1: test first, then val from the rest.

    Args:
        labels: int labels, one per position.
        fractions: `(train, val, test)` from `check_split_fractions`.
        seed: `random_state` of both splits.
        class_names: names for the messages, index = label.
        root: where the images came from, for the messages.

    Returns:
        `{"train": positions, "val": ..., "test": ...}`, each sorted.

    Raises:
        ValueError: a class too small to appear in every split (named, with counts).
    """
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    counts = per_class(labels, class_names)
    train_f, val_f, test_f = fractions
    used = [f for f in fractions if f > 0]  # a test fraction of 0: no test split
    # Each class needs one image in every split: at least one per split, and
    # enough that its smallest fraction rounds to one image.
    need = max(len(used), round(1.0 / min(used)))
    small = {name: n for name, n in counts.items() if n < need}
    if small:
        example = "(0.6, 0.2, 0.2)" if test_f > 0 else "(0.5, 0.5, 0)"
        raise ValueError(
            f"Class(es) with too few images to split {fractions} stratified in {root}: "
            f"{small}; each class needs at least {need} usable images. Add images or change "
            f"split (e.g. {example})."
        )
    rows = np.arange(len(labels))
    try:
        if test_f > 0:
            rest, test = train_test_split(rows, test_size=test_f, stratify=labels,
                                          random_state=seed)
        else:
            rest, test = rows, rows[:0]
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
        if split == "test" and test_f == 0:
            continue
        missing = sorted(set(np.flatnonzero(np.bincount(labels))) - set(labels[rows_of_split]))
        if missing:
            raise ValueError(
                f"Splitting {root} with split={fractions} leaves class(es) "
                f"{[class_names[c] for c in missing]} out of the {split!r} split; each class "
                f"needs about {need} or more usable images. Images per class: {counts}"
            )
    return index


def split_off(index, name, labels, fractions, seed, class_names, train_dir: Path) -> dict:
    """Splits the missing `val` or `test` off a pre-split folder's train images, stratified."""
    from sklearn.model_selection import train_test_split

    train_rows = index["train"]
    train_f = fractions[0]
    part_f = fractions[SPLITS.index(name)]
    counts = per_class(labels[train_rows], class_names)
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
