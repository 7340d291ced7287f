"""Every record of `BACKBONES`, `weights install` / `weights list`, offline spaces, and the
user's own model (a bundle folder or a `.keras` file) as backbone.

Parametrized over `BACKBONES`, so a new record is tested without editing this file.
Each network is built once per module at 32x32 (`built`); the tests that save a
whole network (reload, weights file) run the first record of each keras.applications
family (ResNet50, ResNet50V2) by default and the others under `-m slow`
(ResNet152V2 alone takes about 25 s to save, reload and load weights). No test
downloads anything: weights files are saved by the tests, and the network probe
`weights.downloadable` is replaced.
"""

import dataclasses
import json
import re

import h5py
import keras
import keras_tuner as kt
import numpy as np
import pytest

from resnet_tuner import ResNetConfig, SpaceError, build_resnet, cli, load_space
from resnet_tuner.config import PRETRAINED_STAGES
from resnet_tuner.model import backbones, describe, freeze_stages, stage_of, weights
from resnet_tuner.model.backbones import BACKBONES, layer_stages
from resnet_tuner.model.weights import (
    BackboneWeightsWarning,
    UnknownWeightsFileError,
    WeightsUnavailableError,
    file_md5,
    install_weights,
)

SHAPE = (32, 32, 3)
#: The first record of each family runs the tests that save whole networks by default.
_FIRST_OF_FAMILY = {record.family: name for name, record in reversed(BACKBONES.items())}
HEAVY = [pytest.param(name, marks=() if name in _FIRST_OF_FAMILY.values() else pytest.mark.slow)
         for name in BACKBONES]


def transfer_config(backbone, **changes):
    return ResNetConfig(**{"backbone": backbone, "weights": None, "binary_head": True, **changes})


def images(n=2, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE)).astype("uint8")


@pytest.fixture(scope="module")
def built():
    """`built(name)`: a classifier on backbone `name` (random weights), built once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = build_resnet(transfer_config(name), SHAPE, 2)
        for layer, _ in layer_stages(cache[name]):  # a test may have frozen stages
            layer.trainable = True
        return cache[name]

    return get


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty Keras cache, and no download or network probe."""
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr(weights, "downloadable", lambda url, timeout=5.0: False)
    return home


def save_legacy_weights(network, path):
    """The .h5 layout keras.applications ships its `_notop` files in."""
    from keras.src.legacy.saving import legacy_h5_format

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, network)
    return path


# --------------------------------------------------------------------------- the table


@pytest.mark.parametrize("name", list(BACKBONES))
def test_record_is_the_keras_applications_network(name):
    from keras.src.applications.resnet import WEIGHTS_HASHES

    record = BACKBONES[name]
    assert callable(getattr(keras.applications, record.title))
    assert callable(getattr(keras.applications, record.family).preprocess_input)
    assert record.weights_file == f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert record.weights_hash == WEIGHTS_HASHES[name][1]  # the _notop file's MD5
    assert record.weights_url == backbones.WEIGHTS_BASE_URL + record.weights_file
    assert PRETRAINED_STAGES[name] == len(record.stage_prefixes)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_record_builds_and_every_layer_has_a_stage(name, built):
    record = BACKBONES[name]
    model = built(name)
    assert model.output_shape == (None, 1)
    nested = model.get_layer(name)
    stages = set()
    for layer in nested.layers[1:]:  # after its input layer, every layer is in a stage
        stage = stage_of(layer.name, name)
        assert stage is not None, f"{layer.name} matches no stage prefix of {name}"
        stages.add(stage)
    assert stages == set(range(1, len(record.stage_prefixes) + 1))


@pytest.mark.parametrize("name", list(BACKBONES))
def test_preprocessing_is_keras_applications_preprocess_input(name, built):
    record = BACKBONES[name]
    model = built(name)
    layer = model.get_layer(record.preprocess().name)
    to_backbone = keras.Model(model.input, layer.output)
    x = images()
    expected = getattr(keras.applications, record.family).preprocess_input(x.astype("float32"))
    np.testing.assert_allclose(to_backbone(x), expected, atol=1e-3)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_freeze_stages_freezes_exactly_stages_one_to_k(name, built):
    model = built(name)
    nested = model.get_layer(name)
    for k in range(len(BACKBONES[name].stage_prefixes) + 1):
        for layer in nested.layers:
            layer.trainable = True
        freeze_stages(model, k)
        for layer in nested.layers[1:]:
            assert layer.trainable is (stage_of(layer.name, name) > k), (k, layer.name)
        assert model.get_layer("predictions").trainable


@pytest.mark.parametrize("name", HEAVY)
def test_a_model_on_it_reloads_in_safe_mode(name, built, tmp_path):
    model = built(name)
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    assert [la.name for la in reloaded.get_layer(name).layers][1:] == \
        [la.name for la in model.get_layer(name).layers][1:]
    np.testing.assert_allclose(reloaded(images()), model(images()), atol=1e-6)


@pytest.mark.parametrize("name", HEAVY)
def test_installed_weights_file_loads_through_the_builder(name, built, keras_home, tmp_path,
                                                         monkeypatch):
    """A weights file (random weights here) installed by its MD5, then `weights="imagenet"`."""
    record = BACKBONES[name]
    source = built(name).get_layer(name)
    downloaded = save_legacy_weights(source, tmp_path / "download" / record.weights_file)
    monkeypatch.setitem(BACKBONES, name,
                        dataclasses.replace(record, weights_hash=file_md5(downloaded)))
    installed, destination = install_weights(downloaded)
    assert installed == name and destination == keras_home / "models" / record.weights_file
    loaded = build_resnet(transfer_config(name, weights="imagenet"), SHAPE, 2).get_layer(name)
    assert len(loaded.weights) == len(source.weights)
    for ours, theirs in zip(loaded.weights, source.weights, strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


# --------------------------------------------------------------------------- weights install


def fake_download(tmp_path, name, content=b"weights"):
    """A small file standing for `name`'s weights file, whose MD5 the record is given."""
    path = tmp_path / "downloads" / BACKBONES[name].weights_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content + name.encode())
    return path


@pytest.mark.parametrize("name", list(BACKBONES))
def test_weights_install_recognises_the_file_by_its_md5(name, keras_home, tmp_path, monkeypatch,
                                                        capsys):
    path = fake_download(tmp_path, name)
    monkeypatch.setitem(BACKBONES, name,
                        dataclasses.replace(BACKBONES[name], weights_hash=file_md5(path)))
    assert cli.main(["weights", "install", str(path)]) == 0
    destination = keras_home / "models" / BACKBONES[name].weights_file
    assert destination.read_bytes() == path.read_bytes()
    out = capsys.readouterr().out
    assert f"{BACKBONES[name].title} ({name})" in out and str(destination) in out
    assert "MD5 verified" in out
    assert weights.weights_available(name)

    assert cli.main(["weights", "list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert str(keras_home / "models") in listing[0]
    for other, record in BACKBONES.items():
        [line] = [row for row in listing if row.split()[:1] == [other]]
        assert record.weights_file in line
        assert ("installed" if other == name else "missing") in line.split()


def test_weights_install_refuses_an_unknown_file_listing_the_expected_ones(keras_home, tmp_path,
                                                                           capsys):
    stray = tmp_path / "resnet50_weights.h5"
    stray.write_bytes(b"not weights")
    assert cli.main(["weights", "install", str(stray)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"resnet-tuner: error: {stray} matches no known ImageNet weights "
                          f"file (MD5 {file_md5(stray)})")
    for record in BACKBONES.values():
        assert record.weights_file in err and record.weights_url in err
    assert "--force --backbone NAME" in err
    assert not (keras_home / "models").exists() or not any((keras_home / "models").iterdir())
    with pytest.raises(UnknownWeightsFileError, match="matches no known"):
        install_weights(stray)


def test_weights_install_force_installs_an_unverified_file_as_the_named_backbone(
        keras_home, tmp_path, capsys):
    stray = tmp_path / "mirror_copy.h5"
    stray.write_bytes(b"some other build of the weights")
    assert cli.main(["weights", "install", str(stray), "--force"]) == 2  # which backbone?
    assert "--backbone NAME" in capsys.readouterr().err
    assert cli.main(["weights", "install", str(stray), "--backbone", "resnet101"]) == 2
    assert "is not ResNet101's weights file" in capsys.readouterr().err
    assert cli.main(["weights", "install", str(stray), "--force", "--backbone", "resnet101"]) == 0
    assert "unverified (--force)" in capsys.readouterr().out
    assert weights.keras_cache_path("resnet101").read_bytes() == stray.read_bytes()


def test_weights_install_names_a_missing_file(keras_home, capsys):
    assert cli.main(["weights", "install", "/no/such/file.h5"]) == 2
    assert "weights file not found: /no/such/file.h5" in capsys.readouterr().err


# --------------------------------------------------------------------------- offline spaces


def test_weights_unavailable_error_says_weights_install(keras_home):
    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve_weights("imagenet", "resnet50v2")
    message = str(info.value)
    assert "resnet-tuner weights install FILE" in message
    assert BACKBONES["resnet50v2"].weights_url in message and len(message.splitlines()) == 1


def test_a_space_with_a_pretrained_backbone_and_no_weights_fails_at_load(keras_home):
    with pytest.raises(WeightsUnavailableError, match="resnet-tuner weights install FILE"):
        load_space("transfer").with_available_weights()
    # Weights given as "none" (or a file) need nothing.
    space = load_space("transfer").override("transfer", weights="none")
    assert space.with_available_weights() is space


def test_the_full_space_offline_drops_the_pretrained_choices_with_one_warning(keras_home, tmp_path,
                                                                             recwarn):
    from resnet_tuner.run.options import SearchOptions
    from resnet_tuner.run.rundir import LOCK_HELD_ENV, search_space

    options = SearchOptions(data_dir=str(tmp_path), out=str(tmp_path / "run"), space="full")
    space = search_space(options)
    # Later calls of the same search (and its trial processes) hold the run's lock.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(LOCK_HELD_ENV, str(tmp_path / "run"))
        assert search_space(options).fields["model"]["backbone"].value == "scratch"
    [warning] = [w for w in recwarn if issubclass(w.category, BackboneWeightsWarning)]
    text = str(warning.message)
    assert "resnet50, resnet50v2 left out" in text and "resnet-tuner weights install FILE" in text
    assert space.fields["model"]["backbone"].value == "scratch" and not space.fields["transfer"]
    cfg, _ = space.sample(kt.HyperParameters())
    assert cfg.backbone == "scratch"


def test_a_cached_backbone_stays_in_the_space_without_a_network_probe(keras_home, monkeypatch,
                                                                      recwarn):
    cached = weights.keras_cache_path("resnet50")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"cached")
    probed = []
    monkeypatch.setattr(weights, "downloadable", lambda url, timeout=5.0: probed.append(url))
    assert load_space("full").fields["model"]["backbone"].values == (
        "scratch", "resnet50", "resnet50v2")
    space = load_space("full").with_available_weights()
    assert space.fields["model"]["backbone"].values == ("scratch", "resnet50")
    assert probed == [BACKBONES["resnet50v2"].weights_url]  # only the missing one
    assert len([w for w in recwarn if issubclass(w.category, BackboneWeightsWarning)]) == 1


def test_search_on_an_offline_transfer_space_fails_before_the_run(keras_home, tmp_path,
                                                                  make_folder, capsys):
    folder = make_folder(tmp_path / "images", per_class=3)
    out = tmp_path / "run"
    assert cli.main(["search", str(folder), "--out", str(out), "--space", "transfer",
                     "--max-trials", "1", "--trials-per-process", "0"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "resnet-tuner weights install FILE" in err
    assert not out.exists()


# --------------------------------------------------------------------------- the user's model

#: A tiny resnet_tuner model with augmentation (cut off) and pre-activation (post_bn).
USER_CONFIG = ResNetConfig(stage_depths=(1, 1), stage_widths=(4, 8), stem="cifar", stem_width=4,
                           preactivation=True, flip="horizontal", shift=0.1, head_hidden=6)


@pytest.fixture(scope="module")
def user_model(tmp_path_factory):
    """`(model, file, bundle)`: one model saved as a .keras file and as a bundle folder."""
    folder = tmp_path_factory.mktemp("user")
    model = build_resnet(USER_CONFIG, SHAPE, 3)
    model.get_layer("stem_conv").trainable = False  # as a bundle trained with frozen stages
    file = folder / "pets_resnet.keras"
    model.save(file)
    bundle = folder / "best"
    bundle.mkdir()
    model.save(bundle / "model.keras")
    (bundle / "config.json").write_text(json.dumps({"model": USER_CONFIG.to_dict()}))
    return model, file, bundle


def features(model, x):
    """What `model`'s head receives."""
    return keras.Model(model.input, model.get_layer("avg_pool").input)(x)


@pytest.mark.parametrize("where", ["file", "bundle"])
def test_user_model_is_cut_before_its_head_and_frozen_by_stage(where, user_model, tmp_path):
    model, file, bundle = user_model
    path = str(file if where == "file" else bundle)
    new = build_resnet(transfer_config(path, freeze_stages=2), SHAPE, 2)
    assert new.name == ("pets_resnet" if where == "file" else "best") + "_transfer_f2"
    nested = new.get_layer(backbones.USER_BACKBONE)
    names = [layer.name for layer in nested.layers]
    # Its rescale and augmentation are cut off (the new model has its own), so is its head.
    assert names[1] == "stem_conv" and names[-1] == "post_relu"
    assert not {"rescale", "augment_flip", "avg_pool", "head_hidden", "predictions"} & set(names)
    np.testing.assert_allclose(features(new, images()), features(model, images()), atol=1e-5)
    stages = {layer.name: stage for layer, stage in layer_stages(new)}
    assert stages["post_bn"] == 3  # pre-activation's last BN ends the last stage
    for layer in nested.layers[1:]:
        assert layer.trainable is (stages[layer.name] > 2), layer.name
    # Stage 0 frozen: every layer trains, whatever the saved model had frozen.
    unfrozen = build_resnet(transfer_config(path), SHAPE, 2)
    assert all(layer.trainable for layer, _ in layer_stages(unfrozen))


def test_user_backbone_trains_a_step_and_reloads_in_safe_mode(user_model, tmp_path):
    _, file, _ = user_model
    model = build_resnet(transfer_config(str(file), freeze_stages=2), SHAPE, 2)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    staged = [(layer, stage) for layer, stage in layer_stages(model) if layer.weights]
    before = [[w.numpy().copy() for w in layer.weights] for layer, _ in staged]
    model.train_on_batch(images(4), np.array([0, 1, 0, 1]))
    for (layer, stage), old in zip(staged, before, strict=True):
        changed = any(not np.array_equal(w.numpy(), o) for w, o in zip(layer.weights, old,
                                                                        strict=True))
        assert changed is (stage is None or stage > 2), layer.name

    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_allclose(reloaded(images()), model(images()), atol=1e-6)
    assert [la.trainable for la in reloaded.get_layer(backbones.USER_BACKBONE).layers] == \
        [la.trainable for la in model.get_layer(backbones.USER_BACKBONE).layers]
    # The export's serving copy rebuilds from the config and takes the trained weights.
    from resnet_tuner.export import serving_model

    serving = serving_model(model, transfer_config(str(file), freeze_stages=2), SHAPE, 2)
    np.testing.assert_allclose(serving(images()), model(images()), atol=1e-6)


def test_user_backbone_in_a_space_file_defaults_to_all_stages_frozen(user_model, tmp_path):
    _, _, bundle = user_model
    space_file = tmp_path / "mine.toml"
    space_file.write_text(f'[model]\nbackbone = ["scratch", "{bundle}"]\nstage_depths = [1, 1]\n'
                          'stage_widths = [4, 8]\nstem = "cifar"\n')
    space = load_space(space_file)
    hp = kt.HyperParameters()
    hp.values["backbone"] = str(bundle)
    cfg, _ = space.sample(hp)
    assert cfg.backbone == str(bundle) and cfg.freeze_stages == 3  # stem + 2 stages
    [backbone_hp] = [h for h in hp.space if h.name == "backbone"]
    assert list(backbone_hp.values) == ["scratch", str(bundle)]
    space = load_space({"model": {"backbone": str(bundle)},
                        "transfer": {"freeze_stages": {"min": 0, "max": 3}}})
    hp = kt.HyperParameters()
    hp.values["freeze_stages"] = 1
    assert space.sample(hp)[0].freeze_stages == 1
    # No ImageNet weights involved: nothing to check or drop.
    assert space.with_available_weights() is space


def test_a_missing_user_backbone_is_named(tmp_path):
    missing = tmp_path / "runs" / "best"
    with pytest.raises(FileNotFoundError, match=re.escape(f"backbone not found: {missing}")):
        build_resnet(transfer_config(str(missing)), SHAPE, 2)
    with pytest.raises(SpaceError,
                       match=re.escape(f"backbone = '{missing}': no such bundle folder")):
        load_space({"model": {"backbone": str(missing)}})
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a resnet_tuner bundle"):
        build_resnet(transfer_config(str(tmp_path / "empty")), SHAPE, 2)
    with pytest.raises(SpaceError, match="or the path of a resnet_tuner bundle folder"):
        load_space({"model": {"backbone": "resnet51"}})


def test_freezing_beyond_the_user_models_stages_is_refused(user_model):
    _, file, _ = user_model
    with pytest.raises(ValueError,
                       match=re.escape(f"freeze_stages=4 but backbone {file} has 3 stages")):
        build_resnet(transfer_config(str(file), freeze_stages=4), SHAPE, 2)


def test_a_foreign_keras_model_gets_pixels_and_freezes_nothing(tmp_path):
    """A model not made by resnet_tuner: fed 0..255 pixels (its uint8 input exact), no stages."""
    inputs = keras.Input(SHAPE, dtype="uint8")
    x = keras.layers.Rescaling(1.0, name="as_float")(inputs)
    x = keras.layers.Conv2D(3, 1, name="mix")(x)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    foreign = keras.Model(inputs, outputs)
    foreign.save(tmp_path / "foreign.keras")
    path = str(tmp_path / "foreign.keras")
    model = build_resnet(transfer_config(path), SHAPE, 2)
    cut = keras.Model(foreign.input, foreign.get_layer("mix").output)
    np.testing.assert_allclose(features(model, images()), cut(images()),
                               rtol=1e-5, atol=1e-4)
    assert describe(transfer_config(path)) == "foreign_transfer_f0"
    with pytest.raises(ValueError, match="has no layers named by stage"):
        build_resnet(transfer_config(path, freeze_stages=1), SHAPE, 2)
