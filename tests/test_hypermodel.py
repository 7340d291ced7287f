"""ResNetHyperModel with each of keras-tuner's four tuners, on tiny data; what reaches
`fit`, failed trials, every optimizer row, and a model that learns."""

import keras
import keras_tuner as kt
import numpy as np
import pytest
import tensorflow as tf

from resnet_tuner import ResNetHyperModel, TrainConfig, build_resnet
from resnet_tuner.hypermodel import balanced_class_weights
from resnet_tuner.training import OPTIMIZERS, compile_model, make_optimizer

TINY_SPACE = {
    "model": {"stem": "cifar", "stage_depths": [1, 1], "base_width": [4, 8],
              "shortcut": ["B", "A"], "block": ["basic", "bottleneck"]},
    "augment": {"flip": ["none", "horizontal"], "gamma": ["none", [0.5, 0.7]]},
    "train": {"batch_size": [8, 16], "learning_rate": [0.01], "epochs": 1},
}


#: One fixed tiny model: nothing to search, for tests of what reaches `fit`.
FIXED_SPACE = {
    "model": {"stem": "cifar", "stage_depths": [1, 1], "stage_widths": [4, 8]},
    "train": {"batch_size": 8, "learning_rate": 0.01, "epochs": 1},
}


TUNERS = {
    "random": lambda hm, d: kt.RandomSearch(hm, objective="val_accuracy", max_trials=2,
                                            directory=d, seed=1),
    "bayesian": lambda hm, d: kt.BayesianOptimization(hm, objective="val_accuracy", max_trials=2,
                                                      num_initial_points=1, directory=d, seed=1),
    "hyperband": lambda hm, d: kt.Hyperband(hm, objective="val_accuracy", max_epochs=2,
                                            factor=2, hyperband_iterations=1, directory=d, seed=1),
    "grid": lambda hm, d: kt.GridSearch(hm, objective="val_accuracy", max_trials=2, directory=d),
}


@pytest.mark.parametrize("kind", sorted(TUNERS))
def test_search_with_each_tuner(kind, tmp_path, tiny_images):
    x, y = tiny_images()
    hm = ResNetHyperModel(TINY_SPACE, input_shape=(16, 16, 3), num_classes=3)
    tuner = TUNERS[kind](hm, str(tmp_path))
    tuner.search(x, y, validation_data=(x[:12], y[:12]), verbose=0)
    trials = tuner.oracle.get_best_trials(10)
    assert len(trials) >= 2
    assert all(t.status == "COMPLETED" for t in trials)
    best_hp = tuner.get_best_hyperparameters(1)[0]
    best = tuner.get_best_models(1)[0]
    assert best.predict(x[:4], verbose=0).shape == (4, 3)
    # The best configuration rebuilds from its config alone, without keras-tuner.
    model_cfg, _ = hm.configs(best_hp)
    rebuilt = build_resnet(model_cfg, (16, 16, 3), 3, precision=hm.precision)  # the run's policy
    assert rebuilt.count_params() == best.count_params()
    rebuilt.set_weights(best.get_weights())
    np.testing.assert_allclose(rebuilt.predict(x[:4], verbose=0),
                               best.predict(x[:4], verbose=0), rtol=1e-5, atol=1e-6)


def test_binary_sigmoid_head_with_integer_labels(tmp_path, tiny_images):
    space = {**TINY_SPACE, "model": {**TINY_SPACE["model"], "binary_head": True,
                                      "head_hidden": 4}}
    x, y = tiny_images(num_classes=2)
    hm = ResNetHyperModel(space, input_shape=(16, 16, 3), num_classes=2, class_weight="balanced")
    tuner = kt.RandomSearch(hm, objective="val_accuracy", max_trials=1, directory=str(tmp_path))
    tuner.search(x, y, validation_data=(x[:8], y[:8]), verbose=0)
    best = tuner.get_best_models(1)[0]
    assert best.output_shape == (None, 1)
    assert best.loss.__class__.__name__ == "BinaryCrossentropy"
    # With three classes the same space falls back to a softmax head.
    hm3 = ResNetHyperModel(space, input_shape=(16, 16, 3), num_classes=3)
    assert hm3.build(kt.HyperParameters()).output_shape == (None, 3)


def test_fit_takes_a_tf_data_dataset_and_rebatches_it(tiny_images):
    x, y = tiny_images()
    hm = ResNetHyperModel(TINY_SPACE, input_shape=(16, 16, 3), num_classes=3)
    hp = kt.HyperParameters()
    hp.values["batch_size"] = 16
    model = hm.build(hp)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(5)
    history = hm.fit(hp, model, dataset, verbose=0)
    assert len(history.history["loss"]) == 1  # the space's epochs = 1


@pytest.mark.parametrize("data", ["numpy", "image_folder", "tf.data"])
def test_a_trial_trains_without_a_keras_warning(data, tiny_images, recwarn):
    """Every way of giving data reaches `fit` as a dataset that orders its own rows; no
    "`shuffle=True` was passed, but will be ignored" per search (Python API users saw it)."""
    x, y = tiny_images()
    hm = ResNetHyperModel(FIXED_SPACE, input_shape=(16, 16, 3), num_classes=3)
    hp = kt.HyperParameters()
    model = hm.build(hp)
    given = {"numpy": lambda: (x, y), "image_folder": lambda: (FolderLike(x, y), None),
             "tf.data": lambda: (tf.data.Dataset.from_tensor_slices((x, y)).batch(4), None)}
    x_in, y_in = given[data]()
    hm.fit(hp, model, x_in, y_in, validation_data=(x, y), verbose=0)
    assert [str(w.message) for w in recwarn if "shuffle" in str(w.message)] == []


def test_label_smoothing_and_top5_metric(tiny_images):
    space = {**TINY_SPACE, "train": {**TINY_SPACE["train"], "label_smoothing": 0.1}}
    hm = ResNetHyperModel(space, input_shape=(16, 16, 3), num_classes=7)
    model = hm.build(kt.HyperParameters())
    x, y = tiny_images(num_classes=7, n=14)
    logs = model.fit(x, y, epochs=1, verbose=0).history
    assert "top5_accuracy" in logs and np.isfinite(logs["loss"][0])


def test_hypermodel_argument_errors():
    with pytest.raises(ValueError, match="needs input_shape and num_classes"):
        ResNetHyperModel("quick")
    with pytest.raises(ValueError, match="class_weight must be None, 'balanced' or a dict"):
        ResNetHyperModel("quick", input_shape=(32, 32, 3), num_classes=10, class_weight="auto")


def test_balanced_class_weights():
    weights = balanced_class_weights(np.array([0, 0, 0, 1]))
    assert weights == pytest.approx({0: 4 / 6, 1: 2.0})
    # With the class count, a class absent from the labels gets 1.0.
    weights = balanced_class_weights(np.array([0, 0, 0, 1]), num_classes=3)
    assert weights == pytest.approx({0: 4 / 6, 1: 2.0, 2: 1.0})


def _spy_on_fit(monkeypatch, model):
    seen = {}

    def fit(*args, **kwargs):
        seen.update(kwargs)

    monkeypatch.setattr(model, "fit", fit)
    return seen


def test_balanced_class_weights_reach_fit_for_arrays(monkeypatch, tiny_images):
    x, _ = tiny_images(n=12)
    y = np.array([0] * 8 + [1] * 3 + [2])
    hm = ResNetHyperModel(FIXED_SPACE, input_shape=(16, 16, 3), num_classes=3,
                          class_weight="balanced")
    hp = kt.HyperParameters()
    model = hm.build(hp)
    seen = _spy_on_fit(monkeypatch, model)
    hm.fit(hp, model, x, y, verbose=0)
    assert seen["class_weight"] == pytest.approx({0: 12 / 24, 1: 12 / 9, 2: 12 / 3})


class FolderLike:
    """The interface of an `ImageFolder` that `fit` uses, over arrays."""

    class_names = ("a", "b", "c")

    def __init__(self, x, y):
        self.x, self.y = x, y

    def labels(self, split):
        return self.y

    def dataset(self, split, batch_size=None, shuffle=None):
        return tf.data.Dataset.from_tensor_slices((self.x, self.y)).batch(batch_size)


def test_balanced_class_weights_reach_fit_for_an_image_folder(monkeypatch, tiny_images):
    x, _ = tiny_images(n=4)
    data = FolderLike(x, np.array([0, 0, 0, 1]))  # class 2 has no training image
    hm = ResNetHyperModel(FIXED_SPACE, input_shape=(16, 16, 3), num_classes=3,
                          class_weight="balanced")
    hp = kt.HyperParameters()
    model = hm.build(hp)
    seen = _spy_on_fit(monkeypatch, model)
    hm.fit(hp, model, data, verbose=0)
    assert seen["class_weight"] == pytest.approx({0: 4 / 6, 1: 2.0, 2: 1.0})


def test_balanced_class_weights_with_a_dataset_say_what_to_pass(tiny_images):
    x, y = tiny_images(n=8)
    hm = ResNetHyperModel(FIXED_SPACE, input_shape=(16, 16, 3), num_classes=3,
                          class_weight="balanced")
    hp = kt.HyperParameters()
    with pytest.raises(ValueError, match="class_weight='balanced' needs the training labels"):
        hm.fit(hp, hm.build(hp), tf.data.Dataset.from_tensor_slices((x, y)), verbose=0)


def test_a_nan_loss_records_a_failed_trial_with_its_reason(tmp_path, tiny_images):
    x, y = tiny_images(n=16)
    # A NaN class weight makes the weighted loss NaN from the first batch on.
    hm = ResNetHyperModel(FIXED_SPACE, input_shape=(16, 16, 3), num_classes=3,
                          class_weight={0: float("nan"), 1: 1.0, 2: 1.0})
    tuner = kt.RandomSearch(hm, objective="val_accuracy", max_trials=1,
                            directory=str(tmp_path), max_consecutive_failed_trials=1)
    with pytest.raises(RuntimeError, match="consecutive failures"):
        tuner.search(x, y, validation_data=(x, y), verbose=0)
    [trial] = tuner.oracle.trials.values()
    assert trial.status == "FAILED"
    assert "loss became nan at epoch 1, batch 1" in trial.message


def test_a_tiny_model_learns_separable_images(tiny_images):
    keras.utils.set_random_seed(0)
    x, y = tiny_images(n=96, seed=0)
    x_test, y_test = tiny_images(n=48, seed=1)
    space = {**FIXED_SPACE, "train": {"batch_size": 16, "learning_rate": 0.01, "epochs": 6}}
    hm = ResNetHyperModel(space, input_shape=(16, 16, 3), num_classes=3)
    hp = kt.HyperParameters()
    model = hm.build(hp)
    hm.fit(hp, model, x, y, verbose=0)
    accuracy = np.mean(model.predict(x_test, verbose=0).argmax(axis=1) == y_test)
    assert accuracy >= 0.8, f"test accuracy {accuracy:.2f}; chance is 0.33"


@pytest.mark.skipif(
    not hasattr(keras.Variable, "__float__"),
    reason=f"the test reads float(optimizer.learning_rate); Keras {keras.__version__} (3.3, "
    "the oldest supported) has no float(Variable). The optimizers themselves work there.",
)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_row_uses_the_configs_settings(name):
    train = TrainConfig(optimizer=name, learning_rate=0.02, momentum=0.5, weight_decay=1e-4)
    optimizer = make_optimizer(train)
    assert float(optimizer.learning_rate) == pytest.approx(0.02)
    assert optimizer.weight_decay == pytest.approx(1e-4)
    for param in OPTIMIZERS[name].params:
        assert getattr(optimizer, param) == pytest.approx(getattr(train, param))
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="softmax")])
    compile_model(model, train, num_classes=3)
    before = model.get_weights()[0].copy()
    loss = model.train_on_batch(np.ones((4, 2), "float32"), np.array([0, 1, 2, 0]))
    assert np.all(np.isfinite(loss)) and not np.allclose(model.get_weights()[0], before)


def test_every_space_builds_its_default_model_at_its_scale():
    """`quick` and `cifar` are for small images; both build and run at 32x32."""
    for name in ("quick", "cifar"):
        hm = ResNetHyperModel(name, input_shape=(32, 32, 3), num_classes=10)
        model = hm.build(kt.HyperParameters())
        assert model.predict(np.zeros((1, 32, 32, 3), np.uint8), verbose=0).shape == (1, 10)


def test_cosine_schedule_decays_over_the_trial_and_resumes_mid_curve():
    from resnet_tuner.training import CosineDecayPerStep

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    schedule = CosineDecayPerStep(0.1, epochs=4)
    schedule.set_model(model)
    schedule.set_params({"steps": 10})
    rates = {}
    for epoch, batch in [(0, 0), (2, 0), (3, 9)]:
        schedule.on_epoch_begin(epoch)
        schedule.on_train_batch_begin(batch)
        rates[epoch, batch] = float(model.optimizer.learning_rate.numpy())
    assert rates[0, 0] == pytest.approx(0.1)
    assert rates[2, 0] == pytest.approx(0.1 * (0.01 + 0.99 * 0.5))  # half way: half the rate
    assert rates[3, 9] < 0.003
