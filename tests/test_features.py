"""Frozen stages computed once (`model.features`, `model.feature_cache`): the split, the
feature cache, `cached_fit`.

Tiny scratch ResNets at 16 px for everything that trains; one ResNet50 and one
ResNet50V2 (random weights, 32 px, no download) for the cut inside a nested
backbone; one of our own saved models as a user backbone.
"""

import json
import time

import keras
import keras_tuner as kt
import numpy as np
import pytest
from conftest import TINY_MODEL, separable_images
from keras_tuner.src.engine.tuner_utils import SaveBestEpoch  # the tuner's checkpoint

from resnet_tuner import ResNetConfig, build_resnet
from resnet_tuner.config import TrainConfig
from resnet_tuner.data.images import ImageData
from resnet_tuner.model import feature_cache, features
from resnet_tuner.model.backbones import layer_stages
from resnet_tuner.model.features import (
    NotCacheableError,
    cached_features,
    cached_fit,
    split_at_stage,
)
from resnet_tuner.run.budget import Deadline
from resnet_tuner.training import compile_model, schedule_callbacks

TRAIN = TrainConfig(batch_size=4, epochs=2, lr_schedule="cosine")


def tiny(freeze=2, size=16, **changes):
    """A three-stage scratch model (stem, stage2, stage3) with `freeze` stages frozen."""
    cfg = ResNetConfig(**{**TINY_MODEL, "freeze_stages": freeze, **changes})
    return build_resnet(cfg, (size, size, 3), 3)


def compiled(model):
    return compile_model(model, TRAIN, 3)


def twin(model, **changes):
    """Another model of the same config with the same weights."""
    other = build_resnet(ResNetConfig(**{**TINY_MODEL, **changes}), model.input_shape[1:], 3)
    other.set_weights(model.get_weights())
    return other


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


@pytest.fixture
def prefix_calls(monkeypatch):
    """Counts the batches the prefix computes."""
    calls = []
    run = feature_cache._run_prefix

    def counting(prefix, batch):
        calls.append(len(batch))
        return run(prefix, batch)

    monkeypatch.setattr(feature_cache, "_run_prefix", counting)
    return calls


def steps(model) -> int:
    """The optimizer's step count (Keras 3.3's Variable has no `__int__`)."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def entries(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


# --------------------------------------------------------------------------- split


def _names(model):
    return {leaf.name for leaf in features._leaves(model)}


def _check_split(model, k, x):
    prefix, suffix = split_at_stage(model, k)
    np.testing.assert_allclose(suffix(prefix(x)), model(x), rtol=1e-5, atol=1e-6)
    frozen = {layer.name for layer, stage in layer_stages(model) if stage and stage <= k}
    # The prefix is the frozen stages and what feeds them (rescale, preprocessing).
    assert frozen <= _names(prefix)
    assert not _names(prefix) & _names(suffix)
    assert not _names(prefix) - frozen - {"rescale", "caffe_preprocess", "tf_preprocess",
                                          "user_backbone_pixels"}
    # Training the suffix trains the model's own weights, all of them.
    assert {id(v) for v in suffix.trainable_variables} == {
        id(v) for v in model.trainable_variables}
    return prefix, suffix


@pytest.mark.parametrize("preactivation", [False, True])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_split_of_a_scratch_model_computes_the_model(k, preactivation):
    model = tiny(freeze=k, stage_depths=(1, 2), preactivation=preactivation)
    prefix, _ = _check_split(model, k, separable_images(n=4)[0])
    last = {1: "stem_relu", 2: "stage2_block1_out", 3: "stage3_block2_out"}[k]
    if preactivation:
        last = {1: "stem_conv", 2: "stage2_block1_add", 3: "post_relu"}[k]
    assert prefix.outputs[0].shape[1:] == model.get_layer(last).output.shape[1:]


@pytest.mark.parametrize("backbone, k, end", [
    ("resnet50", 4, "conv4_block6_out"),
    ("resnet50v2", 5, "post_relu"),  # V2's last stage ends after post_bn / post_relu
])
def test_split_inside_a_pretrained_backbone(backbone, k, end):
    cfg = ResNetConfig(backbone=backbone, weights=None, freeze_stages=k)
    model = build_resnet(cfg, (32, 32, 3), 3)
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype("uint8")
    prefix, _ = _check_split(model, k, x)
    inner = model.get_layer(backbone).get_layer(end)
    assert prefix.outputs[0].shape[1:] == inner.output.shape[1:]


def test_split_inside_a_user_backbone(tmp_path):
    saved = tmp_path / "mine.keras"
    tiny(freeze=0, stage_depths=(1, 1, 1), stage_widths=(4, 8, 8)).save(saved)
    model = build_resnet(ResNetConfig(backbone=str(saved), freeze_stages=3), (16, 16, 3), 3)
    _check_split(model, 3, separable_images(n=4)[0])


def test_augmentation_or_trainable_layers_before_the_cut_are_refused():
    with pytest.raises(NotCacheableError, match="'augment_flip'.*training=True"):
        split_at_stage(tiny(freeze=2, flip="horizontal"), 2)
    with pytest.raises(NotCacheableError, match="'stage3_block1_conv1'.*trainable weights"):
        split_at_stage(tiny(freeze=2), 3)
    with pytest.raises(NotCacheableError, match="positive integer"):
        split_at_stage(tiny(), 0)


def test_a_skip_connection_over_the_cut_is_refused():
    image = keras.Input((8, 8, 3), dtype="uint8")
    pixels = keras.layers.Rescaling(1 / 255, name="rescale")(image)
    stem = keras.layers.Conv2D(4, 3, name="stem_conv", trainable=False)(pixels)
    stage2 = keras.layers.Conv2D(4, 3, name="stage2_block1_conv1")(stem)
    pooled = [keras.layers.GlobalAveragePooling2D()(t) for t in (pixels, stage2)]
    out = keras.layers.Dense(2)(keras.layers.Concatenate()(pooled))
    with pytest.raises(NotCacheableError, match="no single tensor that ends stage 1"):
        split_at_stage(keras.Model(image, out), 1)


# --------------------------------------------------------------------------- cache


def test_features_are_computed_once_and_reused(cache, prefix_calls):
    model = tiny()
    prefix, _ = split_at_stage(model, 2)
    x, _ = separable_images(n=40)
    first = cached_features(prefix, x, cache_dir=cache, dtype="float32")
    assert len(prefix_calls) == 2  # 40 images in batches of FEATURE_BATCH=32
    np.testing.assert_allclose(first, prefix(x), rtol=1e-5, atol=1e-6)
    (entry,) = entries(cache)
    stamp = (cache / entry / "features.npy").stat().st_mtime_ns
    again = cached_features(split_at_stage(model, 2)[0], x, cache_dir=cache, dtype="float32")
    assert len(prefix_calls) == 2 and entries(cache) == [entry]
    assert (cache / entry / "features.npy").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again, first)


def test_other_stages_weights_images_or_size_are_other_entries(cache, prefix_calls):
    model = tiny(freeze=3)
    x, _ = separable_images(n=8)
    cached_features(split_at_stage(model, 2)[0], x, cache_dir=cache)
    cached_features(split_at_stage(model, 3)[0], x, cache_dir=cache)  # other k
    cached_features(split_at_stage(model, 2)[0], x[::-1].copy(), cache_dir=cache)  # images
    assert len(entries(cache)) == 3
    model.get_layer("stem_bn").moving_mean.assign(np.ones(4))  # other (frozen) weights
    cached_features(split_at_stage(model, 2)[0], x, cache_dir=cache)
    big = tiny(freeze=3, size=24)
    big.set_weights(model.get_weights())  # same weights, other image size
    cached_features(split_at_stage(big, 2)[0], separable_images(n=8, size=24)[0],
                    cache_dir=cache)
    assert len(entries(cache)) == 5 and len(prefix_calls) == 5


def test_a_failure_midway_leaves_no_cache(cache, monkeypatch):
    prefix, _ = split_at_stage(tiny(), 2)
    run = feature_cache._run_prefix

    def fails_second_batch(prefix, batch, calls=[]):  # noqa: B006
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return run(prefix, batch)

    monkeypatch.setattr(feature_cache, "_run_prefix", fails_second_batch)
    with pytest.raises(KeyboardInterrupt):
        cached_features(prefix, separable_images(n=40)[0], cache_dir=cache)
    assert entries(cache) == []  # neither an entry nor its temporary folder


def test_float16_by_default_float32_where_float16_overflows(cache, monkeypatch):
    prefix, _ = split_at_stage(tiny(), 2)
    x, _ = separable_images(n=8)
    assert cached_features(prefix, x, cache_dir=cache).dtype == np.float16
    run = feature_cache._run_prefix
    monkeypatch.setattr(feature_cache, "_run_prefix", lambda p, b: run(p, b) * 1e6)
    stored = cached_features(prefix, x[1:], cache_dir=cache)
    assert stored.dtype == np.float32 and stored.max() > 65504


def test_an_image_data_object_is_keyed_by_its_cache_file_and_split(cache, tmp_path,
                                                                   prefix_calls):
    x, y = separable_images(n=24)
    np.save(tmp_path / "images.npy", x)
    index = {"train": np.arange(16), "val": np.arange(16, 24), "test": np.arange(0)}
    data = ImageData(tmp_path / "images.npy", y, [f"{i}.png" for i in range(24)], index,
                     ["a", "b", "c"], (16, 16))
    prefix, _ = split_at_stage(tiny(), 2)
    train = cached_features(prefix, data, split="train", cache_dir=cache, dtype="float32")
    val = cached_features(prefix, data, split="val", cache_dir=cache, dtype="float32")
    np.testing.assert_allclose(val, prefix(x[16:]), rtol=1e-5, atol=1e-6)
    assert train.shape[0] == 16 and len(entries(cache)) == 2
    # In memory (not a cache file), the images themselves make the key: the same entry.
    in_memory = ImageData(x, y, [f"{i}.png" for i in range(24)], index, ["a", "b", "c"],
                          (16, 16))
    calls = len(prefix_calls)
    cached_features(prefix, in_memory, split="val", cache_dir=cache, dtype="float32")
    assert len(entries(cache)) == 3 and len(prefix_calls) == calls + 1


# --------------------------------------------------------------------------- fit


def _fit_both(cache, shuffle, seed=None):
    """The same model trained by `fit` and by `cached_fit`, with a cosine schedule (a
    callback that sets `self.model.optimizer.learning_rate`) in both."""
    x, y = separable_images(n=32)
    xv, yv = separable_images(n=12, seed=1)
    plain = compiled(tiny())
    cached = compiled(twin(plain, freeze_stages=2))
    if shuffle:
        from resnet_tuner.hypermodel import shuffled_full_batches

        expected = plain.fit(shuffled_full_batches(x, y, 4, seed=seed), validation_data=(xv, yv),
                             validation_batch_size=4, shuffle=False, epochs=2, verbose=0,
                             callbacks=schedule_callbacks(TRAIN, 2))
    else:
        expected = plain.fit(x, y, batch_size=4, shuffle=False, validation_data=(xv, yv),
                             epochs=2, verbose=0, callbacks=schedule_callbacks(TRAIN, 2))
    got = cached_fit(cached, 2, x, y, validation_data=(xv, yv), cache_dir=cache,
                     feature_dtype="float32", batch_size=4, shuffle=shuffle, seed=seed,
                     epochs=2, verbose=0, callbacks=schedule_callbacks(TRAIN, 2))
    return plain, cached, expected, got


@pytest.mark.parametrize("shuffle, seed", [(False, None), (True, 7)])
def test_cached_fit_trains_like_fit(cache, shuffle, seed):
    plain, cached, expected, got = _fit_both(cache, shuffle, seed)
    assert set(got.history) == set(expected.history) == {
        "loss", "accuracy", "val_loss", "val_accuracy"}
    for name, values in expected.history.items():
        np.testing.assert_allclose(got.history[name], values, rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    for a, b in zip(cached.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert steps(cached) == steps(plain) == 16
    rate = keras.ops.convert_to_numpy(cached.optimizer.learning_rate)
    np.testing.assert_allclose(rate, keras.ops.convert_to_numpy(plain.optimizer.learning_rate),
                               rtol=1e-6)
    assert float(rate) < TRAIN.learning_rate / 2  # it decayed
    assert got.model is cached and cached.history is got


def test_a_trial_reading_the_cache_trains_as_the_trial_that_wrote_it(cache, prefix_calls):
    """The second trial of a search reads the entry the first one wrote (memory-mapped,
    float16): from the same weights and batch order it must train to the same model."""
    x, y = separable_images(n=32)
    xv, yv = separable_images(n=12, seed=1)
    writer = compiled(tiny())
    reader = compiled(twin(writer, freeze_stages=2))
    runs = []
    for model in (writer, reader):
        calls = len(prefix_calls)
        history = cached_fit(model, 2, x, y, validation_data=(xv, yv), cache_dir=cache,
                             batch_size=4, seed=3, epochs=3, verbose=0,
                             callbacks=schedule_callbacks(TRAIN, 3))
        runs.append((history.history, len(prefix_calls) - calls))
    (wrote, computed), (read, recomputed) = runs
    assert computed > 0 and recomputed == 0
    assert set(read) == set(wrote)
    for name, values in wrote.items():
        np.testing.assert_allclose(read[name], values, rtol=1e-6, err_msg=name)
    for a, b in zip(reader.get_weights(), writer.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_the_model_saves_and_reloads_after_a_cached_fit(cache, tmp_path):
    model = compiled(tiny())
    x, y = separable_images(n=16)
    cached_fit(model, 2, x, y, cache_dir=cache, batch_size=4, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")  # the cuts' extra graph nodes are not saved
    reloaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert [w.name for w in reloaded.weights] == [w.name for w in model.weights]


def test_callbacks_see_the_full_model_and_its_best_epoch_reloads(cache, tmp_path):
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(self.model)

    best = tmp_path / "best.weights.h5"
    saver = SaveBestEpoch(kt.Objective("val_accuracy", "max"), str(best))  # keras-tuner's
    model = compiled(tiny())
    x, y = separable_images(n=16)
    cached_fit(model, 2, x, y, validation_data=(x, y), cache_dir=cache, batch_size=4,
               epochs=1, callbacks=[Spy(), saver], verbose=0)
    assert seen and all(m is model for m in seen)
    reloaded = tiny()
    reloaded.load_weights(best)  # what keras-tuner does with the best epoch
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_a_stop_requested_by_a_callback_stops_training(cache):
    x, y = separable_images(n=16)

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    model = compiled(tiny())
    model.stop_training = True  # left over from an earlier fit: reset, as fit does
    history = cached_fit(model, 2, x, y, cache_dir=cache, batch_size=4, epochs=3,
                         callbacks=[StopAfterFirstEpoch()], verbose=0)
    assert history.epoch == [0]
    # A deadline already past stops at the first batch's end (run.budget.Deadline).
    model, deadline = compiled(tiny()), Deadline(time.time() - 1)
    history = cached_fit(model, 2, x, y, cache_dir=cache, batch_size=4, epochs=3,
                         callbacks=[deadline], verbose=0)
    assert deadline.stopped and history.epoch == [0] and steps(model) == 1


def test_cached_fit_on_an_image_data_object_validates_on_its_val_split(cache):
    x, y = separable_images(n=24)
    index = {"train": np.arange(16), "val": np.arange(16, 24), "test": np.arange(0)}
    data = ImageData(x, y, [f"{i}.png" for i in range(24)], index, ["a", "b", "c"], (16, 16))
    model = compiled(tiny())
    history = cached_fit(model, 2, data, cache_dir=cache, batch_size=4, epochs=2,
                         initial_epoch=1, class_weight={0: 1.0, 1: 2.0, 2: 1.0}, verbose=0)
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} == set(history.history)
    assert history.epoch == [1] and steps(model) == 4


def test_cached_fit_returns_none_where_the_cache_does_not_apply(cache, prefix_calls):
    import tensorflow as tf

    x, y = separable_images(n=8)
    model = compiled(tiny())
    fit = dict(cache_dir=cache, batch_size=4, epochs=1, verbose=0)
    assert cached_fit(model, 0, x, y, **fit) is None  # nothing frozen
    assert cached_fit(model, 3, x, y, **fit) is None  # stage 3 is trainable
    assert cached_fit(compiled(tiny(flip="both")), 2, x, y, **fit) is None  # augmentation
    assert cached_fit(model, 2, tf.data.Dataset.from_tensor_slices((x, y)), **fit) is None
    assert cached_fit(model, 2, list(x), y, **fit) is None
    assert cached_fit(model, 2, x, y, sample_weight=np.ones(8), **fit) is None
    assert cached_fit(model, 2, x, y, validation_split=0.5, **fit) is None
    val = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    assert cached_fit(model, 2, x, y, validation_data=val, **fit) is None
    assert prefix_calls == [] and steps(model) == 0
    with pytest.raises(ValueError, match="compile"):
        cached_fit(tiny(), 2, x, y, **fit)



def test_a_cache_that_does_not_fit_or_cannot_be_written_leaves_the_trial_uncached(
        cache, prefix_calls, monkeypatch):
    """Half the free disk at most; a full or read-only disk is a warning, not a failed trial.
    A model of a tf.distribute strategy (--devices) trains on the images too."""
    import collections
    import types

    x, y = separable_images(n=8)
    model = compiled(tiny())
    fit = dict(cache_dir=cache, batch_size=4, epochs=1, verbose=0)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(features.shutil, "disk_usage", lambda path: usage(10**6, 10**6, 1000))
    with pytest.warns(UserWarning, match="GiB free"):
        assert cached_fit(model, 2, x, y, **fit) is None
    monkeypatch.undo()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(feature_cache, "_write", full_disk)
    with pytest.warns(UserWarning, match="No space left"):
        assert cached_fit(model, 2, x, y, **fit) is None
    monkeypatch.setattr(model, "_distribute_strategy", types.SimpleNamespace(), raising=False)
    assert cached_fit(model, 2, x, y, **fit) is None
    assert prefix_calls == [] and steps(model) == 0


# --------------------------------------------------------------------------- in a search


def _search(tmp_path, backbone, feature_cache, name, head_epochs=0):
    from resnet_tuner import RandomSearch, ResNetHyperModel

    x, y = separable_images(n=24)
    space = {"model": {"backbone": str(backbone), "dropout": 0.0},
             "transfer": {"freeze_stages": 2},
             "augment": {"flip": "none"},
             "train": {"batch_size": 4, "epochs": 3, "learning_rate": 0.01,
                       "head_epochs": head_epochs}}
    keras.utils.set_random_seed(0)
    hypermodel = ResNetHyperModel(space, input_shape=x.shape[1:], num_classes=3,
                                  feature_cache=feature_cache)
    tuner = RandomSearch(hypermodel, objective="val_accuracy", max_trials=1, seed=1,
                         directory=str(tmp_path / "tuners"), project_name=name)
    tuner.search(x, y, validation_data=(x[:8], y[:8]), verbose=0)
    trial = tuner.oracle.get_best_trials(1)[0]
    return json.loads((tmp_path / "tuners" / name / f"trial_{trial.trial_id}"
                       / "history.json").read_text())["history"]


def test_a_search_trains_its_frozen_stages_once_and_its_next_trial_reuses_them(
        tmp_path, cache, prefix_calls):
    """`ResNetHyperModel(feature_cache=)`: every phase of a two-phase trial with frozen
    stages trains on cached features; the next trial of the same backbone and stages
    computes nothing; `feature_cache=False` computes nothing either."""
    backbone = tmp_path / "mine.keras"
    tiny(freeze=0, stage_depths=(1, 1, 1), stage_widths=(4, 8, 8)).save(backbone)
    first = _search(tmp_path, backbone, cache, "first", head_epochs=1)
    # phase 1 (all 3 stages frozen) and phase 2 (2 frozen), train and val each
    assert len(entries(cache)) == 4 and prefix_calls
    assert len(first["val_accuracy"]) == 3
    calls = len(prefix_calls)
    _search(tmp_path, backbone, cache, "second", head_epochs=1)
    assert len(prefix_calls) == calls and len(entries(cache)) == 4
    plain = _search(tmp_path, backbone, False, "plain", head_epochs=1)
    assert len(prefix_calls) == calls
    assert len(plain["val_accuracy"]) == 3
