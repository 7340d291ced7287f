"""`ImageFolder`: an image folder on disk -> decoded once -> stratified splits.

The steps of a load, each a function below: check the arguments, plan what
to load (`scan.plan_from_folder` or `scan.plan_from_manifest`), decode every
file once through the cache (`store.decode_all`), check every class kept
images, split (`splits.stratified_split`, or the folder's own splits), and
warn once about skipped files.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resnet_tuner.data.decode import (
    MAX_PIXELS,
    RESIZE_MODES,
    check_image_size,
    check_max_pixels,
)
from resnet_tuner.data.images import ImageData
from resnet_tuner.data.scan import Candidate, plan_from_folder, plan_from_manifest
from resnet_tuner.data.splits import (
    DEFAULT_SPLIT,
    SPLITS,
    check_split_fractions,
    split_off,
    stratified_split,
)
from resnet_tuner.data.store import decode_all


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
        split: `(train, val, test)` fractions summing to 1 (default
            `(0.8, 0.1, 0.1)`): train and val above 0, test above 0 or 0 for
            no test split (every image goes to the search; its validation
            accuracy is then the only, optimistic, estimate). A folder already
            split into train/, val/ and test/ ignores it, with a warning when
            it is given.
        seed: seed of the split and of shuffling.
        cache_dir: where decoded images are cached (`None`: the default,
            `$RESNET_TUNER_CACHE` or `~/.cache/resnet_tuner`; `False`: no disk
            cache, images held in memory).
        resize: `"stretch"` (default, like the seed posts), `"crop"` (keep the
            aspect ratio, cut the centre) or `"pad"` (keep it, pad with black).
        batch_size: batch size of `train`, `val` and `test`.
        min_size: images with a side under this many pixels are skipped.
        max_pixels: images whose header states more than this many pixels
            (width x height) are skipped as "too large" before decoding,
            which bounds the memory of a load (see `MAX_PIXELS`, 100 MP).
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
        split: Sequence[float] | None = None,
        seed: int = 0,
        cache_dir: str | os.PathLike | None | bool = None,
        resize: str = "stretch",
        batch_size: int = 32,
        min_size: int = 8,
        manifest: str | os.PathLike | dict | None = None,
        verbose: int = 1,
        max_pixels: int = MAX_PIXELS,
    ):
        image_size = check_image_size(image_size)
        _check_arguments(resize, batch_size, min_size, seed)
        max_pixels = check_max_pixels(max_pixels)
        root_path = _check_root(root)
        skipped: list[tuple[str, str]] = []
        plan, fractions, split_spec = _plan(root_path, manifest, split, skipped)
        if split is not None and manifest is None and split_ignored(plan["split_dirs"]):
            warnings.warn(SplitIgnoredWarning(
                split_ignored_message(f"split={tuple(split)}", root_path)), stacklevel=2)

        candidates: list[Candidate] = plan["files"]
        images, kept, decode_skipped = decode_all(
            candidates, (image_size, resize, min_size, max_pixels), cache_dir, verbose
        )
        if manifest is not None:
            # Skipped when the manifest was written (its "unused"): reported then, by the
            # run's skipped.json; a file of a split that no longer decodes is an error.
            decode_skipped = [s for s in decode_skipped if s[0] not in plan["unused"]]
            _check_manifest_files_decoded(decode_skipped)
        skipped.extend(decode_skipped)
        labels = np.array([c[3] for c in candidates], dtype=np.int32)
        kept_rows = np.asarray(kept, dtype=np.int64)
        _check_classes(plan, labels[kept_rows])
        index = _split_rows(plan, candidates, labels, kept_rows, fractions, seed, root_path)

        super().__init__(
            images=images, labels=labels, index=index, class_names=plan["class_names"],
            files=[os.path.relpath(c[0], root_path) for c in candidates],
            image_size=image_size, resize=resize, batch_size=batch_size, seed=seed,
            root=str(root_path), skipped=skipped, split=split_spec,
        )
        self.min_size = min_size
        self.max_pixels = max_pixels
        if skipped:
            _warn_skipped(skipped, root_path)

    def manifest(self) -> dict[str, Any]:
        """`ImageData.manifest`, plus the files found but in no split (`"unused"`).

        Those are the files skipped while decoding: a reload lists them too, so
        the decode cache's key (the files in order) is the first load's.
        """
        manifest = super().manifest()
        used = np.zeros(len(self._files), bool)
        for rows in self._index.values():
            used[rows] = True
        manifest["unused"] = [[self._files[i], self.class_names[self._labels[i]]]
                              for i in np.flatnonzero(~used)]
        return manifest

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
        kwargs.setdefault("max_pixels", manifest.get("max_pixels", MAX_PIXELS))
        root = kwargs.pop("root", manifest["root"])
        return cls(root, manifest=manifest, **kwargs)


class SplitIgnoredWarning(UserWarning):
    """A `split` was given for a folder already split into train/, val/ and test/."""


def split_ignored(split_dirs: dict[str, Path] | None) -> bool:
    """Whether a folder's split folders (`scan.presplit_folders`) leave no use for fractions.

    A folder with train/, val/ (or validation/) and test/ is used as it is; one
    missing val/ or test/ has it split off train/ with the fractions.
    """
    return set(split_dirs or ()) == set(SPLITS)


def split_ignored_message(given: str, root: str | os.PathLike) -> str:
    """`<given> ignored: <root> is already split ...`; `given` as the caller spelled it."""
    return (f"{given} ignored: {root} is already split into train/, val/ and test/ folders, "
            "which are used as they are.")


def _check_arguments(resize: Any, batch_size: Any, min_size: Any, seed: Any) -> None:
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}. Received: resize={resize!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer. Received: {batch_size!r}")
    if not isinstance(min_size, int) or min_size < 1:
        raise ValueError(f"min_size must be a positive integer. Received: {min_size!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer. Received: seed={seed!r}")


def _check_root(root: str | os.PathLike) -> Path:
    root_path = Path(root).expanduser()
    if not root_path.exists():
        raise FileNotFoundError(f"Image folder not found: {root_path}")
    if not root_path.is_dir():
        raise NotADirectoryError(f"Expected a folder of class subfolders, got a file: {root_path}")
    return root_path.resolve()


def _plan(root_path: Path, manifest, split, skipped: list) -> tuple[dict, Any, Any]:
    """`(plan, split fractions or None, split spec to record)` from a manifest or the folder."""
    if manifest is not None:
        plan = plan_from_manifest(root_path, manifest)
        return plan, None, plan["split"]
    fractions = check_split_fractions(DEFAULT_SPLIT if split is None else split)
    plan = plan_from_folder(root_path, skipped)
    return plan, fractions, plan["split"] or fractions


def _check_manifest_files_decoded(decode_skipped: list[tuple[str, str]]) -> None:
    """A manifest's split is only reproducible if every file it lists still decodes."""
    if decode_skipped:
        path, reason = decode_skipped[0]
        raise ValueError(
            f"{len(decode_skipped)} file(s) the manifest lists can no longer be used, e.g. "
            f"{path}: {reason}. The manifest's splits cannot be rebuilt; start a new run."
        )


def _check_classes(plan: dict[str, Any], kept_labels: np.ndarray) -> None:
    class_names = plan["class_names"]
    counts = np.bincount(kept_labels, minlength=len(class_names))
    empty = [n for n, count in zip(class_names, counts, strict=True) if count == 0]
    if empty:
        where = ", ".join(str(p) for n in empty for p in plan["class_dirs"][n])
        raise ValueError(f"Class folder(s) {empty} contain no usable images ({where}).")


def _split_rows(plan, candidates, labels, kept_rows, fractions, seed, root_path) -> dict:
    """Row numbers per split: stratified here, or as a pre-split folder or a manifest gives.

    A pre-split folder missing val or test has it split off train, stratified.
    """
    class_names = plan["class_names"]
    if plan["split"] is None and fractions is not None:  # root/<class>/ : split here
        local = stratified_split(labels[kept_rows], fractions, seed, class_names, root_path)
        return {s: kept_rows[local[s]] for s in SPLITS}
    given = np.array([candidates[r][4] for r in kept_rows], dtype=object)
    index = {s: kept_rows[given == s] for s in SPLITS}
    # No test split by choice: a test fraction of 0, or a manifest of such a run.
    no_test = "test" not in plan["split_dirs"] and (fractions is None or fractions[2] == 0)
    missing_split = [s for s in ("val", "test")
                     if s not in plan["split_dirs"] and not (s == "test" and no_test)]
    if missing_split:
        index = split_off(index, missing_split[0], labels, fractions, seed, class_names,
                          plan["split_dirs"]["train"])
    for s in SPLITS:
        if s == "test" and no_test:
            continue
        absent = sorted(set(range(len(class_names))) - set(labels[index[s]].tolist()))
        if absent:
            raise ValueError(
                f"Class(es) {[class_names[c] for c in absent]} have no usable images in "
                f"the {s!r} split of {root_path}; every class needs images in train, "
                "val and test."
            )
    return index


def _warn_skipped(skipped: list[tuple[str, str]], root_path: Path) -> None:
    """One warning for all skipped files, counted by reason; `data.skipped` has each."""
    reasons = Counter(reason.split(" (")[0] for _, reason in skipped)
    summary = ", ".join(f"{n} {r}" for r, n in reasons.most_common())
    warnings.warn(
        f"Skipped {len(skipped)} file(s) in {root_path}: {summary}. "
        "See data.skipped for each path and reason (an exported bundle lists them in "
        "skipped.json and MODEL_CARD.md).",
        stacklevel=3,  # the caller of ImageFolder(...)
    )
