"""Search spaces: presets, sampling with pre-filled hyperparameters, conditional scopes, errors."""

import re

import keras_tuner as kt
import pytest

from resnet_tuner import ResNetConfig, SpaceError, TrainConfig, available_spaces, load_space
from resnet_tuner.config import BOUNDS
from resnet_tuner.model.augment import AUGMENTATIONS
from resnet_tuner.model.backbones import BACKBONES
from resnet_tuner.model.blocks import BLOCKS
from resnet_tuner.space import Choice, Fixed, Range
from resnet_tuner.space.schema import SCHEMA, TRAIN_SECTIONS, find_row
from resnet_tuner.training import OPTIMIZERS

# What each shipped preset samples with default hyperparameters (first choice,
# range minimum), as fields that differ from ResNetConfig() / TrainConfig().
PRESET_DEFAULTS = {
    "cifar": ({"stage_depths": (3, 3, 3), "stage_widths": (16, 32, 64), "shortcut": "A",
               "stem": "cifar", "stem_width": 16, "flip": "horizontal", "shift": 0.125},
              {"optimizer": "sgd", "learning_rate": 0.01, "batch_size": 128, "epochs": 30,
               "weight_decay": 0.0001}),
    "full": ({"stage_depths": (1, 1, 1), "stage_widths": (16, 32, 64), "stem": "cifar",
              "stem_width": 16},
             {"learning_rate": 0.0001, "epochs": 30}),
    "mini": ({"stage_depths": (1, 2, 2, 1), "stage_widths": (32, 64, 128, 256),
              "stem": "strided3x3", "stem_width": 32, "conv_bias": True, "head_hidden": 10,
              "binary_head": True, "flip": "both", "gamma": (0.4, 0.7)},
             {"learning_rate": 0.0001, "epochs": 20}),
    "paper": ({"flip": "horizontal", "shift": 0.1},
              {"optimizer": "sgd", "epochs": 60, "weight_decay": 0.0001}),
    "quick": ({"stage_depths": (1, 1, 1), "stage_widths": (16, 32, 64), "stem": "cifar",
               "stem_width": 16}, {}),
    "transfer": ({"head_hidden": 10, "binary_head": True, "backbone": "resnet50",
                  "flip": "horizontal"},
                 {"learning_rate": 1e-05}),
}


def test_required_presets_ship_with_the_package():
    assert set(PRESET_DEFAULTS) <= set(available_spaces())


@pytest.mark.parametrize("name", sorted(PRESET_DEFAULTS))
def test_every_preset_samples_its_documented_defaults(name):
    space = load_space(name)
    model_cfg, train_cfg = space.sample(kt.HyperParameters())
    model_changes, train_changes = PRESET_DEFAULTS[name]
    assert model_cfg == ResNetConfig(**model_changes)
    assert train_cfg == TrainConfig(**train_changes)
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
    [expansion] = [h for h in hp.space if h.name == "expansion"]
    assert {c.name for c in expansion.conditions} == {"backbone", "block"}
    hp = fixed({"backbone": "resnet50", "freeze_stages": 4})
    cfg, _ = space.sample(hp)
    assert cfg.backbone == "resnet50" and cfg.freeze_stages == 4
    assert "block" not in hp.values and "shortcut" not in hp.values
    [freeze] = [h for h in hp.space if h.name == "freeze_stages"]
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
    from resnet_tuner.run.tuners import make_tuner

    hm = ResNetHyperModel(INITIAL_SPACE, input_shape=(8, 8, 3), num_classes=3)
    tuner = make_tuner(kind, hm, tmp_path, max_trials=5, epochs=3)
    first = tuner.oracle.create_trial("a").hyperparameters.values
    second = tuner.oracle.create_trial("b").hyperparameters.values
    assert first["base_width"] == 8 and first["learning_rate"] == 3e-3
    assert first["batch_size"] == 16 and first["stage_depths"] == "1-1"  # defaults for the rest
    assert (second["stage_depths"], second["base_width"], second["batch_size"]) == ("2-2", 4, 32)
    hp_names = {k for k in second if not k.startswith("tuner/")}
    assert hp_names == {"stage_depths", "base_width", "learning_rate", "batch_size"}


# --------------------------------------------------------------------------- every table row


def _sampled(space, values):
    hp = fixed(values)
    model_cfg, train_cfg = load_space(space).sample(hp)
    return hp, model_cfg, train_cfg


@pytest.mark.parametrize("block", list(BLOCKS))
def test_a_blocks_own_fields_are_sampled_only_for_it(block):
    others = {p for name, row in BLOCKS.items() if name != block for p in row.params}
    space = {"model": {"block": list(BLOCKS), "stage_depths": [1, 1], "stage_widths": [4, 8],
                       "stem": "cifar", **{p: [2, 3] for p in others | set(BLOCKS[block].params)}}}
    hp, cfg, _ = _sampled(space, {"block": block, **{p: 3 for p in BLOCKS[block].params}})
    assert cfg.block == block
    for param in BLOCKS[block].params:
        assert param in hp.values and getattr(cfg, param) == 3
        [tuned] = [h for h in hp.space if h.name == param]
        assert [c.name for c in tuned.conditions] == ["block"]
    for param in others - set(BLOCKS[block].params):
        assert param not in hp.values


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_an_optimizers_own_fields_are_sampled_only_for_it(optimizer):
    space = {"train": {"optimizer": list(OPTIMIZERS), "momentum": [0.5, 0.0]}}
    hp, _, train = _sampled(space, {"optimizer": optimizer})
    assert train.optimizer == optimizer
    reads_momentum = "momentum" in OPTIMIZERS[optimizer].params
    assert ("momentum" in hp.values) is reads_momentum
    assert train.momentum == (0.5 if reads_momentum else TrainConfig().momentum)


@pytest.mark.parametrize("field", list(AUGMENTATIONS))
def test_every_augmentation_is_a_field_of_the_augment_section(field):
    row = AUGMENTATIONS[field]
    space = {"augment": {field: ["none" if row.neutral is None else row.neutral,
                                 list(row.example) if isinstance(row.example, tuple)
                                 else row.example]}}
    tuned = load_space(space)
    hp = kt.HyperParameters()
    cfg, _ = tuned.sample(hp)
    assert getattr(cfg, field) == row.neutral and field in hp.values
    [choice] = [h for h in hp.space if h.name == field]
    hp.values[field] = choice.values[1]
    cfg, _ = tuned.sample(hp)
    assert getattr(cfg, field) == row.example


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_transfer_fields_apply_only_to_a_pretrained_backbone(backbone):
    space = {"model": {"backbone": ["scratch", backbone], "stage_depths": [1, 1],
                       "stage_widths": [4, 8], "stem": "cifar"},
             "transfer": {"weights": "none"}}
    hp, cfg, _ = _sampled(space, {"backbone": backbone})
    # By default every stage of the pretrained network is frozen: a new head only.
    assert cfg.backbone == backbone and cfg.weights is None
    assert cfg.freeze_stages == len(BACKBONES[backbone].stage_prefixes)
    hp, cfg, _ = _sampled(space, {"backbone": "scratch"})
    assert cfg.freeze_stages == 0 and cfg.weights == "imagenet"


# --------------------------------------------------------------------------- bounds


def _at(field, value):
    """`value` for `field` as a config takes it, and as a space file writes it."""
    kind = find_row(field)[1].kind
    if kind.type == "ints":
        return (value,) * 4, [value] * 4
    return value, value


#: What a field needs beside it to be valid at its bounds: two-phase fine-tuning needs a
#: backbone, and a phase 1 (head_epochs) shorter than the whole training (epochs).
_MOST_EPOCHS = BOUNDS["epochs"][1]
COMPANIONS = {
    "head_epochs": ({"epochs": _MOST_EPOCHS},
                    {"model": {"backbone": "resnet50"}, "train": {"epochs": _MOST_EPOCHS}}),
    "finetune_lr_scale": ({}, {"model": {"backbone": "resnet50"}}),
}


@pytest.mark.parametrize("field", sorted(BOUNDS))
def test_space_and_config_share_every_bound(field):
    """A value at a bound is valid in a space and in a config; one beyond is rejected by both."""
    section, _ = find_row(field)
    config_class = TrainConfig if section in TRAIN_SECTIONS else ResNetConfig
    low, high = BOUNDS[field]
    step = 1 if isinstance(low, int) else max(abs(high), 1e-6) * 1e-3
    config_extra, space_extra = COMPANIONS.get(field, ({}, {}))
    for value, valid in [(low, True), (high, True), (low - step, False), (high + step, False)]:
        config_value, file_value = _at(field, value)
        space = {**space_extra, section: {**space_extra.get(section, {}), field: file_value}}
        if valid:
            config_class(**{field: config_value, **config_extra})
            load_space(space)
        else:
            with pytest.raises(ValueError, match=field):
                config_class(**{field: config_value, **config_extra})
            # Rejected by the schema's own bound, not only later by the config.
            with pytest.raises(SpaceError, match=rf"{field} = .*: must be between "
                                                 + re.escape(f"{low} and {high}")):
                load_space(space)


def test_every_schema_row_is_a_config_field_or_a_documented_space_field():
    config_fields = set(ResNetConfig.__dataclass_fields__) | set(TrainConfig.__dataclass_fields__)
    space_only = {"preset", "num_stages", "base_width", "width_multiplier"}
    rows = {name for rows in SCHEMA.values() for name in rows}
    assert rows - config_fields == space_only
