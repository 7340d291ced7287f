"""ResNetConfig and build_resnet: presets, block x shortcut grid, saving, augmentation, freezing."""

import json

import keras
import numpy as np
import pytest

from resnet_tuner import ResNetConfig, build_resnet, freeze_stages
from resnet_tuner.builder import stage_of
from resnet_tuner.layers import RandomGamma, ZeroPadShortcut


def trainable_count(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


# Trainable parameters of torchvision's resnet18..152 (no conv bias; BN gamma/beta
# are trainable, moving statistics are not): the paper's Table 1 networks.
TORCHVISION_TRAINABLE = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_TRAINABLE))
def test_imagenet_presets_match_paper_table1_counts(name):
    model = build_resnet(ResNetConfig.preset(name), (64, 64, 3), 1000)
    assert trainable_count(model) == TORCHVISION_TRAINABLE[name]


def test_resnet50_with_bias_matches_keras_applications_exactly():
    ours = build_resnet(ResNetConfig.preset("resnet50", conv_bias=True), (224, 224, 3), 1000)
    reference = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))
    assert ours.count_params() == reference.count_params() == 25_636_712
    assert trainable_count(ours) == trainable_count(reference)


# He et al. 2015, Table 6: parameters of the CIFAR-10 networks, as printed.
CIFAR_TABLE6 = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85,
                "resnet110": 1.7}


@pytest.mark.parametrize("name", sorted(CIFAR_TABLE6))
def test_cifar_presets_match_table6(name):
    model = build_resnet(ResNetConfig.preset(name), (32, 32, 3), 10)
    millions = trainable_count(model) / 1e6
    digits = 1 if CIFAR_TABLE6[name] >= 1 else 2
    assert round(millions, digits) == CIFAR_TABLE6[name]
    cfg = ResNetConfig.preset(name)
    assert cfg.shortcut == "A" and cfg.stage_widths == (16, 32, 64)
    assert 6 * cfg.stage_depths[0] + 2 == int(name.removeprefix("resnet"))


def seed_003_mini_resnet():
    """The 003 seed's mini_resnet, transcribed to Keras 3 functional layers."""
    layers = keras.layers

    def residual_block(x, filters, strides=1):
        residual = x
        if strides != 1:
            residual = layers.Conv2D(filters, 1, strides=strides)(x)
            residual = layers.BatchNormalization()(residual)
        y = layers.Conv2D(filters, 3, strides=strides, padding="same")(x)
        y = layers.Activation("relu")(layers.BatchNormalization()(y))
        y = layers.Conv2D(filters, 3, padding="same")(y)
        y = layers.BatchNormalization()(y)
        return layers.Activation("relu")(layers.add([y, residual]))

    inputs = keras.Input((224, 224, 3))
    x = layers.Conv2D(32, 3, strides=2, padding="same")(inputs)
    x = layers.Activation("relu")(layers.BatchNormalization()(x))
    for filters, strides in [(32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (256, 2)]:
        x = residual_block(x, filters, strides)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(10, activation="relu")(x)
    return keras.Model(inputs, layers.Dense(1, activation="sigmoid")(x))


def test_mini_resnet_is_the_seed_model_layer_for_layer():
    ours = build_resnet(ResNetConfig.preset("mini_resnet"), (224, 224, 3), 2)
    seed = seed_003_mini_resnet()
    assert ours.count_params() == seed.count_params() == 1_603_861
    # Same weights in the same order of creation (conv, BN, shortcut, dense).
    def shapes(model):
        return sorted(tuple(w.shape) for w in model.weights)

    assert shapes(ours) == shapes(seed)
    assert ours.output_shape == seed.output_shape == (None, 1)


TINY = dict(stage_depths=(1, 1), stage_widths=(4, 8), stem="cifar", stem_width=4)


@pytest.mark.parametrize("preactivation", [False, True])
@pytest.mark.parametrize("shortcut", ["A", "B", "C"])
@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_every_block_and_shortcut_trains_one_step(block, shortcut, preactivation):
    cfg = ResNetConfig(block=block, shortcut=shortcut, preactivation=preactivation, **TINY)
    model = build_resnet(cfg, (16, 16, 3), 3)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    y = np.array([0, 2])
    before = [w.numpy().copy() for w in model.trainable_weights]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    after = model.trainable_weights
    assert any(not np.allclose(b, a.numpy()) for b, a in zip(before, after, strict=True))
    probs = model.predict(x, verbose=0)
    assert probs.shape == (2, 3) and np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_option_a_adds_no_parameters(block):
    a = build_resnet(ResNetConfig(block=block, shortcut="A", **TINY), (16, 16, 3), 3)
    b = build_resnet(ResNetConfig(block=block, shortcut="B", **TINY), (16, 16, 3), 3)
    pads = [layer for layer in a.layers if isinstance(layer, ZeroPadShortcut)]
    assert pads and all(not layer.weights for layer in pads)
    assert not any("shortcut_conv" in layer.name for layer in a.layers)
    projection = sum(
        layer.count_params() for layer in b.layers if "_shortcut_" in layer.name
    )
    assert projection > 0
    assert a.count_params() == b.count_params() - projection


def test_option_c_projects_every_block_and_b_only_where_shape_changes():
    cfg = ResNetConfig(block="basic", stage_depths=(2, 2), stage_widths=(4, 8), stem="cifar",
                       stem_width=4)
    names_b = {layer.name for layer in build_resnet(cfg, (16, 16, 3), 3).layers}
    model_c = build_resnet(cfg.replace(shortcut="C"), (16, 16, 3), 3)
    names_c = {layer.name for layer in model_c.layers}
    assert {n for n in names_b if n.endswith("shortcut_conv")} == {"stage3_block1_shortcut_conv"}
    assert {n for n in names_c if n.endswith("shortcut_conv")} == {
        f"stage{s}_block{b}_shortcut_conv" for s in (2, 3) for b in (1, 2)
    }


def test_layer_names_are_deterministic():
    cfg = ResNetConfig.preset("resnet18")
    first = [layer.name for layer in build_resnet(cfg, (32, 32, 3), 10).layers]
    keras.backend.clear_session()
    build_resnet(cfg, (32, 32, 3), 10)  # names must not depend on what was built before
    second = [layer.name for layer in build_resnet(cfg, (32, 32, 3), 10).layers]
    assert first == second
    assert "stage2_block1_conv1" in first and "stage5_block2_add" in first


@pytest.mark.parametrize("name", ResNetConfig.preset_names())
def test_config_json_round_trip(name):
    cfg = ResNetConfig.preset(name, flip="both", gamma=(0.4, 0.7), shift=0.1, dropout=0.2)
    text = json.dumps(cfg.to_dict())
    assert ResNetConfig.from_dict(json.loads(text)) == cfg
    assert ResNetConfig.from_json(cfg.to_json()) == cfg


def test_preset_overrides_and_unknown_names():
    assert ResNetConfig.preset("resnet18", conv_bias=True).conv_bias is True
    with pytest.raises(ValueError, match="Unknown architecture preset 'resnet19'"):
        ResNetConfig.preset("resnet19")
    with pytest.raises(ValueError, match=r"Unknown ResNetConfig field\(s\) \['depth'\]"):
        ResNetConfig.from_dict({"depth": 3})


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(block="wide"), r"block must be one of .*Received: block='wide'"),
        (dict(shortcut="D"), r"shortcut must be one of .*Received: shortcut='D'"),
        (dict(stage_depths=(2, 0)), r"stage_depths must be .*Received: stage_depths=\(2, 0\)"),
        (dict(stage_depths=(2, 2), stage_widths=(8,)), "same length"),
        (dict(dropout=1.5), r"dropout must be a number in \[0, 1\)"),
        (dict(gamma=(0.7, 0.4)), "gamma must be None or a"),
        (dict(flip="diagonal"), "flip must be one of"),
        (dict(freeze_stages=7), r"freeze_stages must be an integer from 0 to 5"),
        (dict(stem="vgg"), "stem must be one of"),
        (dict(shortcut="A", stage_widths=(64, 32, 256, 512)), "never decrease"),
    ],
)
def test_config_validation_names_field_and_value(changes, message):
    with pytest.raises(ValueError, match=message):
        ResNetConfig.preset("resnet18", **changes)


def test_build_argument_errors():
    cfg = ResNetConfig(**TINY)
    with pytest.raises(ValueError, match=r"input_shape must be .*Received: input_shape=\(16, 16\)"):
        build_resnet(cfg, (16, 16), 3)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        build_resnet(cfg, (16, 16, 3), 1)
    with pytest.raises(ValueError, match="binary_head=True .* needs num_classes=2"):
        build_resnet(cfg.replace(binary_head=True), (16, 16, 3), 3)


AUGMENTED = ResNetConfig(flip="both", gamma=(0.4, 0.7), shift=0.1, dropout=0.2, head_hidden=8,
                         **TINY)


def test_save_load_safe_mode_predicts_identically(tmp_path):
    model = build_resnet(AUGMENTED, (16, 16, 3), 3)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(1).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    model.fit(x, np.array([0, 1, 2, 0]), epochs=1, verbose=0)
    expected = model.predict(x, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), expected)
    kinds = {type(layer).__name__ for layer in reloaded.layers}
    assert {"RandomFlip", "RandomTranslation", "RandomGamma"} <= kinds
    assert "Lambda" not in kinds


def test_augmentation_is_inactive_at_inference():
    augmented = build_resnet(AUGMENTED, (16, 16, 3), 3)
    plain = build_resnet(AUGMENTED.replace(flip="none", gamma=None, shift=0.0), (16, 16, 3), 3)
    for layer in plain.layers:
        if layer.weights:
            layer.set_weights(augmented.get_layer(layer.name).get_weights())
    x = np.random.default_rng(2).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(augmented(x, training=False), plain(x, training=False))
    # ... and active in training: the gamma layer alone changes its input.
    gamma = RandomGamma(0.4, 0.7, seed=0)
    images = np.full((2, 4, 4, 3), 0.5, dtype="float32")
    np.testing.assert_array_equal(gamma(images, training=False), images)
    trained = np.asarray(gamma(images, training=True))
    assert np.all(trained > 0.5) and np.all(trained < 0.5**0.4 + 1e-6)


def test_stage_of_parses_both_naming_schemes():
    assert stage_of("stem_conv") == stage_of("conv1_conv") == stage_of("pool1_pool") == 1
    assert stage_of("stage3_block2_conv1") == 3 and stage_of("conv4_block1_1_conv") == 4
    assert stage_of("predictions") is None and stage_of("augment_flip") is None


@pytest.mark.parametrize("stages", [0, 1, 2, 3])
def test_freeze_stages_freezes_exactly_the_chosen_stages(stages):
    cfg = ResNetConfig(stage_depths=(1, 2), stage_widths=(4, 8), stem="cifar", stem_width=4,
                       freeze_stages=stages)
    model = build_resnet(cfg, (16, 16, 3), 3)
    for layer in model.layers:
        stage = stage_of(layer.name)
        frozen = stage is not None and stage <= stages
        assert layer.trainable is not frozen, layer.name
    in_frozen_stages = {
        id(w) for layer in model.layers
        if stage_of(layer.name) and stage_of(layer.name) <= stages for w in layer.weights
    }
    assert bool(in_frozen_stages) == (stages > 0)
    assert not in_frozen_stages & {id(w) for w in model.trainable_weights}
    assert {id(w) for w in model.trainable_weights}  # the head always trains


def test_frozen_batchnorm_runs_in_inference_mode():
    cfg = ResNetConfig(freeze_stages=3, **TINY)
    model = build_resnet(cfg, (16, 16, 3), 3)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    bn = model.get_layer("stage2_block1_bn1")
    before = bn.moving_mean.numpy().copy()
    x = np.random.default_rng(3).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    model.train_on_batch(x, np.array([0, 1, 2, 0]))
    np.testing.assert_array_equal(bn.moving_mean.numpy(), before)
    assert not freeze_stages(model, 0)  # freezing nothing is a no-op
