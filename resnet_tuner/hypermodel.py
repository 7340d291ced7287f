"""`ResNetHyperModel`: a thin keras-tuner HyperModel over the space and the builder.

`build(hp)` = sample config -> build network -> compile.
`fit(hp, model, ...)` is where per-trial training choices live (batch size,
epochs, class weights, early stopping, the phases of two-phase fine-tuning),
as keras-tuner's documentation recommends. Each phase is one call of
`ResNetHyperModel._fit_phase`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np

from resnet_tuner.config import ResNetConfig, TrainConfig
from resnet_tuner.devices import resolve_precision
from resnet_tuner.model import build_resnet
from resnet_tuner.model.backbones import backbone_stages
from resnet_tuner.phases import Phase, fit_in_phases, plan_phases
from resnet_tuner.space import SearchSpace, load_space
from resnet_tuner.training import EXTRA_METRICS, compile_model

#: Metrics every model computes, besides `EXTRA_METRICS` (top-5 accuracy only
#: with more than five classes).
_COMPILED = ("loss", "accuracy", "top5_accuracy")


def _is_image_data(x: Any) -> bool:
    """An `ImageFolder` / `datasets.digits()` object, or anything with their interface.

    Duck-typed rather than an `isinstance` check so that a user's own data
    object with `dataset(split, ...)`, `labels(split)` and `class_names` works too.
    """
    return all(hasattr(x, name) for name in ("dataset", "labels", "class_names"))


class ResNetHyperModel(kt.HyperModel):
    """Searches ResNets, augmentation and transfer-freeze depth with any keras-tuner tuner.

    Args:
        space: a preset name (`"quick"`, `"mini"`, `"paper"`, `"cifar"`,
            `"transfer"`, `"full"`), a TOML file path, a dict, or a `SearchSpace`.
        input_shape: `(height, width, channels)` of the images (uint8 0..255).
            Taken from `data` when omitted.
        num_classes: number of classes. Taken from `data` when omitted.
        data: optional `ImageFolder` (or `datasets.digits()`) to read
            `input_shape` and `num_classes` from.
        class_weight: `None`, `"balanced"` (scikit-learn's, from the training
            labels) or a dict `{class_index: weight}` passed to `fit`.
        objective: what the search ranks trials by (a name or a
            `kt.Objective`; a name ending in "loss" is minimized, others
            maximized). The models compute the metric it names, e.g.
            `"val_balanced_accuracy"` compiles `training.BalancedAccuracy`.
        early_stopping: end a trial's training after this many epochs without
            a better `objective` (`keras.callbacks.EarlyStopping`); None trains
            every epoch.
        precision: the dtype policy each trial's model trains with:
            `"auto"` (default; resolved here by `devices.resolve_precision`:
            mixed_float16 on GPUs with tensor cores, mixed_bfloat16 on CPUs
            with native bfloat16, float32 otherwise), `"float32"`,
            `"mixed_float16"` or `"mixed_bfloat16"`. Inputs stay uint8 and
            outputs float32; `self.precision` is the resolved policy.
        feature_cache: compute a trial's frozen stages once (`model.features`):
            when its first stages are frozen and nothing before them changes in
            training (no augmentation), their output for the training and
            validation images is kept on disk and the rest of the model trains
            on it; trials with the same backbone, weights, frozen stages and
            images reuse it. True: in `$RESNET_TUNER_CACHE` (default
            `~/.cache/resnet_tuner`, beside the image cache); a folder: there;
            False: every epoch runs every image through the whole model.
        name: optional name of the HyperModel.

    Example:
        >>> hm = ResNetHyperModel("quick", input_shape=(32, 32, 3), num_classes=10)
        >>> tuner = kt.RandomSearch(hm, objective="val_accuracy", max_trials=3)
        >>> tuner.search(x_train, y_train, validation_data=(x_val, y_val))

        With an `ImageFolder`, pass the data object itself; its train and
        validation splits are batched with each trial's batch size:

        >>> tuner.search(data)
    """

    def __init__(
        self,
        space: str | Path | Mapping[str, Any] | SearchSpace = "quick",
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
        *,
        data: Any = None,
        class_weight: str | Mapping[int, float] | None = None,
        objective: str | kt.Objective = "val_accuracy",
        early_stopping: int | None = None,
        precision: str = "auto",
        feature_cache: bool | str | Path = True,
        name: str | None = None,
    ):
        super().__init__(name=name, tunable=True)
        self.space = load_space(space)
        if input_shape is None and data is not None:
            input_shape = data.input_shape
        if num_classes is None and data is not None:
            num_classes = data.num_classes
        if input_shape is None or num_classes is None:
            raise ValueError(
                "ResNetHyperModel needs input_shape and num_classes, or data= to read them "
                f"from. Received: input_shape={input_shape!r}, num_classes={num_classes!r}"
            )
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        if class_weight not in (None, "balanced") and not isinstance(class_weight, Mapping):
            raise ValueError(
                "class_weight must be None, 'balanced' or a dict {class_index: weight}. "
                f"Received: class_weight={class_weight!r}"
            )
        self.class_weight = class_weight
        if not isinstance(objective, kt.Objective):
            objective = kt.Objective(objective, "min" if objective.endswith("loss") else "max")
        metric = objective.name.removeprefix("val_")
        if metric not in _COMPILED and metric not in EXTRA_METRICS:
            raise ValueError(
                "objective must name a metric the models compute: "
                f"{', '.join(f'val_{m}' for m in (*_COMPILED, *EXTRA_METRICS))}. "
                f"Received: objective={objective.name!r}"
            )
        self.objective = objective
        self.extra_metrics = (metric,) if metric in EXTRA_METRICS else ()
        if early_stopping is not None and (
            not isinstance(early_stopping, int) or isinstance(early_stopping, bool)
            or early_stopping < 1
        ):
            raise ValueError("early_stopping must be a positive number of epochs or None. "
                             f"Received: early_stopping={early_stopping!r}")
        self.early_stopping = early_stopping
        self.precision = resolve_precision(precision)
        if not isinstance(feature_cache, (bool, str, Path)):
            raise ValueError("feature_cache must be True, False or a folder. "
                             f"Received: feature_cache={feature_cache!r}")
        self.feature_cache = feature_cache
        # Fail now, not in trial 1: every default of the space must build here.
        self.configs(kt.HyperParameters())

    def configs(self, hp: kt.HyperParameters) -> tuple[ResNetConfig, TrainConfig]:
        """The model and training configs of a trial's hyperparameters.

        A `binary_head` in the space means "one sigmoid unit when there are two
        classes"; with more classes the head is a softmax.
        """
        model_cfg, train_cfg = self.space.sample(hp)
        if model_cfg.binary_head and self.num_classes != 2:
            model_cfg = model_cfg.replace(binary_head=False)
        return model_cfg, train_cfg

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        model_cfg, train_cfg = self.configs(hp)
        model = build_resnet(model_cfg, self.input_shape, self.num_classes,
                             precision=self.precision)
        return compile_model(model, train_cfg, self.num_classes, self.extra_metrics)

    def fit(self, hp: kt.HyperParameters, model: keras.Model, x=None, y=None,
            validation_data=None, **kwargs):
        """Trains one trial's model with its batch size and epochs.

        `x` may be numpy arrays (with `y`), a `tf.data.Dataset` (rebatched to
        the trial's batch size) or an `ImageFolder`-like data object (its
        `train` split, validated on its `val` split unless `validation_data`
        is given).

        With two-phase fine-tuning (`TrainConfig.head_epochs` > 0 and a
        pretrained or path backbone; `phases.plan_phases`), phase 1 trains
        the head on the whole backbone frozen, then phase 2 unfreezes down to
        `freeze_stages` and recompiles at `finetune_lr_scale` times the
        learning rate. Epochs keep one numbering (`fit(initial_epoch=)`), the
        callbacks given (keras-tuner's, the budget's) are the same objects in
        both phases, each phase has its own learning-rate curve, and the
        `History` returned holds every epoch of both. A callback that stops
        training in phase 1 (a deadline, early stopping, the median rule)
        ends the trial there. `EarlyStopping` counts its patience afresh in
        phase 2 (a new regime, whose first epochs may dip).
        """
        import tensorflow as tf

        model_cfg, train = self.configs(hp)
        kwargs.setdefault("epochs", train.epochs)
        class_weight = self.class_weight
        as_given = (x, y, validation_data, train.batch_size)  # for cached features (_fit_phase)
        if _is_image_data(x):
            data = x
            if validation_data is None:
                validation_data = data.dataset("val", batch_size=train.batch_size, shuffle=False)
            x = data.dataset("train", batch_size=train.batch_size, shuffle=True)
            if class_weight == "balanced":
                class_weight = balanced_class_weights(data.labels("train"), self.num_classes)
        elif isinstance(x, tf.data.Dataset):
            if class_weight == "balanced":
                raise ValueError(
                    "class_weight='balanced' needs the training labels: search on numpy "
                    "arrays or an ImageFolder, or pass a dict {class_index: weight}. "
                    "Received: a tf.data.Dataset"
                )
            x = full_batches(x, train.batch_size, len(self.input_shape))
        else:
            if class_weight == "balanced":
                class_weight = balanced_class_weights(np.asarray(y), self.num_classes)
            if y is not None and "sample_weight" not in kwargs and kwargs.get("shuffle", True):
                x, y = shuffled_full_batches(x, y, train.batch_size), None
                kwargs.pop("shuffle", None)
            else:
                kwargs.setdefault("batch_size", train.batch_size)
        if class_weight is not None:
            kwargs.setdefault("class_weight", dict(class_weight))
        # A time budget's final training decays its learning rate over the time it has,
        # up to its deadline (run.budget), rather than over a guessed number of epochs.
        from resnet_tuner.run.budget import FINAL_EPOCHS, Deadline

        given = list(kwargs.pop("callbacks", None) or [])
        deadline = next((c for c in given if isinstance(c, Deadline)), None)
        ends_at = deadline.at if deadline is not None and FINAL_EPOCHS in hp.values else None
        stages = None if model_cfg.backbone == "scratch" else backbone_stages(model_cfg.backbone)
        phases = plan_phases(train, kwargs.pop("epochs"), kwargs.pop("initial_epoch", None) or 0,
                             model_cfg.freeze_stages, stages, model_cfg.frozen_batchnorm)
        last = [FailOnNaN()]
        if self.early_stopping:
            last.append(keras.callbacks.EarlyStopping(
                monitor=self.objective.name, mode=self.objective.direction,
                patience=self.early_stopping))
        try:
            return fit_in_phases(
                model, train, phases,
                lambda model, **fit_kwargs: self._fit_phase(model, x, y, validation_data,
                                                            given=as_given, **fit_kwargs),
                num_classes=self.num_classes, extra_metrics=self.extra_metrics,
                built_frozen=model_cfg.freeze_stages, callbacks=given, last_callbacks=last,
                ends_at=ends_at, **kwargs)
        except (tf.errors.ResourceExhaustedError, MemoryError) as err:
            # Recorded as a FAILED trial with this reason; the search goes on.
            raise kt.errors.FailedTrialError(
                f"out of memory training {model.name} ({model.count_params():,} parameters, "
                f"batch size {train.batch_size}): {str(err).splitlines()[0][:300]}"
            ) from err

    def _fit_phase(self, model: keras.Model, x, y, validation_data, *, phase: Phase,
                   given: tuple = (None, None, None, None), **kwargs):
        """Trains `model` for one `phase` of a trial: the one place a trial calls `fit`.

        `kwargs` are `fit`'s (`epochs` and `initial_epoch` are the phase's,
        `callbacks` the trial's with the phase's schedule). Replace it to train a
        phase differently, e.g. on cached features of its frozen stages (1 to
        `phase.frozen_stages`; `phase.head_only`: the whole backbone); it
        returns the phase's `History`. `given` is the trial's data as `fit`
        received it (`x`, `y`, `validation_data`) and its batch size.

        With `feature_cache`, a phase whose frozen stages qualify trains on
        their cached output (`features.cached_fit`, same batch size, same
        callbacks); otherwise, or when the data is a `tf.data.Dataset`, it
        trains `model` on the images.
        """
        if self.feature_cache and phase.frozen_stages:
            from resnet_tuner.model.features import cached_fit

            raw_x, raw_y, raw_validation, batch_size = given
            cached_kwargs = {k: v for k, v in kwargs.items() if k != "batch_size"}
            history = cached_fit(
                model, phase.frozen_stages, raw_x, raw_y, raw_validation,
                cache_dir=None if self.feature_cache is True else self.feature_cache,
                batch_size=batch_size, **cached_kwargs)
            if history is not None:
                return history
        import tensorflow as tf

        if isinstance(x, tf.data.Dataset):
            # A dataset orders its own rows (ours reshuffle every epoch); fit's default
            # shuffle=True would only make Keras warn that it ignores it.
            kwargs["shuffle"] = False
        return model.fit(x, y, validation_data=validation_data, **kwargs)


def full_batches(ds, batch_size: int, image_rank: int = 3):
    """`ds` (batched or not) rebatched to exactly `batch_size`, the last smaller batch left out.

    Every training step then has one input shape: a second model trained in
    the same process with a smaller last batch crashed TensorFlow's oneDNN CPU
    kernels (TF 2.21 on AVX-512; `bench/ragged_batch.py`). A dataset known to
    hold less than one batch (a single batch, or fewer samples) is kept whole.
    """
    size = int(ds.cardinality())  # <0: unknown or infinite
    if len(ds.element_spec[0].shape) == image_rank + 1:  # already batched
        return ds.rebatch(batch_size, drop_remainder=size < 0 or size > 1)
    return ds.batch(batch_size, drop_remainder=size < 0 or size >= batch_size)


def shuffled_full_batches(x, y, batch_size: int, seed: int | None = None):
    """Numpy `(x, y)` as a dataset of shuffled batches of exactly `batch_size`.

    Reshuffled every epoch, so every sample takes part across epochs; rows are
    gathered from the arrays batch by batch (no copy of the whole set). With
    fewer samples than one batch, that one smaller batch is kept.
    """
    import tensorflow as tf

    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"x and y hold different numbers of samples: {len(x)} and {len(y)}")
    rows = tf.data.Dataset.range(len(x)).shuffle(max(1, len(x)), seed=seed,
                                                 reshuffle_each_iteration=True)
    rows = rows.batch(batch_size, drop_remainder=len(x) >= batch_size)

    def gather(index):
        return x[index], y[index]

    def read(index):
        xb, yb = tf.numpy_function(gather, [index], [tf.as_dtype(x.dtype), tf.as_dtype(y.dtype)])
        xb.set_shape((None, *x.shape[1:]))
        yb.set_shape((None, *y.shape[1:]))
        return xb, yb

    return rows.map(read, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


class FailOnNaN(keras.callbacks.Callback):
    """Fails the trial (status FAILED, with the reason) when the loss becomes NaN or inf.

    keras.callbacks.TerminateOnNaN only stops training, and the tuner would
    record the diverged model's metrics as a result.
    """

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            raise kt.errors.FailedTrialError(
                f"loss became {float(loss)} at epoch {self.epoch + 1}, batch {batch + 1} "
                "(diverged: try a lower learning rate)"
            )


def balanced_class_weights(labels: np.ndarray, num_classes: int | None = None) -> dict[int, float]:
    """scikit-learn's "balanced" class weights for integer `labels`, for `fit(class_weight=)`.

    Args:
        labels: the training labels.
        num_classes: when given, every class `0..num_classes-1` gets a weight;
            a class absent from `labels` gets 1.0.

    Returns:
        `{label: n / (classes present * n of label)}`.
    """
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels).reshape(-1).astype(int)
    classes = np.unique(labels)
    weights = compute_class_weight("balanced", classes=classes, y=labels)
    out = dict.fromkeys(range(num_classes or 0), 1.0)
    out.update({int(c): float(w) for c, w in zip(classes, weights, strict=True)})
    return out
