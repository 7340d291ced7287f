"""Optimizer, loss and metrics for a `TrainConfig`: one place, used by the
HyperModel, by a refit at export time and by the examples.

`OPTIMIZERS` maps each optimizer name to its factory and to the `TrainConfig`
fields only it reads (momentum for SGD and RMSprop). `EXTRA_METRICS` are the
metrics a model computes only when a search ranks trials by them.

Two-phase fine-tuning (`TrainConfig.head_epochs`): `plan_phases` splits a
trial's epochs into `Phase`s (head on the frozen backbone, then fine-tuning
at a lower learning rate) and `fit_in_phases` trains them: `enter_phase` sets
a phase's frozen stages and recompiles, `merge_histories` joins the phases'
`History` objects. `ResNetHyperModel.fit` calls it for each trial.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras
from keras import ops

from resnet_tuner.config import OPTIMIZERS as CONFIG_OPTIMIZERS
from resnet_tuner.config import TrainConfig
from resnet_tuner.model import set_frozen_stages
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


# --------------------------------------------------------------------------- phases


@dataclass(frozen=True)
class Phase:
    """One `fit` of a trial: its epochs, what is frozen and its learning rate.

    Attributes:
        initial_epoch: the first epoch, as `fit(initial_epoch=)`: the epochs of
            a trial keep one numbering across its phases.
        epochs: the epoch it ends before, as `fit(epochs=)`.
        frozen_stages: stages frozen from the input side
            (`model.set_frozen_stages`): what stays the same through the
            phase, up to the output of stage `frozen_stages` (a cache of
            frozen features may start there).
        lr_scale: the learning rate as a multiple of `TrainConfig.learning_rate`.
        curve_start: the epoch its cosine schedule starts at.
        curve_epochs: the epochs its cosine schedule spans (a trial resumed
            within the phase continues the curve).
        head_only: phase 1 of two-phase fine-tuning: the whole backbone
            frozen (every layer of it, staged or not; `frozen_stages` is then
            all its stages), the head trains alone.
    """

    initial_epoch: int
    epochs: int
    frozen_stages: int
    lr_scale: float = 1.0
    curve_start: int = 0
    curve_epochs: int = 1
    head_only: bool = False
    frozen_batchnorm: bool = False


def plan_phases(train: TrainConfig, epochs: int, initial_epoch: int = 0,
                freeze_stages: int = 0, backbone_stages: int | None = None,
                frozen_batchnorm: bool = False) -> list[Phase]:
    """The phases of a trial that trains epochs `initial_epoch..epochs-1`.

    With `train.head_epochs` = 0, one phase as ever: stages 1..`freeze_stages`
    frozen, the learning rate of `train`, the cosine curve over `epochs`.
    Otherwise phase 1 (epochs before `head_epochs`: the whole backbone
    frozen, the learning rate of `train`, its curve over its own epochs), then
    phase 2 (the rest: stages 1..`freeze_stages` frozen, `finetune_lr_scale`
    times the learning rate, a new curve from `head_epochs` to `epochs`).

    * `epochs` is the run's, which may differ from `train.epochs`: a
      Hyperband round shorter than `head_epochs` runs phase 1 only; a
      budget's final training runs phase 2 until its deadline.
    * A trial resumed at `initial_epoch` >= `head_epochs` (Hyperband
      continuing a parent's weights) has phase 2 only; one resumed before
      runs the rest of phase 1 first.
    * `freeze_stages` >= `backbone_stages` (> 0) leaves phase 2 nothing to
      unfreeze: one phase (the backbone frozen throughout, the learning rate
      of `train`), no pointless recompile.

    Args:
        train: the trial's training config.
        epochs: the epoch the run ends before (`fit(epochs=)`).
        initial_epoch: the epoch it starts at.
        freeze_stages: `ResNetConfig.freeze_stages`.
        backbone_stages: the stages of the pretrained or path backbone
            (`model.backbones.backbone_stages`); None for a scratch model.
        frozen_batchnorm: `ResNetConfig.frozen_batchnorm`: phase 2 keeps every
            BatchNormalization layer of the backbone frozen.

    Raises:
        ValueError: `head_epochs` > 0 for a scratch model (no backbone to freeze).
    """
    head = train.head_epochs
    if head and backbone_stages is None:
        raise ValueError(
            f"head_epochs={head} (two-phase fine-tuning) needs a pretrained or path backbone: "
            "phase 1 trains the head on the frozen backbone, and a model built from scratch "
            "has none. Use head_epochs=0.")
    if not head or 0 < backbone_stages <= freeze_stages:
        return [Phase(initial_epoch, epochs, freeze_stages, curve_epochs=epochs,
                      frozen_batchnorm=frozen_batchnorm)]
    phases = []
    if initial_epoch < head:
        end = min(head, epochs)
        phases.append(Phase(initial_epoch, end, backbone_stages, curve_epochs=end,
                            head_only=True))
    if epochs > head or not phases:
        start = max(head, initial_epoch)
        phases.append(Phase(start, max(start, epochs), freeze_stages,
                            lr_scale=train.finetune_lr_scale, curve_start=head,
                            curve_epochs=epochs - head, frozen_batchnorm=frozen_batchnorm))
    return phases


def enter_phase(model: keras.Model, phase: Phase, train: TrainConfig, num_classes: int,
                extra_metrics: tuple[str, ...] = ()) -> keras.Model:
    """Freezes what `phase` freezes and recompiles `model` at the phase's learning rate.

    A recompile is what makes Keras train the new set of weights; it also
    starts a new optimizer (its moments were the other phase's). It runs in
    the model's distribution strategy (keras-tuner builds a trial's model in
    it, and the optimizer's variables must be made there too).
    """
    set_frozen_stages(model, None if phase.head_only else phase.frozen_stages,
                      phase.frozen_batchnorm)
    strategy = getattr(model, "distribute_strategy", None)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        return compile_model(model, train, num_classes, extra_metrics, lr_scale=phase.lr_scale)


def fit_in_phases(model: keras.Model, train: TrainConfig, phases: Sequence[Phase],
                  fit_phase: Callable[..., keras.callbacks.History | None], *,
                  num_classes: int, extra_metrics: tuple[str, ...] = (),
                  built_frozen: int = 0, callbacks: Sequence = (), last_callbacks: Sequence = (),
                  ends_at: float | None = None, **fit_kwargs):
    """Trains `model` through `phases` (`plan_phases`); one `History` of all their epochs.

    `model` arrives compiled as `build_resnet` and `compile_model` leave it:
    stages 1..`built_frozen` frozen, the learning rate of `train`. A phase
    that differs is entered first (`enter_phase`: its frozen stages, a
    recompile at its rate); one that does not (a one-phase trial) trains the
    model as it came. Each phase is one call
    `fit_phase(model, phase=phase, callbacks=..., initial_epoch=..., epochs=..., **fit_kwargs)`
    whose callbacks are `callbacks` (the same objects in every phase), the
    phase's learning-rate schedule, then `last_callbacks`. The schedule of
    the last phase ends at the wall-clock time `ends_at` when given (a time
    budget's final training). A callback that stops training (sets
    `model.stop_training`) ends it: no next phase.
    """
    compiled = (built_frozen, False, 1.0)
    histories = []
    for phase in phases:
        state = (phase.frozen_stages, phase.head_only, phase.lr_scale)
        if state != compiled:
            enter_phase(model, phase, train, num_classes, extra_metrics)
            compiled = state
        schedule = schedule_callbacks(train, phase.curve_epochs,
                                      ends_at=ends_at if phase is phases[-1] else None,
                                      lr_scale=phase.lr_scale, first_epoch=phase.curve_start)
        histories.append(fit_phase(model, phase=phase,
                                   callbacks=[*callbacks, *schedule, *last_callbacks],
                                   initial_epoch=phase.initial_epoch, epochs=phase.epochs,
                                   **fit_kwargs))
        if getattr(model, "stop_training", False):
            break  # a deadline, early stopping, the median rule: the trial ends here
    return merge_histories(histories)


def merge_histories(histories: Sequence[keras.callbacks.History | None]):
    """One `History` holding every epoch of `histories` (the phases of one trial), in order.

    keras-tuner reads a trial's objective from the `History` its `fit`
    returns, and `RecordingTuner` writes its per-epoch `history.json` from it.
    A single history is returned as is.
    """
    histories = [h for h in histories if h is not None]
    if len(histories) <= 1:
        return histories[0] if histories else None
    merged = keras.callbacks.History()
    merged.epoch = []
    for history in histories:
        merged.epoch += list(getattr(history, "epoch", []))
        for name, values in history.history.items():
            merged.history.setdefault(name, []).extend(values)
    last = histories[-1]
    merged.set_params(dict(getattr(last, "params", None) or {}))
    model = getattr(last, "model", None)
    if model is not None:
        merged.set_model(model)
        model.history = merged
    return merged
