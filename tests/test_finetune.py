"""Two-phase fine-tuning: the head on the frozen backbone, then fine-tuning at a lower rate.

The backbone is the user's own model (a tiny resnet_tuner model saved as a `.keras`
file: a stem and two residual stages), so nothing downloads and a trial takes a
second. One two-phase trial (`two_phase`, once per module) records, epoch by epoch,
which stages train, the learning rate and the BatchNorm moving statistics; the
tests read that record. Trials here train on the images (`feature_cache=False`),
so `model.fit` is what each phase calls; the phases on cached features are
tests/test_features.py's.
"""

import re
import types

import keras
import keras_tuner as kt
import numpy as np
import pytest
from conftest import TINY_MODEL, separable_images

from resnet_tuner import (
    ResNetConfig,
    ResNetHyperModel,
    SpaceError,
    TrainConfig,
    build_resnet,
    load_space,
)
from resnet_tuner import card as card_module
from resnet_tuner.model import backbone_of, set_frozen_stages
from resnet_tuner.model.backbones import layer_stages
from resnet_tuner.phases import Phase, merge_histories, plan_phases
from resnet_tuner.run.budget import BelowMedian, Deadline
from resnet_tuner.training import CosineDecayPerStep

SHAPE = (16, 16, 3)
LEARNING_RATE = 0.01


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    """A tiny resnet_tuner model as a `.keras` file: 3 stages (stem, stage2, stage3)."""
    path = tmp_path_factory.mktemp("backbone") / "tiny.keras"
    build_resnet(ResNetConfig(**TINY_MODEL), SHAPE, 3).save(path)
    return str(path)


def space(backbone, freeze_stages=1, frozen_batchnorm=False, **train):
    return {"model": {"backbone": backbone},
            "transfer": {"freeze_stages": freeze_stages, "frozen_batchnorm": frozen_batchnorm},
            "train": {"batch_size": 8, "learning_rate": LEARNING_RATE, "epochs": 4,
                      "head_epochs": 2, "finetune_lr_scale": 0.1, **train}}


def trained_stages(model):
    """The stages whose weights train now (None: the head)."""
    trainable = {id(w) for w in model.trainable_weights}
    return {stage for layer, stage in layer_stages(model)
            if any(id(w) in trainable for w in layer.weights)}


def moving_means(model):
    """`{(stage, name): moving mean}` of every BatchNormalization layer."""
    return {(stage, layer.name): layer.moving_mean.numpy().copy()
            for layer, stage in layer_stages(model)
            if isinstance(layer, keras.layers.BatchNormalization)}


class Recorder(keras.callbacks.Callback):
    """Per epoch: the stages that train, the BN moving means at its start, the learning
    rate of each batch; and how many times training began (one per phase)."""

    def __init__(self):
        super().__init__()
        self.stages, self.means, self.rates, self.fits = {}, {}, {}, 0

    def on_train_begin(self, logs=None):
        self.fits += 1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.stages[epoch] = trained_stages(self.model)
        self.means[epoch] = moving_means(self.model)

    def on_train_batch_end(self, batch, logs=None):
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.rates.setdefault(self.epoch, []).append(rate)


def fit(backbone, callbacks=(), **kwargs):
    """A `ResNetHyperModel` trial on `space(backbone, **kwargs)`: `(hm, hp, model, history)`.

    `hm.phases` lists the phases its `_fit_phase` was called with.
    """
    fit_kwargs = {k: kwargs.pop(k) for k in ("initial_epoch", "epochs") if k in kwargs}
    hm = ResNetHyperModel(space(backbone, **kwargs), input_shape=SHAPE, num_classes=3,
                          feature_cache=False)
    hm.phases, fit_phase = [], hm._fit_phase

    def recorded(model, x, y, validation_data, *, phase, **kwargs):
        hm.phases.append(phase)
        return fit_phase(model, x, y, validation_data, phase=phase, **kwargs)

    hm._fit_phase = recorded
    hp = kt.HyperParameters()
    model = hm.build(hp)
    x, y = separable_images(n=48)
    history = hm.fit(hp, model, x, y, validation_data=(x[:16], y[:16]),
                     callbacks=list(callbacks), verbose=0, **fit_kwargs)
    return hm, hp, model, history


@pytest.fixture(scope="module")
def two_phase(backbone_file):
    """One trial: 2 head epochs, then 2 with stage 1 frozen at 0.1x the rate."""
    keras.utils.set_random_seed(0)
    recorder = Recorder()
    hm, hp, model, history = fit(backbone_file, [recorder])
    return types.SimpleNamespace(hm=hm, hp=hp, model=model, history=history,
                                 recorder=recorder, end_means=moving_means(model))


# --------------------------------------------------------------------------- one trial


def test_phase_one_trains_the_head_alone_and_phase_two_unfreezes_to_the_depth(two_phase):
    stages = two_phase.recorder.stages
    assert stages[0] == stages[1] == {None}  # the head only
    assert stages[2] == stages[3] == {None, 2, 3}  # stage 1 (the stem) stays frozen
    assert two_phase.recorder.fits == 2
    # Each phase is one call of `_fit_phase` (where a feature cache can plug in).
    assert two_phase.hm.phases == [Phase(0, 2, 3, curve_epochs=2, head_only=True),
                                   Phase(2, 4, 1, 0.1, curve_start=2, curve_epochs=2)]
    # The exported model is phase 2's: its flags are those build_resnet gives freeze_stages=1.
    assert trained_stages(two_phase.model) == {None, 2, 3}


def test_frozen_batchnorm_keeps_its_moving_statistics(two_phase):
    start, phase2, end = (two_phase.recorder.means[0], two_phase.recorder.means[2],
                          two_phase.end_means)
    assert {stage for stage, _ in start} == {1, 2, 3}
    for key, mean in start.items():
        # Phase 1: every BN of the backbone in inference mode.
        np.testing.assert_array_equal(phase2[key], mean, err_msg=str(key))
        frozen = key[0] == 1
        assert np.array_equal(end[key], mean) is frozen, key  # phase 2: stage 1's only


def trained_batchnorm(model):
    """The BatchNormalization layers whose scale/offset train now."""
    trainable = {id(w) for w in model.trainable_weights}
    return {layer.name for layer, _ in layer_stages(model)
            if isinstance(layer, keras.layers.BatchNormalization)
            and any(id(w) in trainable for w in layer.weights)}


@pytest.mark.parametrize("head_epochs", [2, 0], ids=["two phases", "one phase"])
def test_frozen_batchnorm_keeps_every_backbone_batchnorm_while_its_stages_train(
        backbone_file, head_epochs):
    """`frozen_batchnorm`: stages 2-3 train (their convolutions), their BN stays as loaded."""
    keras.utils.set_random_seed(0)
    recorder = Recorder()
    hm, _, model, _ = fit(backbone_file, [recorder], frozen_batchnorm=True,
                          head_epochs=head_epochs)
    assert hm.phases[-1].frozen_batchnorm and hm.phases[-1].frozen_stages == 1
    last = max(recorder.stages)
    assert recorder.stages[last] == {None, 2, 3}  # the convolutions of stages 2-3 train
    assert trained_batchnorm(model) == set()
    start, end = recorder.means[0], moving_means(model)
    assert {stage for stage, _ in start} == {1, 2, 3}
    for key, mean in start.items():
        np.testing.assert_array_equal(end[key], mean, err_msg=str(key))
    # The same trial without it: stages 2-3's BN learn (what the test above tells apart).
    keras.utils.set_random_seed(0)
    _, _, model, _ = fit(backbone_file, head_epochs=head_epochs)
    assert {key[0] for key, mean in moving_means(model).items()
            if not np.array_equal(start[key], mean)} == {2, 3}
    assert trained_batchnorm(model)


def test_frozen_batchnorm_needs_a_backbone():
    with pytest.raises(ValueError, match="frozen_batchnorm=True keeps the statistics of a "
                                         "pretrained or path backbone"):
        ResNetConfig(frozen_batchnorm=True)
    with pytest.raises(ValueError, match="frozen_batchnorm must be True or False"):
        ResNetConfig(backbone="resnet50", frozen_batchnorm="yes")
    with pytest.raises(SpaceError, match=r"\[transfer\] fields \['frozen_batchnorm'\] only apply"):
        load_space({"model": {"stem": "cifar"}, "transfer": {"frozen_batchnorm": [False, True]}})


def test_phase_two_runs_at_the_scaled_learning_rate_on_its_own_curve(two_phase):
    rates = two_phase.recorder.rates
    assert rates[0][0] == pytest.approx(LEARNING_RATE)
    assert rates[1][-1] < 0.2 * LEARNING_RATE  # phase 1's cosine decayed over its 2 epochs
    assert rates[2][0] == pytest.approx(0.1 * LEARNING_RATE)  # a new curve, 0.1x
    assert max(rates[2] + rates[3]) <= 0.1 * LEARNING_RATE * (1 + 1e-6)
    assert rates[3][-1] < 0.02 * LEARNING_RATE


def test_the_history_holds_every_epoch_of_both_phases(two_phase):
    history = two_phase.history
    assert history.epoch == [0, 1, 2, 3]
    assert all(len(values) == 4 for values in history.history.values())
    assert {"loss", "val_loss", "val_accuracy"} <= set(history.history)
    assert history.model is two_phase.model and two_phase.model.history is history


def test_the_card_says_what_each_phase_froze(two_phase, backbone_file, tmp_path):
    from resnet_tuner.export import export_model

    model_cfg, train_cfg = two_phase.hm.configs(two_phase.hp)
    x, y = separable_images(n=12, seed=1)
    bundle = export_model(two_phase.model, tmp_path / "best", test=(x, y),
                          model_config=model_cfg, train_config=train_cfg, formats=())
    text = (bundle / "MODEL_CARD.md").read_text()
    assert (f"- Fine-tuning: phase 1, 2 epochs: backbone `{backbone_file}` frozen (stages 1-3), "
            "head trained; phase 2, 2 epochs: stage 1 frozen, stages 2-3 and head trained at "
            "0.1x the learning rate") in text
    reloaded = keras.saving.load_model(bundle / "model.keras", safe_mode=True)
    assert trained_stages(reloaded) == {None, 2, 3}


# --------------------------------------------------------------------------- one phase


def _spy(monkeypatch, model):
    calls = []

    def fake_fit(*args, **kwargs):
        calls.append(kwargs)

    monkeypatch.setattr(model, "fit", fake_fit)
    return calls


@pytest.mark.parametrize("head_epochs, freeze_stages", [(0, 1), (2, 3)],
                         ids=["head_epochs=0", "nothing to unfreeze"])
def test_one_phase_is_todays_single_fit(backbone_file, monkeypatch, head_epochs, freeze_stages):
    """head_epochs = 0, or every stage frozen in phase 2 too: one fit as before, no recompile."""
    hm = ResNetHyperModel(space(backbone_file, freeze_stages, head_epochs=head_epochs),
                          input_shape=SHAPE, num_classes=3, feature_cache=False)
    hp = kt.HyperParameters()
    model = hm.build(hp)
    optimizer, flags = model.optimizer, trained_stages(model)
    calls = _spy(monkeypatch, model)
    given = keras.callbacks.Callback()
    x, y = separable_images(n=16)
    hm.fit(hp, model, x, y, callbacks=[given], verbose=0)
    [call] = calls
    assert call["epochs"] == 4 and call["initial_epoch"] == 0
    assert [type(c).__name__ for c in call["callbacks"]] == [
        "Callback", "CosineDecayPerStep", "FailOnNaN"]
    schedule = call["callbacks"][1]
    assert (schedule.initial_rate, schedule.epochs, schedule.first_epoch) == (LEARNING_RATE, 4, 0)
    assert model.optimizer is optimizer and trained_stages(model) == flags


def test_a_budgets_final_training_decays_phase_two_to_its_deadline(backbone_file, monkeypatch):
    """The final training (`final/epochs`): phase 1 by its epochs, phase 2 up to the deadline."""
    from resnet_tuner.run.budget import FINAL_EPOCHS

    hm = ResNetHyperModel(space(backbone_file), input_shape=SHAPE, num_classes=3,
                          feature_cache=False)
    hp = kt.HyperParameters()
    model = hm.build(hp)
    hp.values[FINAL_EPOCHS] = 5
    calls = _spy(monkeypatch, model)
    deadline = Deadline(at=4e9)
    x, y = separable_images(n=16)
    hm.fit(hp, model, x, y, callbacks=[deadline], epochs=12, verbose=0)  # final_epochs_bound(5)
    head, tune = calls
    assert (head["initial_epoch"], head["epochs"], tune["initial_epoch"], tune["epochs"]) == (
        0, 2, 2, 12)
    [head_curve] = [c for c in head["callbacks"] if isinstance(c, CosineDecayPerStep)]
    [tune_curve] = [c for c in tune["callbacks"] if isinstance(c, CosineDecayPerStep)]
    assert head_curve.ends_at is None and head_curve.epochs == 2
    assert tune_curve.ends_at == deadline.at
    assert tune_curve.initial_rate == pytest.approx(0.1 * LEARNING_RATE)
    assert head["callbacks"][0] is tune["callbacks"][0] is deadline


def test_keras_tuner_records_every_epoch_of_both_phases(backbone_file, tmp_path):
    import json

    from resnet_tuner import RandomSearch

    hm = ResNetHyperModel(space(backbone_file, epochs=3, head_epochs=1), input_shape=SHAPE,
                          num_classes=3)
    tuner = RandomSearch(hm, objective="val_loss", max_trials=1, directory=str(tmp_path),
                         seed=1)
    x, y = separable_images(n=32)
    tuner.search(x, y, validation_data=(x[:16], y[:16]), verbose=0)
    [trial] = tuner.oracle.trials.values()
    assert trial.status == "COMPLETED"
    record = json.loads((tmp_path / "untitled_project" / f"trial_{trial.trial_id}"
                         / "history.json").read_text())
    assert len(record["history"]["loss"]) == 3 and len(record["epoch_times"]) == 3
    # keras-tuner ranks the trial by its best epoch over both phases.
    losses = record["history"]["val_loss"]
    assert trial.score == pytest.approx(min(losses))
    assert trial.best_step == int(np.argmin(losses))
    best = tuner.get_best_models(1)[0]  # the best epoch's checkpoint loads into a fresh build
    assert best.predict(x[:2], verbose=0).shape == (2, 3)


# --------------------------------------------------------------------------- resumed, stopped


@pytest.mark.parametrize("initial_epoch", [1, 2])
def test_a_resumed_trial_continues_in_its_phase(backbone_file, initial_epoch):
    """Hyperband continues a trial at `initial_epoch`: from phase 2 on, phase 2's flags."""
    recorder = Recorder()
    *_, history = fit(backbone_file, [recorder], initial_epoch=initial_epoch)
    assert history.epoch == list(range(initial_epoch, 4))
    assert recorder.fits == 3 - initial_epoch
    if initial_epoch == 1:
        assert recorder.stages[1] == {None}
        # Half way along phase 1's curve (2 epochs), where the first try left it.
        assert recorder.rates[1][0] == pytest.approx(LEARNING_RATE * (0.01 + 0.99 * 0.5))
    assert recorder.stages[2] == recorder.stages[3] == {None, 2, 3}
    assert recorder.rates[2][0] == pytest.approx(0.1 * LEARNING_RATE)


@pytest.mark.parametrize("stopper", [
    lambda: Deadline(at=0.0),
    lambda: BelowMedian([[1.0] * 4] * 3, "val_accuracy", "max"),
], ids=["deadline", "below median"])
def test_stopping_in_phase_one_ends_the_trial(backbone_file, stopper):
    recorder = Recorder()
    _, _, model, history = fit(backbone_file, [recorder, stopper()])
    assert history.epoch == [0] and recorder.fits == 1  # no phase 2
    assert trained_stages(model) == {None}
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) > 0.1 * LEARNING_RATE


# --------------------------------------------------------------------------- plan


def test_plan_phases_splits_the_epochs():
    train = TrainConfig(epochs=10, head_epochs=3, finetune_lr_scale=0.1, learning_rate=0.01)
    head = Phase(0, 3, 5, curve_epochs=3, head_only=True)
    tune = Phase(3, 10, 2, lr_scale=0.1, curve_start=3, curve_epochs=7)
    assert plan_phases(train, 10, 0, 2, 5) == [head, tune]
    # Hyperband: a round shorter than phase 1, then its continuation.
    assert plan_phases(train, 2, 0, 2, 5) == [Phase(0, 2, 5, curve_epochs=2, head_only=True)]
    assert plan_phases(train, 4, 2, 2, 5) == [
        Phase(2, 3, 5, curve_epochs=3, head_only=True),
        Phase(3, 4, 2, 0.1, curve_start=3, curve_epochs=1)]
    assert plan_phases(train, 10, 5, 2, 5) == [Phase(5, 10, 2, 0.1, 3, 7)]
    # One phase: head_epochs = 0, or nothing left to unfreeze; as before.
    one = TrainConfig(epochs=10)
    assert plan_phases(one, 10, 4, 2, 5) == [Phase(4, 10, 2, curve_epochs=10)]
    assert plan_phases(train, 10, 0, 5, 5) == [Phase(0, 10, 5, curve_epochs=10)]
    assert plan_phases(one, 10, 0, 0, None) == [Phase(0, 10, 0, curve_epochs=10)]
    # A backbone without named stages (0) still has a phase 1: the whole of it frozen.
    assert plan_phases(train, 10, 0, 0, 0)[0] == Phase(0, 3, 0, curve_epochs=3, head_only=True)
    with pytest.raises(ValueError, match="head_epochs=3 .* needs a pretrained or path backbone"):
        plan_phases(train, 10, 0, 0, None)


def test_cosine_curve_of_a_phase_starts_at_its_first_epoch():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    schedule = CosineDecayPerStep(0.01, epochs=4, first_epoch=3)
    schedule.set_model(model)
    schedule.set_params({"steps": 10})
    for epoch, expected in [(3, 0.01), (5, 0.01 * (0.01 + 0.99 * 0.5))]:
        schedule.on_epoch_begin(epoch)
        schedule.on_train_batch_begin(0)
        assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(expected)


def test_set_frozen_stages_goes_both_ways(backbone_file):
    cfg = ResNetConfig(backbone=backbone_file, freeze_stages=2)
    model = build_resnet(cfg, SHAPE, 3)
    built = {layer.name: layer.trainable for layer, _ in layer_stages(model)}
    set_frozen_stages(model, None)
    assert not backbone_of(model).trainable_weights and trained_stages(model) == {None}
    set_frozen_stages(model, 2)
    assert {layer.name: layer.trainable for layer, _ in layer_stages(model)} == built
    scratch = build_resnet(ResNetConfig(**TINY_MODEL), SHAPE, 3)
    assert backbone_of(scratch) is None
    with pytest.raises(ValueError, match="no pretrained or path backbone to freeze whole"):
        set_frozen_stages(scratch, None)


def test_merge_histories_keeps_epochs_in_order():
    first, second = keras.callbacks.History(), keras.callbacks.History()
    first.epoch, first.history = [0, 1], {"loss": [3.0, 2.0]}
    second.epoch, second.history = [2], {"loss": [1.0]}
    merged = merge_histories([first, second])
    assert merged.epoch == [0, 1, 2] and merged.history == {"loss": [3.0, 2.0, 1.0]}
    assert merge_histories([first]) is first


# --------------------------------------------------------------------------- config, space


def test_config_needs_head_epochs_below_epochs():
    TrainConfig(epochs=3, head_epochs=2)
    with pytest.raises(ValueError, match=re.escape(
            "head_epochs must be less than epochs") + ".*" + re.escape(
            "Received: head_epochs=3, epochs=3")):
        TrainConfig(epochs=3, head_epochs=3)
    with pytest.raises(ValueError, match="head_epochs must be an integer from 0"):
        TrainConfig(head_epochs=-1)
    with pytest.raises(ValueError, match="finetune_lr_scale must be a number from 0.0001 to 1.0"):
        TrainConfig(finetune_lr_scale=0.0)
    assert TrainConfig.from_dict(TrainConfig(head_epochs=2).to_dict()).head_epochs == 2


def test_transfer_preset_searches_the_phases():
    transfer = load_space("transfer")
    hp = kt.HyperParameters()
    _, train = transfer.sample(hp)
    assert train.head_epochs == 0 and train.finetune_lr_scale == 0.1
    assert "finetune_lr_scale" not in hp.values  # dead without a phase 1
    hp = kt.HyperParameters()
    hp.values.update(head_epochs=3, finetune_lr_scale=0.05, freeze_stages=2)
    model_cfg, train = transfer.sample(hp)
    assert (train.head_epochs, train.finetune_lr_scale, model_cfg.freeze_stages) == (3, 0.05, 2)
    [scale] = [h for h in hp.space if h.name == "finetune_lr_scale"]
    [condition] = scale.conditions
    assert condition.name == "head_epochs" and list(condition.values) == [2, 3]
    assert [list(h.values) for h in hp.space if h.name == "head_epochs"] == [[0, 2, 3]]


def test_space_fields_are_parsed_and_scoped(backbone_file):
    # A range of head epochs is the parent of finetune_lr_scale too.
    tuned = load_space({"model": {"backbone": ["scratch", backbone_file], "stem": "cifar",
                                  "stage_depths": [1, 1], "stage_widths": [4, 8]},
                        "train": {"epochs": 5, "head_epochs": {"min": 0, "max": 2},
                                  "finetune_lr_scale": [0.1, 0.5]}})
    hp = kt.HyperParameters()
    hp.values.update(backbone=backbone_file, head_epochs=1, finetune_lr_scale=0.5)
    assert tuned.sample(hp)[1] == TrainConfig(epochs=5, head_epochs=1, finetune_lr_scale=0.5)
    [scale] = [h for h in hp.space if h.name == "finetune_lr_scale"]
    assert [(c.name, list(c.values)) for c in scale.conditions] == [
        ("backbone", [backbone_file]), ("head_epochs", [1, 2])]
    # A scratch trial of the same space trains in one phase.
    hp = kt.HyperParameters()
    hp.values.update(backbone="scratch", head_epochs=2)
    assert tuned.sample(hp)[1].head_epochs == 0
    assert "head_epochs" not in {h.name for h in hp.space}


@pytest.mark.parametrize("train, message", [
    ({"head_epochs": [0, 2]}, r'\[train\] head_epochs only apply to two-phase fine-tuning .* '
                              r'only has backbone = "scratch"'),
    ({"finetune_lr_scale": 0.5}, r"\[train\] finetune_lr_scale only apply"),
])
def test_two_phase_fields_on_a_scratch_space_are_refused(train, message):
    with pytest.raises(SpaceError, match=message):
        load_space({"model": {"stem": "cifar"}, "train": train})
    load_space({"model": {"stem": "cifar"}, "train": {"head_epochs": 0}})  # one phase: fine


def test_a_phase_one_as_long_as_the_training_is_refused(backbone_file):
    with pytest.raises(SpaceError, match=re.escape(
            "[train] head_epochs can be 3 but epochs can be 3: phase 1 (head_epochs) must be "
            "shorter than the whole training")):
        load_space(space(backbone_file, epochs=[3, 10], head_epochs=[0, 3]))
    with pytest.raises(SpaceError, match=r"head_epochs = 100000: must be between 0 and 99999"):
        load_space(space(backbone_file, head_epochs=100000))
    with pytest.raises(SpaceError, match=r"finetune_lr_scale = 2: must be between"):
        load_space(space(backbone_file, finetune_lr_scale=2))
    # Overriding the epochs of a preset checks the phases again.
    with pytest.raises(SpaceError, match="head_epochs can be 3 but epochs can be 2"):
        load_space("transfer").override("train", epochs=2)


# --------------------------------------------------------------------------- card


@pytest.mark.parametrize("model, train, line", [
    ({"backbone": "resnet50", "freeze_stages": 3},
     {"epochs": 10, "head_epochs": 3, "finetune_lr_scale": 0.1},
     "- Fine-tuning: phase 1, 3 epochs: ResNet50 frozen (stages 1-5), head trained; phase 2, "
     "7 epochs: stages 1-3 frozen, stages 4-5 and head trained at 0.1x the learning rate"),
    ({"backbone": "resnet101v2", "freeze_stages": 0},
     {"epochs": 4, "head_epochs": 1, "finetune_lr_scale": 0.01},
     "- Fine-tuning: phase 1, 1 epoch: ResNet101V2 frozen (stages 1-5), head trained; phase 2, "
     "3 epochs: nothing frozen, backbone and head trained at 0.01x the learning rate"),
    ({"backbone": "resnet50", "freeze_stages": 4}, {"epochs": 10, "head_epochs": 0},
     "- Fine-tuning: one phase, 10 epochs: stages 1-4 of ResNet50 frozen, stage 5 and head "
     "trained"),
    ({"backbone": "resnet50", "freeze_stages": 5}, {"epochs": 10, "head_epochs": 2},
     "- Fine-tuning: one phase, 10 epochs: ResNet50 frozen (stages 1-5), head trained "
     "(head_epochs = 2 had no effect: freeze_stages = 5 leaves no stage to unfreeze)"),
    ({"backbone": "resnet50", "freeze_stages": 2}, {"epochs": 2, "head_epochs": 3},
     "- Fine-tuning: phase 1, 2 epochs: ResNet50 frozen (stages 1-5), head trained; phase 2 "
     "did not run (training ended within the 3 head epochs)"),
    ({"backbone": "scratch", "freeze_stages": 0}, {"epochs": 10}, ""),
    ({"backbone": "resnet50", "freeze_stages": 0, "frozen_batchnorm": True},
     {"epochs": 10, "head_epochs": 3, "finetune_lr_scale": 0.5},
     "- Fine-tuning: phase 1, 3 epochs: ResNet50 frozen (stages 1-5), head trained; phase 2, "
     "7 epochs: nothing frozen, backbone and head trained at 0.5x the learning rate; every "
     "BatchNorm layer of ResNet50 frozen (inference mode) throughout"),
    ({"backbone": "resnet50", "freeze_stages": 5, "frozen_batchnorm": True}, {"epochs": 10},
     "- Fine-tuning: one phase, 10 epochs: ResNet50 frozen (stages 1-5), head trained"),
])
def test_card_fine_tuning_line(model, train, line):
    assert card_module.fine_tuning_line(model, train) == line


def test_card_counts_the_epochs_the_weights_trained():
    """A trial stopped within phase 1 (the export's trained count, not the config's)."""
    model = {"backbone": "resnet50", "freeze_stages": 2}
    train = {"epochs": 10, "head_epochs": 3, "finetune_lr_scale": 0.1}
    assert card_module.fine_tuning_line(model, train, epochs=2).endswith(
        "phase 2 did not run (training ended within the 3 head epochs)")
    assert "phase 2, 5 epochs" in card_module.fine_tuning_line(model, train, epochs=8)


def test_the_card_describes_the_epoch_whose_weights_were_kept(tmp_path):
    """Without refit the bundle holds keras-tuner's best epoch: one in phase 1 means the
    card says phase 1 only, whatever ran after it."""
    import json
    import types

    from resnet_tuner.card import fine_tuning_line
    from resnet_tuner.export import _best_epoch

    (tmp_path / "history.json").write_text(json.dumps(
        {"history": {"val_accuracy": [0.5, 0.8, 0.7, 0.75], "val_loss": [1.0, 0.9, 0.5, 0.7]}}))
    tuner = types.SimpleNamespace(get_trial_dir=lambda trial_id: str(tmp_path),
                                  oracle=types.SimpleNamespace(
                                      objective=kt.Objective("val_accuracy", "max")))
    trial = types.SimpleNamespace(trial_id="00")
    assert _best_epoch(tuner, trial) == 1
    tuner.oracle.objective = kt.Objective("val_loss", "min")
    assert _best_epoch(tuner, trial) == 2
    tuner.get_trial_dir = lambda trial_id: str(tmp_path / "none")
    assert _best_epoch(tuner, trial) is None
    model = {"backbone": "resnet50", "freeze_stages": 3}
    train = {"epochs": 4, "head_epochs": 2, "finetune_lr_scale": 0.1}
    assert "phase 2 did not run" in fine_tuning_line(model, train, epochs=2)
    assert "phase 2, 1 epoch" in fine_tuning_line(model, train, epochs=3)
