"""Search spaces: presets, sampling with pre-filled hyperparameters, conditional scopes, errors."""

import keras_tuner as kt
import pytest

from resnet_tuner import ResNetConfig, SpaceError, TrainConfig, available_spaces, load_space
from resnet_tuner.space import Choice, Fixed, Range

REQUIRED_PRESETS = {"quick", "mini", "paper", "cifar", "transfer", "full"}


def test_required_presets_ship_with_the_package():
    assert REQUIRED_PRESETS <= set(available_spaces())


@pytest.mark.parametrize("name", sorted(REQUIRED_PRESETS))
def test_every_preset_samples_valid_configs(name):
    space = load_space(name)
    model_cfg, train_cfg = space.sample(kt.HyperParameters())
    assert isinstance(model_cfg, ResNetConfig) and isinstance(train_cfg, TrainConfig)
    assert space.description


def fixed(hp_values):
    hp = kt.HyperParameters()
    hp.values.update(hp_values)
    return hp


def test_prefilled_hyperparameters_choose_the_config():
    space = load_space("quick")
    cfg, train = space.sample(
        fixed({"stage2_depth": 2, "stage3_depth": 1, "stage4_depth": 2, "base_width": 32,
               "shortcut": "A", "batch_size": 64, "learning_rate": 0.002})
    )
    assert cfg.stage_depths == (2, 1, 2)
    assert cfg.stage_widths == (32, 64, 128) and cfg.stem_width == 32
    assert cfg.shortcut == "A" and cfg.stem == "cifar"
    assert train.batch_size == 64 and train.learning_rate == 0.002


def test_paper_and_cifar_presets_reproduce_named_networks():
    cfg, _ = load_space("paper").sample(fixed({"preset": "resnet50", "shortcut": "B"}))
    assert cfg.replace(flip="none", shift=0.0) == ResNetConfig.preset("resnet50")
    cfg, _ = load_space("cifar").sample(fixed({"preset": "resnet56"}))
    assert cfg.stage_depths == (9, 9, 9) and cfg.shortcut == "A"


def test_mini_preset_defaults_to_the_seed_model_and_augmentation():
    cfg, _ = load_space("mini").sample(kt.HyperParameters())
    seed = ResNetConfig.preset("mini_resnet")
    assert cfg.replace(flip="none", gamma=None) == seed
    assert cfg.flip == "both" and cfg.gamma == (0.4, 0.7)


def test_conditional_scopes_in_full_space():
    space = load_space("full")
    hp = fixed({"backbone": "scratch", "block": "basic"})
    cfg, _ = space.sample(hp)
    assert cfg.backbone == "scratch"
    assert "freeze_stages" not in hp.values and "expansion" not in hp.values
    hp = fixed({"backbone": "scratch", "block": "bottleneck", "expansion": 2})
    cfg, _ = space.sample(hp)
    assert cfg.block == "bottleneck" and cfg.expansion == 2
    [expansion] = hp._hps["expansion"]
    assert {c.name for c in expansion.conditions} == {"backbone", "block"}
    hp = fixed({"backbone": "resnet50", "freeze_stages": 4})
    cfg, _ = space.sample(hp)
    assert cfg.backbone == "resnet50" and cfg.freeze_stages == 4
    assert "block" not in hp.values and "shortcut" not in hp.values
    [freeze] = hp._hps["freeze_stages"]
    assert [c.name for c in freeze.conditions] == ["backbone"]


def test_sgd_only_momentum_is_conditional():
    hp = fixed({"optimizer": "adam"})
    load_space("full").sample(hp)
    assert "momentum" not in hp.values
    hp = fixed({"optimizer": "sgd", "momentum": 0.0})
    _, train = load_space("full").sample(hp)
    assert train.momentum == 0.0


def test_field_forms_value_choice_and_range():
    space = load_space({
        "model": {"block": "basic", "shortcut": ["A", "B"],
                  "dropout": {"min": 0.0, "max": 0.3, "step": 0.1},
                  "stage_depths": [[1, 1], [2, 2]], "stage_widths": [4, 8]},
        "augment": {"gamma": ["none", [0.4, 0.7]]},
    })
    model = space.fields["model"]
    assert model["block"] == Fixed("basic")
    assert model["shortcut"] == Choice(("A", "B"))
    assert model["dropout"] == Range(0.0, 0.3, 0.1, "linear", is_int=False)
    assert model["stage_depths"] == Choice(((1, 1), (2, 2)))
    assert model["stage_widths"] == Fixed((4, 8))
    cfg, _ = space.sample(fixed({"stage_depths": "2-2", "gamma": "0.4-0.7"}))
    assert cfg.stage_depths == (2, 2) and cfg.gamma == (0.4, 0.7)


def test_user_toml_file_works_like_a_preset(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[model]\nblock = ["basic", "bottleneck"]\nstage_depths = [1, 1]\n'
                    'stage_widths = [4, 8]\nstem = "cifar"\n')
    space = load_space(path)
    assert space.fields["model"]["block"] == Choice(("basic", "bottleneck"))
    assert load_space(str(path)).source == str(path)


def write(tmp_path, text):
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ('[model]\nblocks = "basic"\n', r"unknown field\(s\) \['blocks'\] in \[model\]"),
        ('[modle]\nblock = "basic"\n', r"unknown section\(s\) \['modle'\]"),
        ("[model]\nshortcut = []\n", r"\[model\] shortcut = \[\]: an empty list of choices"),
        ("[model]\ndropout = { min = 0.5, max = 0.1 }\n",
         r"\[model\] dropout = .*min \(0.5\) is greater than max \(0.1\)"),
        ('[model]\nblock = ["basic", "wide"]\n',
         r"\[model\] block = 'wide': must be one of 'basic', 'bottleneck'"),
        ('[model]\nshortcut = "D"\n', r"\[model\] shortcut = 'D': must be one of 'A', 'B', 'C'"),
        ("[model]\nbase_width = 12.5\n", r"base_width = 12.5: must be an integer"),
        ("[model]\ndropout = { min = 0.0, max = 0.3, sampling = 'log' }\n",
         "log sampling needs min > 0"),
        ("[train]\nlearning_rate = { min = 0.0, max = 0.1 }\n",
         r"learning_rate.min = 0.0: must be between 1e-08 and 10.0"),
        ("[train]\nlearning_rate = { min = 0.001, max = 0.1, scale = 'log' }\n",
         r"unknown range key\(s\) \['scale'\]"),
        ("[model]\nstage_depths = { min = 1, max = 3 }\n", "add num_stages"),
        ("[transfer]\nfreeze_stages = 3\n", r"only apply to backbone = \"resnet50\""),
        ('[model]\nshortcut = "A"\nstage_widths = [[16, 32], [32, 16]]\nstage_depths = [1, 1]\n',
         "invalid models .*never decrease"),
        ("[model\nblock = 1\n", "not valid TOML"),
        ('[augment]\ngamma = [0.7, 0.4]\n',
         r"gamma = \[0.7, 0.4\]: must be 'none' or \[low, high\]"),
        ("[model]\nstage_widths = [8, 16]\nbase_width = 8\n", "both stage_widths and base_width"),
    ],
)
def test_bad_space_files_name_file_field_and_value(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SpaceError, match=message) as info:
        load_space(path)
    if "TOML" not in message:
        assert str(path) in str(info.value)


def test_missing_file_and_unknown_preset():
    with pytest.raises(SpaceError, match="Search space file not found: .*nope.toml"):
        load_space("nope.toml")
    with pytest.raises(SpaceError, match="Unknown search space 'quik'.*quick"):
        load_space("quik")


INITIAL_SPACE = {
    "model": {"stem": "cifar", "stage_depths": [[1, 1], [2, 2]], "base_width": [4, 8]},
    "train": {"learning_rate": {"min": 1e-3, "max": 1e-2, "sampling": "log"},
              "batch_size": [16, 32]},
    "initial": [{"base_width": 8, "learning_rate": 3e-3},
                {"stage_depths": "2-2", "base_width": 4, "batch_size": 32}],
}


def test_initial_tables_are_parsed_and_checked():
    space = load_space(INITIAL_SPACE)
    assert space.initial[0] == {"base_width": 8, "learning_rate": 3e-3}
    assert load_space("quick").initial  # the quick preset starts from known-good models
    # A field fixed later (e.g. --batch-size) gives way: its initial value is dropped.
    assert space.override("train", batch_size=64).initial[1] == {"stage_depths": "2-2",
                                                                  "base_width": 4}
    bad = [
        ({"base_width": 5}, "base_width = 5 is not one of [4, 8]"),
        ({"learning_rate": 0.5}, "learning_rate = 0.5 is not in [0.001, 0.01]"),
        ({"depth": 3}, "['depth'] are not tuned by this space"),
    ]
    for table, message in bad:
        with pytest.raises(SpaceError, match=r"\[\[initial\]\] #1: " + message.replace("[", r"\[")
                           .replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
            load_space({**INITIAL_SPACE, "initial": [table]})
    with pytest.raises(SpaceError, match="initial must be a list of tables"):
        load_space({**INITIAL_SPACE, "initial": 3})


@pytest.mark.parametrize("kind", ["random", "hyperband", "bayesian"])
def test_tuners_try_the_initial_configurations_first(kind, tmp_path):
    from resnet_tuner import ResNetHyperModel
    from resnet_tuner.search import make_tuner

    hm = ResNetHyperModel(INITIAL_SPACE, input_shape=(8, 8, 3), num_classes=3)
    tuner = make_tuner(kind, hm, tmp_path, max_trials=5, epochs=3)
    first = tuner.oracle.create_trial("a").hyperparameters.values
    second = tuner.oracle.create_trial("b").hyperparameters.values
    assert first["base_width"] == 8 and first["learning_rate"] == 3e-3
    assert first["batch_size"] == 16 and first["stage_depths"] == "1-1"  # defaults for the rest
    assert (second["stage_depths"], second["base_width"], second["batch_size"]) == ("2-2", 4, 32)
    hp_names = {k for k in second if not k.startswith("tuner/")}
    assert hp_names == {"stage_depths", "base_width", "learning_rate", "batch_size"}
