"""Pretrained backbones: weights loading and freeze depth, for every record of `BACKBONES`.

No download ever happens: the tests save a backbone's weights to a file and load
them through the same `resolve_weights` -> `load_weights` path users take.
"""

import h5py
import keras
import numpy as np
import pytest

from resnet_tuner import ResNetConfig, build_resnet
from resnet_tuner.model import stage_of
from resnet_tuner.model.backbones import BACKBONES
from resnet_tuner.model.weights import WeightsUnavailableError

SHAPE = (32, 32, 3)


def transfer_config(backbone, **changes):
    base = dict(backbone=backbone, weights=None, head_hidden=10, binary_head=True)
    return ResNetConfig(**{**base, **changes})


def first_conv(model, backbone):
    """The first convolution of the nested pretrained network."""
    nested = model.get_layer(backbone)
    return next(layer for layer in nested.layers if isinstance(layer, keras.layers.Conv2D))


# Building a backbone costs seconds (ResNet152V2 ~25 s to save and reload): one record of
# each family by default, the others under -m slow (as tests/test_backbones.py).
_FIRST_OF_FAMILY = {record.family: name for name, record in reversed(BACKBONES.items())}
HEAVY = [pytest.param(name, marks=() if name in _FIRST_OF_FAMILY.values() else pytest.mark.slow)
         for name in BACKBONES]


@pytest.fixture(scope="module", params=HEAVY)
def saved_weights(request, tmp_path_factory):
    """A backbone with recognisable weights, saved in both formats users have."""
    record = BACKBONES[request.param]
    base = record.build(SHAPE)
    conv = next(layer for layer in base.layers if isinstance(layer, keras.layers.Conv2D))
    conv.kernel.assign(np.full(conv.kernel.shape, 0.125, dtype="float32"))
    folder = tmp_path_factory.mktemp("weights")
    native = folder / "backbone.weights.h5"
    base.save_weights(native)
    # The legacy .h5 layout keras.applications downloads into ~/.keras/models.
    from keras.src.legacy.saving import legacy_h5_format

    legacy = folder / record.weights_file
    with h5py.File(legacy, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, base)
    return request.param, native, legacy


def test_weights_from_a_user_file(saved_weights):
    backbone, native, _ = saved_weights
    model = build_resnet(transfer_config(backbone, weights=str(native)), SHAPE, 2)
    np.testing.assert_array_equal(first_conv(model, backbone).kernel.numpy(), 0.125)


def test_imagenet_weights_come_from_the_keras_cache(saved_weights, tmp_path, monkeypatch):
    backbone, _, legacy = saved_weights
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / BACKBONES[backbone].weights_file).write_bytes(legacy.read_bytes())
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("must not download when the cache has the file")

    monkeypatch.setattr(keras.utils, "get_file", no_download)
    model = build_resnet(transfer_config(backbone, weights="imagenet"), SHAPE, 2)
    np.testing.assert_array_equal(first_conv(model, backbone).kernel.numpy(), 0.125)


@pytest.mark.parametrize("backbone", HEAVY)
def test_no_network_and_no_file_says_how_to_provide_weights(backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    record = BACKBONES[backbone]

    def offline(*args, **kwargs):  # what get_file raises with no network
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        build_resnet(transfer_config(backbone, weights="imagenet"), SHAPE, 2)
    message = str(info.value)
    assert record.weights_url in message and record.title in message
    assert str(tmp_path / "models" / record.weights_file) in message
    assert "weights='/path/to/" in message and "weights=None in Python" in message
    # A search space is TOML, which has no None: the message says what to write there.
    assert 'weights = "none" in the space file' in message


@pytest.mark.parametrize("backbone", HEAVY)
def test_download_asks_keras_for_the_recorded_file_and_hash(backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    calls = []

    def fake_get_file(fname, origin, cache_subdir, file_hash):
        calls.append((fname, origin, cache_subdir, file_hash))
        raise Exception("offline")

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    with pytest.raises(WeightsUnavailableError):
        build_resnet(transfer_config(backbone, weights="imagenet"), SHAPE, 2)
    record = BACKBONES[backbone]
    assert calls == [(record.weights_file, record.weights_url, "models", record.weights_hash)]


@pytest.mark.parametrize("backbone", HEAVY)
def test_missing_weights_file_is_named(backbone):
    with pytest.raises(FileNotFoundError, match="weights file not found: /no/such/r50.h5"):
        build_resnet(transfer_config(backbone, weights="/no/such/r50.h5"), SHAPE, 2)


@pytest.mark.parametrize("backbone", HEAVY)
def test_freeze_depth_follows_the_recorded_stage_prefixes(backbone):
    record = BACKBONES[backbone]
    num_stages = len(record.stage_prefixes)
    for stages in sorted({0, num_stages // 2 + 1, num_stages}):
        keras.backend.clear_session(free_memory=False)
        model = build_resnet(transfer_config(backbone, freeze_stages=stages), SHAPE, 2)
        nested = model.get_layer(backbone)
        seen = set()
        for layer in nested.layers[1:]:  # after the input layer, every layer has a stage
            stage = stage_of(layer.name)
            assert stage is not None, f"{layer.name} matches no stage_prefixes"
            seen.add(stage)
            assert layer.name.startswith(record.stage_prefixes[stage - 1])
            assert layer.trainable is (stage > stages), (stages, layer.name)
        assert seen == set(range(1, num_stages + 1))  # every layer of every stage found
        assert model.get_layer("predictions").trainable
        last_kernel = next(layer for layer in reversed(nested.layers) if layer.weights).weights[0]
        trainable = {id(w) for w in model.trainable_weights}
        assert (id(last_kernel) in trainable) is (stages < num_stages)


def test_resnet50_preprocesses_like_keras_applications():
    from keras.applications.resnet50 import preprocess_input

    model = build_resnet(transfer_config("resnet50", freeze_stages=5), SHAPE, 2)
    images = np.random.default_rng(0).integers(0, 256, (2, *SHAPE)).astype("uint8")
    to_backbone = keras.Model(model.input, model.get_layer("caffe_preprocess").output)
    np.testing.assert_allclose(
        to_backbone.predict(images, verbose=0),
        preprocess_input(images.astype("float32")),
        atol=1e-3,
    )
    assert model.output_shape == (None, 1)
