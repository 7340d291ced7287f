"""Transfer learning on keras.applications.ResNet50: weights loading and freeze depth.

No download ever happens: the tests save a backbone's weights to a file and load
them through the same `resolve_weights` -> `load_weights` path users take.
"""

import h5py
import keras
import numpy as np
import pytest

from resnet_tuner import ResNetConfig, build_resnet, transfer
from resnet_tuner.builder import stage_of

SHAPE = (32, 32, 3)


def transfer_config(**changes):
    base = dict(backbone="resnet50", weights=None, head_hidden=10, binary_head=True)
    return ResNetConfig(**{**base, **changes})


def backbone(model):
    return model.get_layer("resnet50")


@pytest.fixture(scope="module")
def saved_weights(tmp_path_factory):
    """A ResNet50 (no top) with recognisable weights, saved in both formats users have."""
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=SHAPE)
    kernel = base.get_layer("conv1_conv").kernel
    kernel.assign(np.full(kernel.shape, 0.125, dtype="float32"))
    folder = tmp_path_factory.mktemp("weights")
    native = folder / "backbone.weights.h5"
    base.save_weights(native)
    # The legacy .h5 layout keras.applications downloads into ~/.keras/models.
    from keras.src.legacy.saving import legacy_h5_format

    legacy = folder / transfer.RESNET50_NOTOP_FILE
    with h5py.File(legacy, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, base)
    return native, legacy


def test_weights_from_a_user_file(saved_weights):
    native, _ = saved_weights
    model = build_resnet(transfer_config(weights=str(native)), SHAPE, 2)
    np.testing.assert_array_equal(backbone(model).get_layer("conv1_conv").kernel.numpy(), 0.125)


def test_imagenet_weights_come_from_the_keras_cache(saved_weights, tmp_path, monkeypatch):
    _, legacy = saved_weights
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / transfer.RESNET50_NOTOP_FILE).write_bytes(legacy.read_bytes())
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("must not download when the cache has the file")

    monkeypatch.setattr(keras.utils, "get_file", no_download)
    model = build_resnet(transfer_config(weights="imagenet"), SHAPE, 2)
    np.testing.assert_array_equal(backbone(model).get_layer("conv1_conv").kernel.numpy(), 0.125)


def test_no_network_and_no_file_says_how_to_provide_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*args, **kwargs):  # what get_file raises with no network
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(transfer.WeightsUnavailableError) as info:
        build_resnet(transfer_config(weights="imagenet"), SHAPE, 2)
    message = str(info.value)
    assert transfer.RESNET50_NOTOP_URL in message
    assert str(tmp_path / "models" / transfer.RESNET50_NOTOP_FILE) in message
    assert "weights='/path/to/" in message and "weights=None" in message


def test_missing_weights_file_is_named():
    with pytest.raises(FileNotFoundError, match="weights file not found: /no/such/r50.h5"):
        build_resnet(transfer_config(weights="/no/such/r50.h5"), SHAPE, 2)


@pytest.mark.parametrize("stages", [0, 3, 5])
def test_freeze_depth_on_resnet50(stages):
    model = build_resnet(transfer_config(freeze_stages=stages), SHAPE, 2)
    for layer in backbone(model).layers:
        stage = stage_of(layer.name)
        if stage is None:
            continue  # the input layer
        assert layer.trainable is (stage > stages), layer.name
    head = model.get_layer("predictions")
    assert head.trainable
    trainable = {id(w) for w in model.trainable_weights}
    assert (id(backbone(model).get_layer("conv5_block3_3_conv").kernel) in trainable) is (
        stages < 5
    )


def test_transfer_model_preprocesses_like_keras_applications():
    from keras.applications.resnet50 import preprocess_input

    model = build_resnet(transfer_config(freeze_stages=5), SHAPE, 2)
    images = np.random.default_rng(0).integers(0, 256, (2, *SHAPE)).astype("uint8")
    to_backbone = keras.Model(model.input, model.get_layer("caffe_preprocess").output)
    np.testing.assert_allclose(
        to_backbone.predict(images, verbose=0),
        preprocess_input(images.astype("float32")),
        atol=1e-3,
    )
    assert model.output_shape == (None, 1)
