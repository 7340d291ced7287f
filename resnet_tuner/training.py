"""Optimizer, loss and metrics for a `TrainConfig`: one place, used by the
HyperModel, by a refit at export time and by the examples.

`OPTIMIZERS` maps each optimizer name to its factory and to the `TrainConfig`
fields only it reads (momentum for SGD and RMSprop). `EXTRA_METRICS` are the
metrics a model computes only when a search ranks trials by them.

The learning-rate schedule (`CosineDecayPerStep`, `schedule_callbacks`) is
here too; `phases` trains a trial in the phases of two-phase fine-tuning.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
from keras import ops

from resnet_tuner.config import OPTIMIZERS as CONFIG_OPTIMIZERS
from resnet_tuner.config import TrainConfig
from resnet_tuner.model.layers import PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class SparseCategoricalCrossentropyWithSmoothing(keras.losses.Loss):
    """Cross-entropy for integer labels with label smoothing.

    Keras' `SparseCategoricalCrossentropy` has no `label_smoothing`; this one
    one-hot encodes inside the loss so datasets keep their integer labels.
    """

    def __init__(self, label_smoothing: float = 0.0, name: str = "smoothed_sparse_ce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        num_classes = ops.shape(y_pred)[-1]
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        one_hot = ops.one_hot(labels, num_classes, dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            one_hot, y_pred, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@dataclass(frozen=True)
class Optimizer:
    """One row of `OPTIMIZERS`.

    Attributes:
        make: `TrainConfig -> keras optimizer`.
        params: `TrainConfig` fields only this optimizer reads; a search space
            samples them in the optimizer's conditional scope.
    """

    make: Callable[[TrainConfig], keras.optimizers.Optimizer]
    params: tuple[str, ...] = ()


def _decay(train: TrainConfig) -> float | None:
    return train.weight_decay or None


OPTIMIZERS: dict[str, Optimizer] = {
    "adam": Optimizer(lambda t: keras.optimizers.Adam(t.learning_rate, weight_decay=_decay(t))),
    # AdamW without a weight decay would be Adam: Keras' default decay then.
    "adamw": Optimizer(
        lambda t: keras.optimizers.AdamW(t.learning_rate, weight_decay=t.weight_decay or 0.004)
    ),
    "sgd": Optimizer(
        lambda t: keras.optimizers.SGD(t.learning_rate, momentum=t.momentum, nesterov=True,
                                       weight_decay=_decay(t)),
        params=("momentum",),
    ),
    "rmsprop": Optimizer(
        lambda t: keras.optimizers.RMSprop(t.learning_rate, momentum=t.momentum,
                                           weight_decay=_decay(t)),
        params=("momentum",),
    ),
}
if tuple(OPTIMIZERS) != CONFIG_OPTIMIZERS:
    raise ImportError(
        f"resnet_tuner.config.OPTIMIZERS = {CONFIG_OPTIMIZERS} must list the rows of "
        f"training.OPTIMIZERS, {tuple(OPTIMIZERS)}: add the new name there"
    )


def make_optimizer(train: TrainConfig) -> keras.optimizers.Optimizer:
    """The optimizer `train` names, with decoupled weight decay where set."""
    return OPTIMIZERS[train.optimizer].make(train)


def make_loss(train: TrainConfig, binary: bool) -> keras.losses.Loss:
    if binary:
        return keras.losses.BinaryCrossentropy(label_smoothing=train.label_smoothing)
    if train.label_smoothing:
        return SparseCategoricalCrossentropyWithSmoothing(train.label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy()


@keras.saving.register_keras_serializable(package=PACKAGE)
class BalancedAccuracy(keras.metrics.Metric):
    """The mean of the per-class recalls, for integer labels (scikit-learn's
    `balanced_accuracy_score`): on imbalanced classes a model that always
    answers the largest class scores `1 / num_classes`, not the largest share.

    Counts accumulate over the epoch, so the value is the whole split's, not an
    average of batches'. Classes absent from the labels seen are left out of
    the mean, as scikit-learn does.

    Args:
        num_classes: number of classes.
        binary: the model has one sigmoid unit (class 1 when it is over 0.5).
    """

    def __init__(self, num_classes: int, binary: bool = False, name: str = "balanced_accuracy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.binary = bool(binary)
        self.seen = self.add_variable((self.num_classes,), initializer="zeros", name="seen")
        self.hits = self.add_variable((self.num_classes,), initializer="zeros", name="hits")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        if self.binary:
            predicted = ops.cast(ops.reshape(y_pred, (-1,)) > 0.5, "int32")
        else:
            predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        seen = ops.one_hot(labels, self.num_classes, dtype=self.dtype)
        hits = seen * ops.expand_dims(ops.cast(ops.equal(labels, predicted), self.dtype), -1)
        self.seen.assign_add(ops.sum(seen, axis=0))
        self.hits.assign_add(ops.sum(hits, axis=0))

    def result(self):
        present = ops.cast(self.seen > 0, self.dtype)
        recalls = ops.divide_no_nan(self.hits, self.seen)
        return ops.divide_no_nan(ops.sum(recalls * present), ops.sum(present))

    def reset_state(self):
        self.seen.assign(ops.zeros_like(self.seen))
        self.hits.assign(ops.zeros_like(self.hits))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "binary": self.binary}


#: Metrics compiled only when asked for (a search ranking trials by
#: `val_<name>`): name -> `(num_classes, binary) -> metric`.
EXTRA_METRICS: dict[str, Callable[[int, bool], keras.metrics.Metric]] = {
    "balanced_accuracy": lambda num_classes, binary: BalancedAccuracy(num_classes, binary),
}


def make_metrics(num_classes: int, binary: bool, extra: tuple[str, ...] = ()) -> list:
    """Accuracy, plus top-5 accuracy when there are more than 5 classes, plus `extra`
    (`EXTRA_METRICS` names)."""
    metrics: list = ["accuracy"]
    if not binary and num_classes > 5:
        metrics.append(keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5_accuracy"))
    metrics += [EXTRA_METRICS[name](num_classes, binary) for name in extra]
    return metrics


def compile_model(model: keras.Model, train: TrainConfig, num_classes: int,
                  extra_metrics: tuple[str, ...] = (), lr_scale: float = 1.0) -> keras.Model:
    """Compiles `model` for integer labels as `train` says; returns it.

    A model whose output has one unit is treated as binary (sigmoid).
    `extra_metrics` names `EXTRA_METRICS` to compute too. `lr_scale`
    multiplies `train.learning_rate` (phase 2 of two-phase fine-tuning). A
    model whose layers compute in float16
    (`build_resnet(precision="mixed_float16")`) gets its optimizer in a
    `LossScaleOptimizer`: Keras adds one only when the Model's own policy says
    so, which a reloaded model's does not.
    """
    binary = model.outputs[0].shape[-1] == 1
    optimizer = make_optimizer(train)
    if lr_scale != 1.0:
        # Set on the optimizer rather than through a TrainConfig: the scaled rate may lie
        # below BOUNDS["learning_rate"] (1e-5 x 0.01).
        optimizer.learning_rate = train.learning_rate * lr_scale
    if any(layer.dtype_policy.compute_dtype == "float16" for layer in model.layers):
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss=make_loss(train, binary),
        metrics=make_metrics(num_classes, binary, tuple(extra_metrics)),
    )
    return model


class CosineDecayPerStep(keras.callbacks.Callback):
    """Cosine learning-rate decay over the whole training run, updated every step.

    The schedule is set per trial in `fit`, where the number of epochs is known
    (Hyperband gives each round its own), rather than compiled into the
    optimizer at build time. A trial resumed at `initial_epoch` continues the
    curve where it left off. It decays to `final_fraction` of the initial rate.

    With `ends_at` (a `time.time()`), the curve spans wall-clock time instead,
    from the start of `fit` to `ends_at`: a time budget's final training
    (`run.budget`) decays over exactly the time it has, however fast its
    epochs turn out to be, and `epochs` is only an upper bound.

    Args:
        initial_rate: learning rate at step 0.
        epochs: total epochs of the run the curve spans.
        final_fraction: the rate at the last step, as a fraction of the first.
        ends_at: when the curve ends, in wall-clock time (None: after `epochs`).
        first_epoch: the epoch the curve starts at (phase 2 of two-phase
            fine-tuning starts its own curve at `head_epochs`).
    """

    def __init__(self, initial_rate: float, epochs: int, final_fraction: float = 0.01,
                 ends_at: float | None = None, first_epoch: int = 0):
        super().__init__()
        self.initial_rate = float(initial_rate)
        self.epochs = max(1, int(epochs))
        self.final_fraction = final_fraction
        self.ends_at = ends_at
        self.first_epoch = int(first_epoch)
        self._epoch = 0
        self._started = self.clock()

    #: The wall clock `ends_at` is read against.
    clock = staticmethod(time.time)

    def on_train_begin(self, logs=None):
        self._started = self.clock()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.ends_at is not None:
            span = max(self.ends_at - self._started, 1e-6)
            progress = min(1.0, max(0.0, (self.clock() - self._started) / span))
        else:
            steps = self.params.get("steps")  # None for data of unknown length
            within = batch / steps if steps else 0.0
            progress = min(1.0, max(0.0, (self._epoch - self.first_epoch + within) / self.epochs))
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        rate = self.initial_rate * (self.final_fraction + (1 - self.final_fraction) * cosine)
        self.model.optimizer.learning_rate.assign(rate)


def schedule_callbacks(train: TrainConfig, epochs: int, ends_at: float | None = None,
                       lr_scale: float = 1.0,
                       first_epoch: int = 0) -> list[keras.callbacks.Callback]:
    """The learning-rate callbacks of `train` for a run of `epochs` epochs from
    `first_epoch` (or one that ends at the wall-clock time `ends_at`: see
    `CosineDecayPerStep`), starting at `lr_scale` times its learning rate."""
    if train.lr_schedule == "cosine":
        return [CosineDecayPerStep(train.learning_rate * lr_scale, epochs, ends_at=ends_at,
                                   first_epoch=first_epoch)]
    return []
