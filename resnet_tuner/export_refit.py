"""The best trial as `export_best` reads it, and its refit on train + val.

* `trained_epochs`, `_best_epoch`: how long a trial's weights trained and
  which epoch keras-tuner kept (from our tuners' `history.json`, keras-tuner's
  `tuner/epochs`, or the space);
* `_training_record`: its dtype policy, devices and batch;
* `refit_model`: the configuration trained again from scratch on train +
  val, in the phases its trial trained (`refit=True`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras

from resnet_tuner.config import ResNetConfig, TrainConfig


def trained_epochs(tuner, trial, default: int) -> tuple[int, str]:
    """How many epochs `trial`'s weights were trained for, and where that was read.

    Our tuners' `history.json` has one entry per epoch that ran (early
    stopping included); a Hyperband trial that continued another trial's
    weights ran from `tuner/initial_epoch`. keras-tuner's own Hyperband
    records `tuner/epochs` in the trial's hyperparameters. Other keras-tuner
    tuners record no count, and `default` (the space's `epochs`) is returned.

    Returns:
        `(epochs, source)`, source one of `card.EPOCH_SOURCES`.
    """
    values = trial.hyperparameters.values
    history = _trial_history(tuner, trial)
    if history:
        return int(values.get("tuner/initial_epoch") or 0) + len(history), "history"
    if "tuner/epochs" in values:
        return int(values["tuner/epochs"]), "tuner/epochs"
    return int(default), "space"


def _best_epoch(tuner, trial) -> int | None:
    """The index (in its `history.json`) of the epoch whose weights keras-tuner kept for
    `trial`: the best by the search's objective. None without that record."""
    objective = tuner.oracle.objective
    try:
        path = Path(tuner.get_trial_dir(trial.trial_id)) / "history.json"
        values = (json.loads(path.read_text("utf-8")).get("history") or {})[objective.name]
    except (AttributeError, OSError, ValueError, KeyError, TypeError):
        return None
    if not values:
        return None
    pick = max if objective.direction == "max" else min
    return values.index(pick(values))


def _trial_history(tuner, trial) -> list | None:
    """The per-epoch losses `RecordingTuner` wrote for `trial`, or None."""
    try:
        path = Path(tuner.get_trial_dir(trial.trial_id)) / "history.json"
        history = json.loads(path.read_text("utf-8")).get("history") or {}
    except (AttributeError, OSError, ValueError):
        return None
    return next(iter(history.values()), None) if history else None


def _training_record(tuner, trial, batch_size: int, refit: bool) -> dict[str, Any]:
    """The trial's dtype policy, replicas and batch; a refit trains on one device."""
    from resnet_tuner.devices import training_record

    if hasattr(tuner, "training_record") and not refit:  # our tuners
        return tuner.training_record(trial)
    return training_record(getattr(tuner.hypermodel, "precision", "float32"),
                           None if refit else tuner.distribution_strategy, batch_size)


def refit_model(model_cfg: ResNetConfig, train_cfg: TrainConfig, data, epochs: int,
                verbose: int = 0, precision: str = "float32") -> keras.Model:
    """Trains `model_cfg` from scratch on train + val (the test split stays held out),
    with the dtype policy `precision` (`build_resnet`), on one device.

    The two splits are shuffled together into full batches, as a trial's
    training set is (every training step has one shape; see `ImageData.dataset`).
    """
    import tensorflow as tf

    from resnet_tuner.model import build_resnet
    from resnet_tuner.model.backbones import backbone_stages
    from resnet_tuner.phases import fit_in_phases, plan_phases
    from resnet_tuner.training import compile_model

    model = build_resnet(model_cfg, data.input_shape, data.num_classes, precision=precision)
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
    stages = None if model_cfg.backbone == "scratch" else backbone_stages(model_cfg.backbone)
    fit_in_phases(  # two-phase fine-tuning refits in its two phases, as its trial trained
        model, train_cfg, plan_phases(train_cfg, epochs, 0, model_cfg.freeze_stages, stages,
                                       model_cfg.frozen_batchnorm),
        lambda model, phase, **kwargs: model.fit(combined.prefetch(tf.data.AUTOTUNE),
                                                 shuffle=False, **kwargs),
        num_classes=data.num_classes, built_frozen=model_cfg.freeze_stages, verbose=verbose)
    return model
