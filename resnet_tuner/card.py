"""What an export bundle tells people: `MODEL_CARD.md` and `skipped.json`.

No TensorFlow here: the text is made from the bundle's JSON-ready records, and
`write_skipped` / `read_skipped` can be used where TensorFlow is not loaded
(e.g. a run directory's own `skipped.json`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resnet_tuner import formats
from resnet_tuner.config import PRETRAINED_STAGES

#: The file listing every file of the image folder that was not used, and why.
SKIPPED_FILE = "skipped.json"

#: What each resize mode does, for the card.
RESIZE_WORDS = {
    "stretch": "stretched to the size (aspect ratio not kept)",
    "crop": "scaled to cover the size, aspect ratio kept, centre cut out",
    "pad": "scaled to fit the size, aspect ratio kept, padded with black (letterbox)",
}

#: Where a trial's epoch count was read from.
EPOCH_SOURCES = {
    "history": "counted in the trial's per-epoch history (`history.json`)",
    "tuner/epochs": "keras-tuner Hyperband's `tuner/epochs` for the trial",
    "space": "the space's `epochs` setting: this tuner did not record the trial's own count",
}


def skipped_record(skipped: Sequence[tuple[str, str]], root: str | None) -> dict[str, Any]:
    """`{"root", "count", "files": [{"path", "reason"}]}`; paths inside `root` made relative."""
    files = []
    for path, reason in skipped:
        shown = str(path)
        if root:
            try:
                shown = Path(path).relative_to(root).as_posix()
            except ValueError:  # outside the folder: keep it whole
                pass
        files.append({"path": shown, "reason": str(reason)})
    return {"root": root, "count": len(files), "files": files}


def write_skipped(path: str | os.PathLike, skipped: Sequence[tuple[str, str]],
                  root: str | None) -> Path:
    """Writes `skipped_record(skipped, root)` as JSON to `path` (atomically); returns the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(skipped_record(skipped, root), indent=1, ensure_ascii=False),
                   "utf-8")
    os.replace(tmp, path)
    return path


def read_skipped(path: str | os.PathLike) -> list[tuple[str, str]]:
    """`[(path, reason), ...]` from a file `write_skipped` wrote."""
    record = json.loads(Path(path).read_text("utf-8"))
    return [(f["path"], f["reason"]) for f in record["files"]]


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def skipped_section(record: dict[str, Any]) -> str:
    if record["root"] is None:
        return "The images were given as arrays; no file was read, so none was skipped."
    if not record["files"]:
        return "No file was skipped."
    rows = "\n".join(f"| {_cell(f['path'])} | {_cell(f['reason'])} |" for f in record["files"])
    return (f"{record['count']} file(s) of the image folder were not used (also listed in "
            f"`{SKIPPED_FILE}`, relative to `{record['root']}`):\n\n"
            f"| file | reason |\n|---|---|\n{rows}")


def epochs_line(trial: dict[str, Any] | None, train_config: dict[str, Any] | None) -> str:
    """How many epochs the exported weights were trained for, and where that count comes from."""
    if trial and trial.get("refit"):
        return (f"- Epochs: {trial['epochs']} (refit from scratch on train + val for the best "
                f"trial's epoch count, {EPOCH_SOURCES[trial['epochs_source']]})")
    if trial and "epochs" in trial:
        text = f"- Epochs trained: {trial['epochs']} ({EPOCH_SOURCES[trial['epochs_source']]})"
        if trial.get("final_from") is not None:
            text += (f"; the time budget's final training: trial {trial['final_from']}'s "
                     "configuration trained again from scratch, its learning rate decayed "
                     "over the time left")
        if trial.get("initial_epoch"):
            text += (f"; epochs {trial['initial_epoch'] + 1}-{trial['epochs']} ran in this "
                     f"trial, continuing from trial {trial.get('continued_from')}'s weights")
        return text
    if train_config:
        return f"- Epochs: {train_config['epochs']} (the training configuration's setting)"
    return "- Epochs: not recorded"


def _backbone_name(backbone: str) -> str:
    """`ResNet50` for `resnet50` (keras.applications' names), a path in backticks."""
    if backbone in PRETRAINED_STAGES:
        return "ResNet" + backbone.removeprefix("resnet").upper()
    return f"backbone `{backbone}`"


def _backbone_stages(backbone: str) -> int | None:
    """The stages `freeze_stages` counts in `backbone`; None when a path's model is gone.

    A path backbone's are counted in its model (`model.backbones`, imported
    only then: the export that writes the card has TensorFlow loaded).
    """
    if backbone in PRETRAINED_STAGES:
        return PRETRAINED_STAGES[backbone]
    try:
        from resnet_tuner.model.backbones import backbone_stages

        return backbone_stages(backbone)
    except Exception:  # moved or deleted since the search: described without the count
        return None


def _stages(first: int, last: int) -> str:
    return f"stage {first}" if first == last else f"stages {first}-{last}"


def _epochs(n: int) -> str:
    return f"{n} epoch{'s' if n != 1 else ''}"


def fine_tuning_line(model: dict[str, Any], train: dict[str, Any] | None,
                     epochs: int | None = None) -> str:
    """What trained in each phase of a model on a pretrained or path backbone ("" for scratch).

    E.g. `- Fine-tuning: phase 1, 3 epochs: ResNet50 frozen (stages 1-5), head
    trained; phase 2, 7 epochs: stages 1-3 frozen, stages 4-5 and head trained at
    0.1x the learning rate`. Reads the rules of `phases.plan_phases`: a
    `head_epochs` of 0, or a `freeze_stages` that leaves nothing to unfreeze,
    is one phase. `epochs` is how many the weights were trained for (default
    `train["epochs"]`): fewer than `head_epochs` ran phase 1 only.
    """
    backbone = model.get("backbone", "scratch")
    if backbone == "scratch" or not train:
        return ""
    name, frozen = _backbone_name(backbone), int(model.get("freeze_stages", 0))
    total = _backbone_stages(backbone)
    epochs = int(train["epochs"] if epochs is None else epochs)
    head = int(train.get("head_epochs") or 0)

    def whole() -> str:
        stages = f"stages 1-{total}" if total else "all its stages"
        return f"{name} frozen ({stages}), head trained"

    def partial(named: bool) -> str:
        """Stages 1..frozen frozen; `named`: the backbone named (one phase says it first)."""
        if frozen == 0:
            if named:
                return f"{name} and head trained (nothing frozen)"
            return "nothing frozen, backbone and head trained"
        subject = f"{_stages(1, frozen)} of {name}" if named else _stages(1, frozen)
        rest = (f"{_stages(frozen + 1, total)} and head" if total
                else "its later stages and the head")
        return f"{subject} frozen, {rest} trained"

    nothing_to_unfreeze = bool(total) and frozen >= total
    batchnorm = (f"; every BatchNorm layer of {name} frozen (inference mode) throughout"
                 if model.get("frozen_batchnorm") and not nothing_to_unfreeze else "")
    if not head or nothing_to_unfreeze:
        text = f"- Fine-tuning: one phase, {_epochs(epochs)}: "
        text += whole() if nothing_to_unfreeze else partial(named=True)
        if head:
            text += (f" (head_epochs = {head} had no effect: freeze_stages = {frozen} leaves "
                     "no stage to unfreeze)")
        return text + batchnorm
    text = f"- Fine-tuning: phase 1, {_epochs(min(head, epochs))}: {whole()}; "
    if epochs <= head:
        return text + f"phase 2 did not run (training ended within the {head} head epochs)"
    scale = float(train.get("finetune_lr_scale", 1.0))
    return (text + f"phase 2, {_epochs(epochs - head)}: {partial(named=False)} at "
            f"{scale:g}x the learning rate" + batchnorm)


def precision_line(config: dict[str, Any], trial: dict[str, Any] | None) -> str:
    """The dtype policy and devices the weights were trained with."""
    precision = (trial or {}).get("precision") or config.get("precision", "float32")
    text = f"- Precision: `{precision}` (Keras dtype policy"
    if precision != "float32":
        text += ("; weights float32, layers compute in 16 bits, the classifier in float32; "
                 "`model.keras` keeps this policy, `saved_model/` and `model.tflite` compute "
                 "in float32")
    text += ")"
    replicas = (trial or {}).get("replicas")
    if replicas and replicas > 1:
        text += (f"; trained on {replicas} replicas (tf.distribute.MirroredStrategy), global "
                 f"batch {trial['batch_size']} ({trial['batch_size_per_replica']} per replica)")
    return text


def results_head(metrics: dict[str, Any], top5: str = "") -> str:
    """The results section's title and accuracy line: of the test split, or said plainly
    to be the validation split's when there is none (`metrics["note"]`)."""
    figures = f"{100 * metrics['accuracy']:.2f} % on {metrics['images']} images{top5}."
    if metrics.get("split", "test") == "test":
        return ("## Test results (held-out test split, never seen by the search)\n"
                f"Accuracy {figures}")
    note = metrics.get("note", "no test split")
    return (f"## Validation results (no test split)\n**{note[0].upper()}{note[1:]}.**\n\n"
            f"Validation accuracy {figures}")


# The exact rule of `resnet_tuner.data.decode` (`decode_image`, `_resize_to`,
# `resize_image`) for 8-bit images without transparency; tests/test_export.py
# runs it against `load_image`, so the two cannot drift apart.
_OPENCV_SNIPPET = '''import cv2
import numpy as np

SIZE, RESIZE = ({height}, {width}), "{resize}"  # (height, width) and resize mode of this model


def resize(image, width, height):
    h, w = image.shape[:2]
    if (width, height) == (w, h):
        return image
    if width >= w and height >= h:
        interpolation = cv2.INTER_CUBIC  # enlarging
    elif w < 2 * width and h < 2 * height:
        interpolation = cv2.INTER_LINEAR  # shrinking by less than 2x
    else:
        interpolation = cv2.INTER_AREA  # shrinking by 2x or more
    return cv2.resize(image, (width, height), interpolation=interpolation)


def load(path):
    data = np.fromfile(path, np.uint8)
    if data[:3].tobytes() == b"\\xff\\xd8\\xff":  # JPEG: EXIF orientation applied
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
        room = min(image.shape[:2]) / max(SIZE)  # decoded reduced in the DCT domain
        factor = next((k for k in (8, 4, 2) if room >= k), 1)
        if factor > 1:
            image = cv2.imdecode(data, getattr(cv2, f"IMREAD_REDUCED_COLOR_{{factor}}"))
    else:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    height, width = SIZE
    h, w = image.shape[:2]
    if RESIZE == "stretch":
        return resize(image, width, height)
    scale = (max if RESIZE == "crop" else min)(height / h, width / w)
    image = resize(image, max(1, round(w * scale)), max(1, round(h * scale)))
    h, w = image.shape[:2]
    if RESIZE == "crop":
        top, left = (h - height) // 2, (w - width) // 2
        return np.ascontiguousarray(image[top : top + height, left : left + width])
    canvas = np.zeros((height, width, 3), np.uint8)
    top, left = (height - h) // 2, (width - w) // 2
    canvas[top : top + h, left : left + w] = image
    return canvas
'''


def opencv_snippet(image_size: Sequence[int], resize: str) -> str:
    """Python code (OpenCV + NumPy only) whose `load(path)` preprocesses as training did."""
    height, width = image_size
    return _OPENCV_SNIPPET.format(height=height, width=width, resize=resize)


def preprocessing_section(image_size: Sequence[int], resize: str | None) -> str:
    """The card's "Preprocessing" section: the interpolation rule and how to reproduce it."""
    height, width = image_size
    if resize is None:
        return (f"The images were given as arrays, so resnet_tuner did not decode or resize "
                f"them: prepare new images exactly as the arrays were prepared, as RGB uint8 "
                f"of {height}x{width}.")
    return f"""The model takes RGB uint8 images of {height}x{width} (height x width), unscaled:
its first layer rescales them. Training images were decoded with OpenCV and
{RESIZE_WORDS[resize]} (resize mode `{resize}`), interpolated with `cv2.INTER_AREA`
when shrinking by 2x or more, `cv2.INTER_LINEAR` (bilinear) when shrinking by
less than 2x and `cv2.INTER_CUBIC` (bicubic) when enlarging; a JPEG at least twice
the size is first decoded reduced by 2, 4 or 8 in the DCT domain
(`cv2.IMREAD_REDUCED_COLOR_*`). Another resize (e.g. a plain `cv2.resize`,
bilinear on the full image) gives other pixels and other probabilities.

With resnet_tuner, exactly as training (any format; transparency composited on white):
```python
from resnet_tuner import load_image
image = load_image("photo.jpg", ({height}, {width}), "{resize}")  # ({height}, {width}, 3) uint8
probs = model.predict(image[None])
```

Without resnet_tuner, with OpenCV and NumPy only (the same pixels for JPEG and for
8-bit PNG, BMP, WebP or TIFF without transparency; `load_image` also composites
transparent images on white and rounds 16-bit ones to 8 bits):
```python
{opencv_snippet(image_size, resize)}```"""


def model_card(*, name: str, params: int, data, config: dict[str, Any],
               metrics: dict[str, Any], hyperparameters, train_config: dict[str, Any] | None,
               space, trial: dict[str, Any] | None, skipped: dict[str, Any]) -> str:
    """The text of `MODEL_CARD.md`."""
    counts = data.counts
    arrays = data.root is None
    split_lines = "\n".join(
        f"| {s} | {sum(counts[s].values())} | "
        + ", ".join(f"{k}: {v}" for k, v in counts[s].items()) + " |"
        for s in ("train", "val", "test") if not arrays or sum(counts[s].values())
    )
    if arrays:
        source = ("- Source: numpy arrays (`export_best(..., test=(x_test, y_test))`); the "
                  "bundle knows the test split only.")
    else:
        source = (f"- Source: `{data.root}`; split seed {data.seed}, split {data.split} "
                  f"(`manifest.json` lists every file's split).")
    deployed = formats.card_section(metrics.get("formats", {}), config["image_size"],
                                    config["resize"], bool(config.get("binary")))
    top5 = (f", top-5 accuracy {100 * metrics['top5_accuracy']:.2f} %"
            if "top5_accuracy" in metrics else "")
    space_text = json.dumps(space.to_dict(), indent=1) if space is not None else "n/a"
    height, width = config["image_size"]
    training_lines = "\n".join(line for line in (
        epochs_line(trial, train_config),
        fine_tuning_line(config["model"], train_config,
                         (trial or {}).get("weights_epochs") or (trial or {}).get("epochs")),
        precision_line(config, trial)) if line)
    resized = (f"resize mode `{config['resize']}`" if config["resize"]
               else "as given (arrays, not resized by resnet_tuner)")
    return f"""# Model card: {name}

A ResNet found by resnet_tuner.

## Data
{source}
- Classes ({data.num_classes}): {", ".join(data.class_names)}
- Images: {height}x{width} RGB uint8, {resized} (see Preprocessing).

| split | images | per class |
|---|---|---|
{split_lines}

### Skipped files
{skipped_section(skipped)}

## Search
- Space: `{getattr(space, "source", "n/a")}`
- Best trial: {json.dumps(trial)}
{training_lines}
- Hyperparameters: `{json.dumps(hyperparameters)}`
- Training: `{json.dumps(train_config)}`

<details><summary>Search space</summary>

```json
{space_text}
```
</details>

## Best configuration
{params:,} parameters.

```json
{json.dumps(config["model"], indent=1)}
```

{results_head(metrics, top5)}
Per-class precision, recall and F1 and the confusion matrix are in `metrics.json`.

## How to load
```python
import keras, resnet_tuner  # resnet_tuner registers the custom layers
model = keras.saving.load_model("model.keras", safe_mode=True)
probs = model.predict(uint8_images)  # (N, {height}, {width}, 3)
```
`model.keras` holds no optimizer state (it loads without warnings); compile it to
train further. Without resnet_tuner: the deployment formats below. From the command
line: `resnet-tuner predict <bundle> <images>`.

## Deployment formats
{deployed}

## Preprocessing
{preprocessing_section(config["image_size"], config["resize"])}
"""
