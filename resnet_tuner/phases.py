"""Two-phase fine-tuning (`TrainConfig.head_epochs`): a trial's epochs as phases.

`plan_phases` splits a trial's epochs into `Phase`s (head on the frozen
backbone, then fine-tuning at a lower learning rate) and `fit_in_phases`
trains them: `enter_phase` sets a phase's frozen stages and recompiles,
`merge_histories` joins the phases' `History` objects.
`ResNetHyperModel.fit` calls it for each trial, `export_refit.refit_model`
for a refit at export time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras

from resnet_tuner.config import TrainConfig
from resnet_tuner.model import set_frozen_stages
from resnet_tuner.training import compile_model, schedule_callbacks


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
