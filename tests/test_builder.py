"""ResNetConfig and build_resnet: presets against published numbers, every row of the
block / shortcut / stem / augmentation tables, option A values, saving, freezing."""

import json

import keras
import numpy as np
import pytest

from resnet_tuner import ResNetConfig, build_resnet, freeze_stages
from resnet_tuner.model import layers as model_layers
from resnet_tuner.model import stage_of
from resnet_tuner.model.augment import AUGMENTATIONS, without_augmentation
from resnet_tuner.model.blocks import BLOCKS, SHORTCUTS, STEMS
from resnet_tuner.model.layers import RandomGamma, ZeroPadShortcut


def trainable_count(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def images(n=4, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


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


def tutorial_mini_resnet():
    """The mini-ResNet of a cats-vs-dogs tutorial, transcribed to Keras 3 functional layers."""
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


def test_mini_resnet_is_the_tutorial_model_layer_for_layer():
    ours = build_resnet(ResNetConfig.preset("mini_resnet"), (224, 224, 3), 2)
    reference = tutorial_mini_resnet()
    assert ours.count_params() == reference.count_params() == 1_603_861

    def shapes(model):
        return sorted(tuple(w.shape) for w in model.weights)

    assert shapes(ours) == shapes(reference)
    assert ours.output_shape == reference.output_shape == (None, 1)


# --------------------------------------------------------------------------- every table row


@pytest.mark.parametrize("preactivation", [False, True])
@pytest.mark.parametrize("shortcut", list(SHORTCUTS))
@pytest.mark.parametrize("block", list(BLOCKS))
def test_every_block_and_shortcut_trains_one_step(block, shortcut, preactivation, tiny_config):
    cfg = tiny_config(block=block, shortcut=shortcut, preactivation=preactivation)
    model = build_resnet(cfg, (16, 16, 3), 3)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = images(2), np.array([0, 2])
    before = [w.numpy().copy() for w in model.trainable_weights]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    after = model.trainable_weights
    assert any(not np.allclose(b, a.numpy()) for b, a in zip(before, after, strict=True))
    probs = model.predict(x, verbose=0)
    assert probs.shape == (2, 3) and np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("block", list(BLOCKS))
def test_block_output_width_is_stage_width_times_its_expansion(block, tiny_config):
    cfg = tiny_config(block=block, expansion=3)
    model = build_resnet(cfg, (16, 16, 3), 3)
    channels = model.get_layer("avg_pool").input.shape[-1]
    assert channels == 8 * BLOCKS[block].expansion_of(cfg) == 8 * cfg.block_expansion


@pytest.mark.parametrize("stem", list(STEMS))
def test_every_stem_feeds_the_first_stage(stem, tiny_config):
    model = build_resnet(tiny_config(stem=stem, stem_width=6), (32, 32, 3), 3)
    stem_layers = [layer for layer in model.layers if stage_of(layer.name) == 1]
    assert stem_layers and stem_layers[-1].output.shape[-1] == 6
    assert model.predict(images(2, 32), verbose=0).shape == (2, 3)


@pytest.mark.parametrize("block", list(BLOCKS))
def test_option_a_adds_no_parameters(block, tiny_config):
    a = build_resnet(tiny_config(block=block, shortcut="A"), (16, 16, 3), 3)
    b = build_resnet(tiny_config(block=block, shortcut="B"), (16, 16, 3), 3)
    pads = [layer for layer in a.layers if isinstance(layer, ZeroPadShortcut)]
    assert pads and all(not layer.weights for layer in pads)
    projection = sum(layer.count_params() for layer in b.layers if "_shortcut_" in layer.name)
    assert projection > 0
    assert a.count_params() == b.count_params() - projection


def test_option_c_projects_every_block_and_b_only_where_shape_changes(tiny_config):
    cfg = tiny_config(stage_depths=(2, 2))
    names_b = {layer.name for layer in build_resnet(cfg, (16, 16, 3), 3).layers}
    names_c = {layer.name for layer in build_resnet(cfg.replace(shortcut="C"), (16, 16, 3),
                                                     3).layers}
    assert {n for n in names_b if n.endswith("shortcut_conv")} == {"stage3_block1_shortcut_conv"}
    assert {n for n in names_c if n.endswith("shortcut_conv")} == {
        f"stage{s}_block{b}_shortcut_conv" for s in (2, 3) for b in (1, 2)
    }


# --------------------------------------------------------------------------- option A values


def test_zero_pad_shortcut_subsamples_then_appends_zero_channels():
    x = np.arange(2 * 5 * 5 * 3, dtype="float32").reshape(2, 5, 5, 3) + 1.0
    out = np.asarray(ZeroPadShortcut(strides=2, out_channels=7)(x))
    assert out.shape == (2, 3, 3, 7)
    np.testing.assert_array_equal(out[..., :3], x[:, ::2, ::2, :])  # the input, first
    np.testing.assert_array_equal(out[..., 3:], 0.0)  # then the zeros
    same = np.asarray(ZeroPadShortcut(strides=1, out_channels=3)(x))
    np.testing.assert_array_equal(same, x)


def _zero_residual_branch(model, block_name):
    """Zeroes the last BatchNorm of the block's residual branch: the branch outputs 0."""
    last_bn = max((layer for layer in model.layers
                   if layer.name.startswith(f"{block_name}_bn")), key=lambda layer: layer.name)
    last_bn.gamma.assign(np.zeros(last_bn.gamma.shape, "float32"))
    last_bn.beta.assign(np.zeros(last_bn.beta.shape, "float32"))


@pytest.mark.parametrize("shortcut", list(SHORTCUTS))
@pytest.mark.parametrize("block", list(BLOCKS))
def test_block_with_zeroed_residual_branch_is_its_shortcut(block, shortcut, tiny_config):
    """stage3_block1 halves the resolution and doubles the width: its shortcut is not x."""
    model = build_resnet(tiny_config(block=block, shortcut=shortcut), (16, 16, 3), 3)
    _zero_residual_branch(model, "stage3_block1")
    shortcut_out = next(layer for layer in model.layers
                        if layer.name.startswith("stage3_block1_shortcut_")
                        and layer.name.endswith(("_pad", "_bn"))).output
    probe = keras.Model(model.input, [model.get_layer("stage2_block1_out").output,
                                      shortcut_out, model.get_layer("stage3_block1_out").output])
    block_in, path, block_out = (np.asarray(t) for t in probe(images(2)))
    np.testing.assert_allclose(block_out, np.maximum(path, 0.0), rtol=1e-6, atol=1e-6)
    if shortcut == "A":
        # He et al. 2015, sec. 3.3 (A): the identity, subsampled, then zero channels.
        width_in = block_in.shape[-1]
        np.testing.assert_array_equal(block_out[..., :width_in], block_in[:, ::2, ::2, :])
        np.testing.assert_array_equal(block_out[..., width_in:], 0.0)
        assert np.any(block_in > 0)


@pytest.mark.parametrize("block", list(BLOCKS))
def test_identity_block_with_zeroed_residual_branch_passes_its_input(block, tiny_config):
    # stage2_block2 keeps resolution and width: its option B shortcut is the identity.
    model = build_resnet(tiny_config(block=block, stage_depths=(2, 1)), (16, 16, 3), 3)
    _zero_residual_branch(model, "stage2_block2")
    probe = keras.Model(model.input, [model.get_layer("stage2_block1_out").output,
                                      model.get_layer("stage2_block2_out").output])
    block_in, block_out = (np.asarray(t) for t in probe(images(2)))
    np.testing.assert_allclose(block_out, block_in, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- augmentation


@pytest.mark.parametrize("field", list(AUGMENTATIONS))
def test_augmentation_only_in_training(field, tiny_config):
    """A plain `model(x)` and `predict` are the un-augmented network; `training=True` augments."""
    example = AUGMENTATIONS[field].example
    augmented = build_resnet(tiny_config(**{field: example}), (16, 16, 3), 3)
    plain = build_resnet(without_augmentation(tiny_config(**{field: example})), (16, 16, 3), 3)
    for layer in plain.layers:
        if layer.weights:
            layer.set_weights(augmented.get_layer(layer.name).get_weights())
    x = images(8)
    expected = np.asarray(plain(x, training=False))
    for _ in range(3):
        np.testing.assert_array_equal(np.asarray(augmented(x)), expected)
    np.testing.assert_array_equal(augmented.predict(x, verbose=0), plain.predict(x, verbose=0))

    layer = augmented.get_layer(f"augment_{field}")
    unit = np.random.default_rng(1).uniform(0.05, 0.95, (8, 16, 16, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(layer(unit)), unit)  # no training argument
    changed = [not np.allclose(np.asarray(layer(unit, training=True)), unit) for _ in range(3)]
    assert any(changed), f"{field}={example!r} never changed its input with training=True"


def test_gamma_draws_within_its_range_in_training():
    gamma = RandomGamma(0.4, 0.7, seed=0)
    half = np.full((2, 4, 4, 3), 0.5, dtype="float32")
    out = np.asarray(gamma(half, training=True))
    assert np.all(out > 0.5) and np.all(out < 0.5**0.4 + 1e-6)
    np.testing.assert_array_equal(np.asarray(gamma(half)), half)


@pytest.mark.parametrize("field", list(AUGMENTATIONS))
def test_without_augmentation_builds_no_augmentation_layer(field, tiny_config):
    cfg = without_augmentation(tiny_config(**{field: AUGMENTATIONS[field].example}))
    assert getattr(cfg, field) == AUGMENTATIONS[field].neutral
    names = [layer.name for layer in build_resnet(cfg, (16, 16, 3), 3).layers]
    assert not [n for n in names if n.startswith("augment_")]


# --------------------------------------------------------------------------- saving


ALL_AUGMENTATIONS = {field: row.example for field, row in AUGMENTATIONS.items()}


def test_save_load_safe_mode_predicts_identically(tmp_path, tiny_config):
    model = build_resnet(tiny_config(dropout=0.2, head_hidden=8, **ALL_AUGMENTATIONS),
                         (16, 16, 3), 3)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = images(4, seed=1)
    model.fit(x, np.array([0, 1, 2, 0]), epochs=1, verbose=0)
    expected = model.predict(x, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), expected)
    np.testing.assert_allclose(np.asarray(reloaded(x)), expected, rtol=1e-5)  # eager: no flip
    augment = [layer for layer in reloaded.layers if layer.name.startswith("augment_")]
    assert len(augment) == len(AUGMENTATIONS)
    assert all(type(layer).__module__ == model_layers.__name__ for layer in augment)


@pytest.mark.parametrize("cls", [RandomGamma, ZeroPadShortcut, model_layers.CaffePreprocess,
                                 model_layers.RandomFlip, model_layers.RandomTranslation])
def test_layers_keep_their_serialization_names(cls):
    # Saved models refer to "resnet_tuner>Name": renaming the package breaks loading them.
    assert keras.saving.get_registered_name(cls) == f"resnet_tuner>{cls.__name__}"


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ResNetConfig.preset_names())
def test_config_json_round_trip(name):
    cfg = ResNetConfig.preset(name, dropout=0.2, **ALL_AUGMENTATIONS)
    assert ResNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
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
        (dict(dropout=1.5), r"dropout must be a number from 0.0 to 0.95. Received: dropout=1.5"),
        (dict(shift=0.6), r"shift must be a number from 0.0 to 0.5"),
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


def test_build_argument_errors(tiny_config):
    cfg = tiny_config()
    with pytest.raises(ValueError, match=r"input_shape must be .*Received: input_shape=\(16, 16\)"):
        build_resnet(cfg, (16, 16), 3)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        build_resnet(cfg, (16, 16, 3), 1)
    with pytest.raises(ValueError, match="binary_head=True .* needs num_classes=2"):
        build_resnet(cfg.replace(binary_head=True), (16, 16, 3), 3)


# --------------------------------------------------------------------------- freezing


def test_stage_of_parses_both_naming_schemes():
    assert stage_of("stem_conv") == stage_of("conv1_conv") == stage_of("pool1_pool") == 1
    assert stage_of("stage3_block2_conv1") == 3 and stage_of("conv4_block1_1_conv") == 4
    assert stage_of("predictions") is None and stage_of("augment_flip") is None


@pytest.mark.parametrize("stages", [0, 1, 2, 3])
def test_freeze_stages_freezes_exactly_the_chosen_stages(stages, tiny_config):
    model = build_resnet(tiny_config(stage_depths=(1, 2), freeze_stages=stages), (16, 16, 3), 3)
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


def test_frozen_batchnorm_runs_in_inference_mode(tiny_config):
    model = build_resnet(tiny_config(freeze_stages=3), (16, 16, 3), 3)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    bn = model.get_layer("stage2_block1_bn1")
    before = bn.moving_mean.numpy().copy()
    model.train_on_batch(images(4, seed=3), np.array([0, 1, 2, 0]))
    np.testing.assert_array_equal(bn.moving_mean.numpy(), before)
    assert not freeze_stages(model, 0)  # freezing nothing is a no-op
