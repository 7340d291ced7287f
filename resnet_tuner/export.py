"""The export bundle: a directory that stands on its own.

    best/
      model.keras          Keras model; `keras.saving.load_model(p, safe_mode=True)`
      saved_model/         TensorFlow SavedModel, `serve` / `serving_default` take uint8
      model.tflite         TFLite conversion (agreement with Keras in metrics.json)
      classes.json         class names, index = model output
      config.json          ResNetConfig + input shape, classes, resize mode
      hyperparameters.json the trial's hyperparameters and TrainConfig
      manifest.json        which image was in which split
      metrics.json         held-out test metrics (scikit-learn)
      MODEL_CARD.md        what it is, how it was made, how to load it

A bundle is written beside its destination and swapped in at the end, so an
interrupted export never leaves half a bundle over an earlier one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np

from resnet_tuner.config import ResNetConfig, TrainConfig


class ExportWarning(UserWarning):
    """Part of a bundle could not be written (e.g. the TFLite conversion failed)."""


def _best_model(tuner):
    with warnings.catch_warnings():
        # The tuner's checkpoints hold the weights only; the optimizer is fresh.
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        return tuner.get_best_models(1)[0]


def export_best(tuner, directory: str | os.PathLike, data, *, refit: bool = False,
                verbose: int = 0) -> Path:
    """Exports the best model of a finished search as a bundle.

    Args:
        tuner: a keras-tuner tuner whose hypermodel is a `ResNetHyperModel`.
        directory: the bundle directory (replaced whole if it exists).
        data: the search's `ImageFolder` / `datasets.digits()`; its test split
            gives the bundle's metrics and its manifest is copied.
        refit: retrain the best configuration on train + val for the best
            trial's number of epochs, instead of exporting the trial's weights.

    Returns:
        The bundle directory.

    Raises:
        ValueError: the search has no completed trial.
    """
    best_trials = tuner.oracle.get_best_trials(1)
    if not best_trials or best_trials[0].score is None:
        raise ValueError(
            "The search has no completed trial to export yet; run (or resume) the search first."
        )
    trial = best_trials[0]
    hypermodel = tuner.hypermodel
    model_cfg, train_cfg = hypermodel.configs(trial.hyperparameters)
    if refit:
        model = refit_model(model_cfg, train_cfg, data, epochs=_best_epochs(trial, train_cfg),
                            verbose=verbose)
    else:
        model = _best_model(tuner)
    info = {"trial_id": trial.trial_id, "score": trial.score,
            "objective": tuner.oracle.objective.name, "refit": refit}
    return export_model(model, directory, data=data, model_config=model_cfg,
                        train_config=train_cfg,
                        hyperparameters=dict(trial.hyperparameters.values),
                        space=getattr(hypermodel, "space", None), trial=info)


def _best_epochs(trial, train_cfg: TrainConfig) -> int:
    values = trial.hyperparameters.values
    if "tuner/epochs" in values:
        return int(values["tuner/epochs"])
    best_step = getattr(trial, "best_step", None)
    return int(best_step) + 1 if best_step is not None else train_cfg.epochs


def refit_model(model_cfg: ResNetConfig, train_cfg: TrainConfig, data, epochs: int,
                verbose: int = 0) -> keras.Model:
    """Trains `model_cfg` from scratch on train + val (the test split stays held out).

    The two splits are shuffled together into full batches, as a trial's
    training set is (every training step has one shape; see `ImageData.dataset`).
    """
    import tensorflow as tf

    from resnet_tuner.model import build_resnet
    from resnet_tuner.training import compile_model, schedule_callbacks

    model = build_resnet(model_cfg, data.input_shape, data.num_classes)
    compile_model(model, train_cfg, data.num_classes)
    batch = train_cfg.batch_size
    images = sum(sum(data.counts[split].values()) for split in ("train", "val"))
    parts = [data.dataset(split, batch_size=batch, shuffle=False, drop_remainder=False).unbatch()
             for split in ("train", "val")]
    full = images >= batch
    combined = (parts[0].concatenate(parts[1])
                .shuffle(images, seed=data.seed, reshuffle_each_iteration=True)
                .batch(batch, drop_remainder=full)
                # unbatch() hides the length; Keras needs it to count steps per epoch.
                .apply(tf.data.experimental.assert_cardinality(
                    images // batch if full else 1)))
    model.fit(combined.prefetch(tf.data.AUTOTUNE), epochs=epochs, verbose=verbose,
              shuffle=False, callbacks=schedule_callbacks(train_cfg, epochs))
    return model


def export_model(
    model: keras.Model,
    directory: str | os.PathLike,
    *,
    data,
    model_config: ResNetConfig,
    train_config: TrainConfig | None = None,
    hyperparameters: dict[str, Any] | None = None,
    space=None,
    trial: dict[str, Any] | None = None,
) -> Path:
    """Writes the bundle for `model` (see the module docstring); returns its path."""
    target = Path(directory).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _write_bundle(model, staging, data, model_config, train_config, hyperparameters, space,
                      trial)
        _swap_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def serving_model(model: keras.Model, model_config: ResNetConfig, input_shape,
                  num_classes: int) -> keras.Model:
    """The same network without its augmentation layers, for SavedModel and TFLite.

    Augmentation is the identity at inference, but Keras' random layers still
    put random-number ops in the traced graph, which TFLite cannot run. The
    copy shares no state with `model`; weights are copied layer by layer.
    """
    from resnet_tuner.model import build_resnet
    from resnet_tuner.model.augment import without_augmentation

    plain_config = without_augmentation(model_config).replace(weights=None)
    plain = build_resnet(plain_config, input_shape, num_classes, name=model.name)
    for layer in plain.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return plain


def _swap_into_place(staging: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}-old-{os.getpid()}")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_bundle(model, folder: Path, data, model_config, train_config, hyperparameters,
                  space, trial) -> None:
    height, width, channels = data.input_shape
    x_test, y_test = data.arrays("test")
    model.save(folder / "model.keras")
    probs = model.predict(x_test, verbose=0, batch_size=64)
    metrics = held_out_metrics(probs, y_test, data.class_names)

    saved_model = folder / "saved_model"
    serving = serving_model(model, model_config, data.input_shape, data.num_classes)
    serving.export(str(saved_model), format="tf_saved_model", verbose=False)
    metrics["tflite"] = _tflite(saved_model, folder / "model.tflite", x_test, probs)
    if not metrics["tflite"]["converted"]:
        warnings.warn(f"TFLite conversion failed, so the bundle has no model.tflite "
                      f"(model.keras and saved_model/ are fine): {metrics['tflite']['error']}",
                      ExportWarning, stacklevel=3)

    config = {
        "model": model_config.to_dict(),
        "input_shape": [height, width, channels],
        "input_dtype": "uint8",
        "num_classes": data.num_classes,
        "image_size": [height, width],
        "resize": getattr(data, "resize", "stretch"),
        "binary": model.outputs[0].shape[-1] == 1,
    }
    _write_json(folder / "config.json", config)
    _write_json(folder / "classes.json", list(data.class_names))
    _write_json(folder / "hyperparameters.json", {
        "values": hyperparameters or {},
        "train": train_config.to_dict() if train_config else None,
        "trial": trial,
    })
    data.write_manifest(folder / "manifest.json")
    _write_json(folder / "metrics.json", metrics)
    (folder / "MODEL_CARD.md").write_text(
        model_card(model, data, config, metrics, hyperparameters, train_config, space, trial),
        "utf-8",
    )


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1, ensure_ascii=False, default=str), "utf-8")


def class_probabilities(probs: np.ndarray) -> np.ndarray:
    """(N, classes) probabilities from a softmax or a single sigmoid unit."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[-1] == 1:
        return np.concatenate([1 - probs, probs], axis=-1)
    return probs


def held_out_metrics(probs: np.ndarray, labels: np.ndarray, class_names) -> dict[str, Any]:
    """Accuracy, top-5 (over 5 classes), per-class report and confusion matrix."""
    from sklearn.metrics import classification_report, confusion_matrix, top_k_accuracy_score

    probs = class_probabilities(probs)
    predicted = probs.argmax(axis=1)
    classes = list(range(len(class_names)))
    out: dict[str, Any] = {
        "split": "test",
        "images": int(len(labels)),
        "accuracy": float(np.mean(predicted == labels)),
    }
    if len(class_names) > 5:
        out["top5_accuracy"] = float(
            top_k_accuracy_score(labels, probs, k=5, labels=classes)
        )
    out["per_class"] = classification_report(
        labels, predicted, labels=classes, target_names=list(class_names), output_dict=True,
        zero_division=0,
    )
    out["confusion_matrix"] = confusion_matrix(labels, predicted, labels=classes).tolist()
    return out


def _tflite(saved_model: Path, path: Path, x_test: np.ndarray, keras_probs: np.ndarray) -> dict:
    """Converts to TFLite and measures agreement with Keras; never fails the export."""
    import tensorflow as tf

    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
        path.write_bytes(converter.convert())
        interpreter = tf.lite.Interpreter(model_path=str(path))
        inp = interpreter.get_input_details()[0]
        out = interpreter.get_output_details()[0]
        interpreter.resize_tensor_input(inp["index"], list(x_test.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], x_test.astype(inp["dtype"]))
        interpreter.invoke()
        lite = interpreter.get_tensor(out["index"])
    except Exception as err:  # the converter's failures vary; the bundle stays useful
        if path.exists():
            path.unlink()
        return {"converted": False, "error": f"{type(err).__name__}: {str(err)[:500]}"}
    a, b = class_probabilities(keras_probs), class_probabilities(lite)
    return {
        "converted": True,
        "file": path.name,
        "test_images": int(len(x_test)),
        "top1_agreement": float(np.mean(a.argmax(1) == b.argmax(1))),
        "max_abs_probability_diff": float(np.max(np.abs(a - b))),
    }


def model_card(model, data, config, metrics, hyperparameters, train_config, space,
               trial) -> str:
    counts = data.counts
    split_lines = "\n".join(
        f"| {s} | {sum(counts[s].values())} | "
        + ", ".join(f"{k}: {v}" for k, v in counts[s].items()) + " |"
        for s in ("train", "val", "test")
    )
    tflite = metrics.get("tflite", {})
    if tflite.get("converted"):
        lite = (f"TFLite agrees with Keras on {100 * tflite['top1_agreement']:.1f} % of test "
                f"top-1 predictions (max probability difference "
                f"{tflite['max_abs_probability_diff']:.2g}).")
    else:
        lite = f"TFLite conversion failed, so no model.tflite: {tflite.get('error')}"
    top5 = (f", top-5 accuracy {100 * metrics['top5_accuracy']:.2f} %"
            if "top5_accuracy" in metrics else "")
    space_text = json.dumps(space.to_dict(), indent=1) if space is not None else "n/a"
    return f"""# Model card: {model.name}

A ResNet found by resnet_tuner.

## Data
- Source: `{data.root}`
- Classes ({data.num_classes}): {", ".join(data.class_names)}
- Images: {config["image_size"][0]}x{config["image_size"][1]} RGB uint8, resize mode
  `{config["resize"]}`; split seed {data.seed}, split {data.split}
  (`manifest.json` lists every file's split).

| split | images | per class |
|---|---|---|
{split_lines}

## Search
- Space: `{getattr(space, "source", "n/a")}`
- Best trial: {json.dumps(trial)}
- Hyperparameters: `{json.dumps(hyperparameters)}`
- Training: `{json.dumps(train_config.to_dict() if train_config else None)}`

<details><summary>Search space</summary>

```json
{space_text}
```
</details>

## Best configuration
{model.count_params():,} parameters.

```json
{json.dumps(config["model"], indent=1)}
```

## Test results (held-out test split, never seen by the search)
Accuracy {100 * metrics["accuracy"]:.2f} % on {metrics["images"]} images{top5}.
Per-class precision, recall and F1 and the confusion matrix are in `metrics.json`.
{lite}

## How to load
```python
import keras, resnet_tuner  # resnet_tuner registers the custom layers
model = keras.saving.load_model("model.keras", safe_mode=True)
probs = model.predict(uint8_images)  # (N, {config["image_size"][0]}, {config["image_size"][1]}, 3)
```
Without resnet_tuner: `tf.saved_model.load("saved_model").serve(uint8_images)`, or
`tf.lite.Interpreter("model.tflite")`. Images must be decoded to RGB and resized like
training: `resnet_tuner.load_image(path, {tuple(config["image_size"])}, "{config["resize"]}")`,
or `resnet-tuner predict <bundle> <images>`.
"""


def load_bundle(directory: str | os.PathLike) -> dict[str, Any]:
    """Reads a bundle: `{"model", "config", "classes", "metrics", "path"}`.

    Raises:
        FileNotFoundError: the directory is not a bundle.
    """
    folder = Path(directory)
    if not (folder / "model.keras").is_file() or not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"Not an export bundle (no model.keras / config.json): {folder}"
        )
    import resnet_tuner.model.layers  # noqa: F401  (registers the custom layers)
    import resnet_tuner.training  # noqa: F401

    return {
        "model": keras.saving.load_model(folder / "model.keras", safe_mode=True),
        "config": json.loads((folder / "config.json").read_text("utf-8")),
        "classes": json.loads((folder / "classes.json").read_text("utf-8")),
        "metrics": json.loads((folder / "metrics.json").read_text("utf-8")),
        "path": folder,
    }
