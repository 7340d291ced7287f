"""The export bundle: a directory that stands on its own.

    best/
      model.keras          Keras model; `keras.saving.load_model(p, safe_mode=True)`
      saved_model/         TensorFlow SavedModel, `serve` / `serving_default` take uint8
      model.tflite         LiteRT (TFLite)
      model.onnx           ONNX, with formats=("onnx", ...) (the `onnx` extra)
      model.xml, .bin      OpenVINO IR, with formats=("openvino", ...) (the `openvino` extra)
                           Which formats: `formats=` (default saved_model + litert);
                           each written by Keras' exporter and checked with its own
                           runtime, agreement with Keras in metrics.json (`resnet_tuner.formats`)
      classes.json         class names, index = model output
      config.json          ResNetConfig + input shape, classes, resize mode
      hyperparameters.json the trial's hyperparameters and TrainConfig
      manifest.json        which image was in which split
      metrics.json         held-out test metrics (scikit-learn); with no test split,
                           the validation split's, `"split": "val"` and a `"note"`
      skipped.json         every file of the image folder that was not used, and why
      MODEL_CARD.md        what it is, how it was made, how to load it and
                           preprocess images (text in `resnet_tuner.card`)

A bundle is written beside its destination and swapped in at the end, so an
interrupted export never leaves half a bundle over an earlier one. What the
best trial trained (its epochs, best epoch, devices) and `refit=True`'s
retraining are `resnet_tuner.export_refit`'s.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from resnet_tuner import card
from resnet_tuner import formats as _formats
from resnet_tuner.config import ResNetConfig, TrainConfig
from resnet_tuner.export_refit import (
    _best_epoch,
    _training_record,
    refit_model,
    trained_epochs,
)
from resnet_tuner.metrics import class_probabilities, held_out_metrics  # noqa: F401 (read here)


class ExportWarning(UserWarning):
    """Part of a bundle could not be written (e.g. the TFLite conversion failed)."""

#: Held-out images each deployment format is run on and compared with the Keras model.
FORMAT_CHECK_IMAGES = 1000


def _best_model(tuner):
    with warnings.catch_warnings():
        # The tuner's checkpoints hold the weights only; the optimizer is fresh.
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        return tuner.get_best_models(1)[0]


def export_best(tuner, directory: str | os.PathLike, data=None, *, test=None,
                class_names=None, refit: bool = False, verbose: int = 0,
                formats: str | Sequence[str] | None = None) -> Path:
    """Exports the best model of a finished search as a bundle.

    Args:
        tuner: a keras-tuner tuner whose hypermodel is a `ResNetHyperModel`.
        directory: the bundle directory (replaced whole if it exists).
        data: the search's `ImageFolder` / `datasets.digits()`; its test split
            gives the bundle's metrics, its manifest is copied and its
            skipped files are listed.
        test: instead of `data`, for a search on numpy arrays: held-out
            `(x_test, y_test)`, uint8 images of the model's input shape and
            integer labels.
        class_names: with `test`, the class names (index = label); default
            `"0"`, `"1"`, ...
        refit: retrain the best configuration on train + val for the epochs
            the best trial trained, instead of exporting the trial's weights
            (needs `data`).
        formats: the deployment formats written beside `model.keras`: names
            among `saved_model`, `litert`, `onnx`, `openvino` (a list or a
            comma-separated string) or `"all"`; default `saved_model` and
            `litert` (see `resnet_tuner.formats`).

    Returns:
        The bundle directory.

    Raises:
        ValueError: the search has no completed trial, neither or both of
            `data` and `test` are given, `test` does not fit the model, or
            `refit` without `data`; an unknown format.
        FormatUnavailableError: a requested format's packages are not
            installed (checked before anything is trained or written).

    Example:
        >>> tuner.search(x_train, y_train, validation_data=(x_val, y_val))
        >>> export_best(tuner, "best", test=(x_test, y_test), class_names=["cat", "dog"])
    """
    best_trials = tuner.oracle.get_best_trials(1)
    if not best_trials or best_trials[0].score is None:
        raise ValueError(
            "The search has no completed trial to export yet; run (or resume) the search first."
        )
    trial = best_trials[0]
    hypermodel = tuner.hypermodel
    formats = _formats.check_formats(formats)
    if refit and data is None:
        raise ValueError("refit=True retrains on the search's train and val splits, so it needs "
                         "data= (an ImageFolder); with test= arrays export the trial's weights.")
    data = _data_of(data, test, class_names, getattr(hypermodel, "input_shape", None),
                    getattr(hypermodel, "num_classes", None))
    model_cfg, train_cfg = hypermodel.configs(trial.hyperparameters)
    epochs, source = trained_epochs(tuner, trial, train_cfg.epochs)
    if epochs > train_cfg.head_epochs:  # a trial stopped in its phase 1 keeps its config
        train_cfg = dataclasses.replace(train_cfg, epochs=epochs)
    if refit:
        model = refit_model(model_cfg, train_cfg, data, epochs=epochs, verbose=verbose,
                            precision=getattr(hypermodel, "precision", "float32"))
    else:
        model = _best_model(tuner)
    values = trial.hyperparameters.values
    info = {"trial_id": trial.trial_id, "score": trial.score,
            "objective": tuner.oracle.objective.name, "refit": refit,
            "epochs": epochs, "epochs_source": source,
            **_training_record(tuner, trial, train_cfg.batch_size, refit)}
    best_epoch = None if refit else _best_epoch(tuner, trial)
    if best_epoch is not None:  # keras-tuner keeps the weights of the trial's best epoch
        info["weights_epochs"] = int(values.get("tuner/initial_epoch") or 0) + best_epoch + 1
    if not refit and values.get("tuner/initial_epoch"):
        info["initial_epoch"] = int(values["tuner/initial_epoch"])
        info["continued_from"] = values.get("tuner/trial_id")
    if "final/epochs" in values:  # run.budget's final training
        info["final_from"] = values.get("final/from_trial")
    return export_model(model, directory, data=data, model_config=model_cfg,
                        train_config=train_cfg, hyperparameters=dict(values),
                        space=getattr(hypermodel, "space", None), trial=info,
                        skipped=list(data.skipped) or _run_skipped(tuner), formats=formats)


def _run_skipped(tuner) -> list[tuple[str, str]]:
    """The skipped files a resnet-tuner run directory recorded (`<run>/skipped.json`).

    A run's later processes load its data from the manifest, which lists the
    used files only; the run directory keeps the list of skipped ones.
    """
    from resnet_tuner.run.rundir import PROJECT, RUN_FILE

    project = getattr(tuner, "project_dir", None)
    if not project or Path(project).name != PROJECT:
        return []
    run_dir = Path(project).parent
    path = run_dir / card.SKIPPED_FILE
    if not (run_dir / RUN_FILE).is_file() or not path.is_file():
        return []
    return card.read_skipped(path)


def _data_of(data, test, class_names, input_shape, num_classes):
    """`data`, or an `ImageData` holding only the test split of `test=(x, y)` arrays."""
    if (data is None) == (test is None):
        raise ValueError(
            "Give the held-out test images either as data= (the search's ImageFolder) or as "
            "test=(x_test, y_test) arrays, not both and not neither. "
            f"Received: data={type(data).__name__}, test={type(test).__name__}"
        )
    if data is not None:
        if class_names is not None:
            raise ValueError("class_names= goes with test= arrays; data= has its own "
                             f"class_names ({data.class_names}).")
        return data
    from resnet_tuner.data import ImageData

    try:
        x, y = test
    except (TypeError, ValueError):
        raise ValueError("test must be a pair (x_test, y_test). "
                         f"Received: {type(test).__name__}") from None
    x, y = np.asarray(x), np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    shape = tuple(input_shape) if input_shape else x.shape[1:]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != shape:
        raise ValueError(
            f"x_test must be uint8 images of shape (N, {', '.join(map(str, shape))}), as the "
            f"search's. Received: dtype {x.dtype}, shape {x.shape}"
        )
    if num_classes is None:
        num_classes = len(class_names) if class_names is not None else int(y.max(initial=0)) + 1
    names = [str(i) for i in range(num_classes)] if class_names is None else list(class_names)
    if len(names) != num_classes:
        raise ValueError(f"class_names must name the model's {num_classes} classes. "
                         f"Received: {len(names)} names {names}")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer) or len(y) == 0 or (
            y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"y_test must hold one integer label from 0 to {num_classes - 1} per image of "
            f"x_test ({len(x)}). Received: dtype {y.dtype}, shape {y.shape}"
        )
    return ImageData(x, y, [f"x_test[{i}]" for i in range(len(x))], {"test": np.arange(len(x))},
                     names, x.shape[1:3], resize=None, root=None, split="test arrays")


def export_model(
    model: keras.Model,
    directory: str | os.PathLike,
    *,
    data=None,
    test=None,
    class_names=None,
    model_config: ResNetConfig,
    train_config: TrainConfig | None = None,
    hyperparameters: dict[str, Any] | None = None,
    space=None,
    trial: dict[str, Any] | None = None,
    skipped=None,
    formats: str | Sequence[str] | None = None,
) -> Path:
    """Writes the bundle for `model` (see the module docstring); returns its path.

    The held-out test images come from `data` (an `ImageData`) or, as in
    `export_best`, from `test=(x_test, y_test)` with `class_names`. `skipped`
    (`[(path, reason), ...]`) defaults to `data.skipped`. `formats` as in
    `export_best`.
    """
    formats = _formats.check_formats(formats)
    outputs = int(model.outputs[0].shape[-1])
    data = _data_of(data, test, class_names, tuple(model.input_shape[1:]),
                    2 if outputs == 1 else outputs)
    skipped = list(data.skipped if skipped is None else skipped)
    target = Path(directory).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _write_bundle(model, staging, data, model_config, train_config, hyperparameters, space,
                      trial, skipped, formats)
        _swap_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def without_optimizer(model: keras.Model) -> keras.Model:
    """A copy of `model` with its weights and no optimizer, for `model.keras`.

    A compiled model saves its optimizer's variables, and `load_model` builds
    a fresh optimizer for them: when their numbers differ (a model from
    `tuner.get_best_models`, whose optimizer never ran) every load warns
    "Skipping variable loading for optimizer". A served model needs no
    optimizer state (Keras 3's `.keras` format has no `include_optimizer`).
    """
    if getattr(model, "optimizer", None) is None:
        return model
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def serving_model(model: keras.Model, model_config: ResNetConfig, input_shape,
                  num_classes: int) -> keras.Model:
    """The same network without its augmentation layers, for SavedModel and TFLite.

    Augmentation is the identity at inference, but Keras' random layers still
    put random-number ops in the traced graph, which TFLite cannot run. The
    copy shares no state with `model`; weights are copied layer by layer. It
    computes in float32 whatever `model`'s dtype policy (the weights are
    float32 under every policy), so the SavedModel and TFLite files run
    everywhere; `model.keras` keeps the training policy.
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
                  space, trial, skipped, formats=_formats.DEFAULT_FORMATS) -> None:
    input_shape = tuple(int(d) for d in model.input_shape[1:])
    height, width = input_shape[:2]
    # Without a test split (its fraction 0) the figures are the validation split's, said so.
    evaluated = "test" if len(data.labels("test")) else "val"
    x_test, y_test = data.arrays(evaluated)
    without_optimizer(model).save(folder / "model.keras")
    probs = model.predict(x_test, verbose=0, batch_size=64)
    metrics = held_out_metrics(probs, y_test, data.class_names, split=evaluated,
                               refit=bool((trial or {}).get("refit")))
    from resnet_tuner.model import precision_of

    precision = precision_of(model)
    metrics["precision"] = precision  # the policy these figures were computed with

    serving = serving_model(model, model_config, input_shape, data.num_classes)
    metrics["formats"] = {}
    # Each format is checked with its own runtime against the Keras model on the first
    # FORMAT_CHECK_IMAGES held-out images (all 10,000 of Fashion-MNIST's took 55 s of a
    # 83 s export for two formats); a failure never fails the export.
    check = slice(0, FORMAT_CHECK_IMAGES)
    for name in formats:
        record = _formats.write_format(name, serving, folder, x_test[check], probs[check])
        metrics["formats"][name] = record
        if not record["converted"]:
            warnings.warn(_formats.failure_line(name, record), ExportWarning, stacklevel=3)

    config = {
        "model": model_config.to_dict(),
        "input_shape": list(input_shape),
        "input_dtype": "uint8",
        "output_dtype": str(model.outputs[0].dtype),
        # The dtype policy of model.keras; saved_model/ and model.tflite compute in float32.
        "precision": precision,
        "num_classes": data.num_classes,
        "image_size": [height, width],
        # None: the images came as arrays, resized by whoever made them.
        "resize": getattr(data, "resize", "stretch"),
        "binary": model.outputs[0].shape[-1] == 1,
    }
    train = train_config.to_dict() if train_config else None
    skipped_record = card.skipped_record(skipped, data.root)
    _write_json(folder / "config.json", config)
    _write_json(folder / "classes.json", list(data.class_names))
    _write_json(folder / "hyperparameters.json", {
        "values": hyperparameters or {},
        "train": train,
        "trial": trial,
    })
    data.write_manifest(folder / "manifest.json")
    card.write_skipped(folder / card.SKIPPED_FILE, skipped, data.root)
    _write_json(folder / "metrics.json", metrics)
    text = card.model_card(name=model.name, params=model.count_params(), data=data,
                           config=config, metrics=metrics, hyperparameters=hyperparameters,
                           train_config=train, space=space, trial=trial,
                           skipped=skipped_record)
    (folder / "MODEL_CARD.md").write_text(text, "utf-8")


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1, ensure_ascii=False, default=str), "utf-8")


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
