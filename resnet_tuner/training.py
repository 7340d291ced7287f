"""Optimizer, loss and metrics for a `TrainConfig`: one place, used by the
HyperModel, by a refit at export time and by the examples.

`OPTIMIZERS` maps each optimizer name to its factory and to the `TrainConfig`
fields only it reads (momentum for SGD and RMSprop).
"""

from __future__ import annotations

import math
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


def make_metrics(num_classes: int, binary: bool) -> list:
    """Accuracy, plus top-5 accuracy when there are more than 5 classes."""
    metrics: list = ["accuracy"]
    if not binary and num_classes > 5:
        metrics.append(keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5_accuracy"))
    return metrics


def compile_model(model: keras.Model, train: TrainConfig, num_classes: int) -> keras.Model:
    """Compiles `model` for integer labels as `train` says; returns it.

    A model whose output has one unit is treated as binary (sigmoid).
    """
    binary = model.outputs[0].shape[-1] == 1
    model.compile(
        optimizer=make_optimizer(train),
        loss=make_loss(train, binary),
        metrics=make_metrics(num_classes, binary),
    )
    return model


class CosineDecayPerStep(keras.callbacks.Callback):
    """Cosine learning-rate decay over the whole training run, updated every step.

    The schedule is set per trial in `fit`, where the number of epochs is known
    (Hyperband gives each round its own), rather than compiled into the
    optimizer at build time. A trial resumed at `initial_epoch` continues the
    curve where it left off. It decays to `final_fraction` of the initial rate.

    Args:
        initial_rate: learning rate at step 0.
        epochs: total epochs of the run the curve spans.
        final_fraction: the rate at the last step, as a fraction of the first.
    """

    def __init__(self, initial_rate: float, epochs: int, final_fraction: float = 0.01):
        super().__init__()
        self.initial_rate = float(initial_rate)
        self.epochs = max(1, int(epochs))
        self.final_fraction = final_fraction
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        steps = self.params.get("steps")  # None for data of unknown length
        within = batch / steps if steps else 0.0
        progress = min(1.0, (self._epoch + within) / self.epochs)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        rate = self.initial_rate * (self.final_fraction + (1 - self.final_fraction) * cosine)
        self.model.optimizer.learning_rate.assign(rate)


def schedule_callbacks(train: TrainConfig, epochs: int) -> list[keras.callbacks.Callback]:
    """The learning-rate callbacks of `train` for a run of `epochs` epochs."""
    if train.lr_schedule == "cosine":
        return [CosineDecayPerStep(train.learning_rate, epochs)]
    return []
