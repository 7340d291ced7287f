"""Classifying image files with an exported bundle, preprocessed as its model trained.

`predict_files` is what `resnet-tuner predict` prints; it is the Python
equivalent for a script that serves a bundle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def training_limits(bundle_dir: str | os.PathLike) -> dict:
    """`min_size` and `max_pixels` of the images the model trained on (the bundle's manifest).

    Prediction refuses what training skipped (e.g. a 4x4 image), with the
    reason the skipped list gives.
    """
    path = Path(bundle_dir) / "manifest.json"
    manifest = json.loads(path.read_text("utf-8")) if path.is_file() else {}
    return {key: manifest[key] for key in ("min_size", "max_pixels") if manifest.get(key)}


def predict_files(bundle: str | os.PathLike | dict, paths: Sequence[str | os.PathLike],
                  top: int = 1) -> list[dict[str, Any]]:
    """The `top` classes of each image file, best first.

    Args:
        bundle: a bundle directory, or what `resnet_tuner.export.load_bundle` returned.
        paths: image files.
        top: classes per image.

    Returns:
        One dict per path, in order: `{"image", "class", "probability",
        "predictions": [{"class", "probability"}, ...]}`, or `{"image", "error"}`
        for a file that cannot be used (unreadable, too small, too large).
    """
    import numpy as np

    from resnet_tuner.data import ImageError, load_image
    from resnet_tuner.export import load_bundle
    from resnet_tuner.metrics import class_probabilities

    if not isinstance(bundle, dict):
        bundle = load_bundle(bundle)
    size = tuple(bundle["config"]["image_size"])
    resize = bundle["config"].get("resize", "stretch")
    limits = training_limits(bundle["path"])
    rows, images = [], []
    for path in paths:
        try:
            images.append(load_image(path, size, resize, **limits))
            rows.append({"image": str(path)})
        except ImageError as err:
            rows.append({"image": str(path), "error": str(err)})
    if images:
        probs = class_probabilities(bundle["model"].predict(np.stack(images), verbose=0))
        good = [r for r in rows if "error" not in r]
        for row, p in zip(good, probs, strict=True):
            row["predictions"] = [
                {"class": bundle["classes"][i], "probability": round(float(p[i]), 6)}
                for i in np.argsort(-p)[:top]
            ]
            row["class"] = row["predictions"][0]["class"]
            row["probability"] = row["predictions"][0]["probability"]
    return rows
