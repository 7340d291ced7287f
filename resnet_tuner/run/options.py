"""`SearchOptions`: the one list of a search run's settings.

Each field carries its own metadata (`Option`): help text, command-line flag
and parser, choices and bounds, whether it is part of the run's identity (a
run may only be resumed with the same value) and which keras-tuner
constructor keyword it feeds. The CLI's arguments (`add_arguments`),
validation (`SearchOptions.validate`), the resume check (`IDENTITY`), the
reload of a run (`from_dict`) and the tuner factory (`tuner_arguments`) all
read them from here, so a new setting is one field plus the code that uses it.

This module imports neither TensorFlow nor keras-tuner: `resnet-tuner --help`
builds its parser from it.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from resnet_tuner.config import TUNERS
from resnet_tuner.devices import PRECISION_CHOICES, check_devices, parse_devices
from resnet_tuner.run.option_types import (
    DATASETS,  # noqa: F401 (imported from here: run.search, run.rundir)
    DIGITS,
    FASHION_MNIST,
    _check_data_dir,
    _check_mlflow,
    _check_share,
    _check_split,
    duration,
    fractions,
    non_negative_int,
    parse_duration,
    positive_int,
    preset_names,
    resize_modes,
    share,
)

#: What trials can be ranked by -> keras-tuner's direction. `val_balanced_accuracy`
#: is the mean of the per-class recalls (`resnet_tuner.training.BalancedAccuracy`).
OBJECTIVES = {"val_accuracy": "max", "val_loss": "min", "val_balanced_accuracy": "max"}


def kt_objective(name: str):
    """`keras_tuner.Objective` of an `OBJECTIVES` name, with its direction."""
    import keras_tuner as kt

    return kt.Objective(name, OBJECTIVES[name])


def strategy_of(devices):
    """`--devices` -> keras-tuner's `distribution_strategy` (None for one device)."""
    from resnet_tuner.devices import distribution_strategy

    return distribution_strategy(devices)


def oracle_seed(seed: int) -> int:
    """keras-tuner reads seed 0 as "no seed" and draws a random one; shift so that
    every seed, 0 included, gives the same trials on every run and resume."""
    return seed % (2**31 - 1) + 1


@dataclass(frozen=True)
class Option:
    """What the code around a `SearchOptions` field needs to know about it.

    Attributes:
        help: the command line's help; `{default}` and `{choices}` are filled in.
        flag: the command-line flag; `""` derives `--field-name`, None makes the
            field positional.
        parse: argparse `type` (a bool field becomes a `store_true` switch).
        choices: the allowed values.
        minimum: the smallest allowed integer (None: not an integer bound).
        check: called with the value by `validate`; raises on a bad one.
        identity: resuming the run with another value is refused.
        tuner_kwarg: keras-tuner constructor keyword the value feeds: one name
            for every tuner, or `{tuner: name}` for some.
        to_tuner: turns the value into the keyword's value.
        metavar, required: as in argparse.
    """

    help: str
    flag: str | None = ""
    parse: Callable[[str], Any] | None = None
    choices: tuple | Callable[[], list] | None = None
    minimum: int | None = None
    check: Callable[[Any], None] | None = None
    identity: bool = False
    tuner_kwarg: str | Mapping[str, str] | None = None
    to_tuner: Callable[[Any], Any] | None = None
    metavar: str | None = None
    required: bool = False


def option(default: Any = dataclasses.MISSING, **metadata) -> Any:
    """A dataclass field of `SearchOptions` with its `Option` metadata."""
    return dataclasses.field(default=default, metadata={"option": Option(**metadata)})


@dataclass
class SearchOptions:
    """Everything a search run needs; stored in `run.json`.

    Every field's meaning is its `Option.help` (`resnet-tuner search --help`
    prints them). `validate()` checks them all.

    A new keras-tuner option is one field; `hyperband_factor` is the pattern:
    `option(3, parse=positive_int, minimum=2, identity=True,
    tuner_kwarg={"hyperband": "factor"}, help=...)` gives the `--hyperband-factor`
    flag, its check, its place in the resume identity and Hyperband's `factor=`.

    Example:
        >>> options = SearchOptions("pets/", out="runs/pets", tuner="random", max_trials=20)
        >>> options.validate()
        >>> options.tuner_arguments()["max_trials"]
        20
    """

    data_dir: str = option(
        flag=None, metavar="DATA_DIR", identity=True, check=_check_data_dir,
        help=f"image folder (one subfolder per class, or train/ val/ test/), or a dataset: "
             f"'{DIGITS}' for scikit-learn's bundled digits, '{FASHION_MNIST}' for "
             "Fashion-MNIST (its official 10,000 test images are the test split; from "
             "Debian's dataset-fashion-mnist, $RESNET_TUNER_FASHION_MNIST, Keras' cache or "
             "a Keras download). A folder of such a name: ./NAME")
    out: str = option(flag="--out", required=True, help="run directory (e.g. runs/pets)")
    space: str = option(
        "quick", identity=True, metavar="SPACE",
        help="search space: a preset ({presets}) or a .toml file (default: {default})")
    tuner: str = option(
        "hyperband", choices=TUNERS, identity=True,
        help="keras-tuner algorithm (default: {default})")
    max_trials: int = option(
        10, parse=positive_int, minimum=1, tuner_kwarg="max_trials", metavar="N",
        help="number of trials; raise it to search a finished run further. Hyperband runs "
             "the trials of its brackets, at most N: with --epochs E and --hyperband-factor "
             "F, one iteration is a fixed number of trials (30 for E=10, F=3; 10 for E=4; 2 "
             "for E=2), and --hyperband-iterations repeats them (default: {default})")
    epochs: int | None = option(
        None, parse=positive_int, minimum=1, identity=True, metavar="N",
        tuner_kwarg={"hyperband": "max_epochs"},
        help="epochs per trial, Hyperband's max epochs (default: the space's)")
    hyperband_factor: int = option(
        3, parse=positive_int, minimum=2, identity=True, tuner_kwarg={"hyperband": "factor"},
        metavar="FACTOR",
        help="Hyperband keeps 1/FACTOR of each round's models (default: {default})")
    hyperband_iterations: int = option(
        1, parse=positive_int, minimum=1, tuner_kwarg={"hyperband": "hyperband_iterations"},
        metavar="N",
        help="times Hyperband runs its brackets; raise it to search a finished Hyperband run "
             "further (default: {default})")
    image_size: int = option(
        64, parse=positive_int, minimum=1, identity=True, metavar="SIZE",
        help="images are resized to SIZE x SIZE (default: {default})")
    batch_size: int | None = option(
        None, parse=positive_int, minimum=1, identity=True, metavar="N",
        help="batch size; with --devices the global batch, split across the devices "
             "(default: the space's choice)")
    seed: int = option(
        0, parse=int, identity=True, tuner_kwarg="seed", to_tuner=oracle_seed,
        help="seed of the split and the tuner (default: {default})")
    split: tuple[float, float, float] = option(
        (0.8, 0.1, 0.1), parse=fractions, identity=True, check=_check_split,
        metavar="TRAIN,VAL,TEST",
        help="train,val,test fractions for a folder of class subfolders or digits; TEST 0 "
             "keeps no test split (all images for the search; the accuracy reported is then "
             "the search's validation accuracy, optimistic). fashion-mnist keeps its official "
             "test split and holds out VAL/(TRAIN+VAL) of its 60,000 training images (0.1 "
             "with the default) (default: {default})")
    resize: str = option(
        "stretch", choices=resize_modes, identity=True,
        help="how images are fitted to the size (default: {default})")
    max_pixels: int | None = option(
        None, parse=positive_int, minimum=1, metavar="N",
        help="images whose header states more pixels are skipped unread, against "
             "decompression bombs (default: resnet_tuner.data.MAX_PIXELS)")
    max_params: int | None = option(
        None, parse=positive_int, minimum=1, tuner_kwarg="max_model_size", metavar="N",
        help="trials whose model has more parameters fail (default: no cap)")
    max_failures: int = option(
        3, parse=positive_int, minimum=1, tuner_kwarg="max_consecutive_failed_trials",
        metavar="N", help="consecutive failed trials that stop the search (default: {default})")
    objective: str = option(
        "val_accuracy", choices=tuple(OBJECTIVES), identity=True, tuner_kwarg="objective",
        to_tuner=kt_objective,
        help="what trials are ranked by: validation accuracy or loss, or balanced accuracy "
             "(the mean of the per-class recalls, for imbalanced classes) (default: {default})")
    class_weight: str | None = option(
        None, choices=("balanced",), identity=True,
        help="'balanced' weighs each image's loss by n / (classes x images of its class), so "
             "a rare class counts as much as a common one (default: unweighted)")
    early_stopping: int | None = option(
        None, parse=positive_int, minimum=1, identity=True, metavar="PATIENCE",
        help="end a trial after PATIENCE epochs without a better objective (default: every "
             "trial trains all its epochs)")
    no_feature_cache: bool = option(
        False,
        help="run every image through a trial's frozen stages in every epoch, instead of "
             "computing their output once and keeping it on disk beside the image cache "
             "($RESNET_TUNER_CACHE) for the trials of the same backbone, weights and frozen "
             "stages (used only by trials without augmentation)")
    time_budget: float | str | None = option(
        None, parse=duration, check=parse_duration, tuner_kwarg="time_budget",
        to_tuner=lambda value: None if value is None else parse_duration(value),
        metavar="DURATION",
        help="wall-clock budget of the whole search, from reading the data to the exported "
             "bundle: 30m, 1h30m, 90s. No trial starts that the time left cannot hold, the "
             "running one stops at the deadline keeping its best epoch, and --final-training's "
             "share of the budget trains the best configuration again for the time left. A "
             "resumed search counts the time already spent (default: no budget)")
    final_training: float = option(
        0.5, parse=share, check=_check_share, tuner_kwarg="final_training", metavar="SHARE",
        help="with --time-budget, the share of the budget kept for training the best "
             "configuration found again, from scratch, its learning rate decaying over the "
             "time left up to the deadline; exported when its validation score is the best. "
             "0: none (default: {default})")
    median_stopping: bool = option(
        False, tuner_kwarg="median_stopping",
        help="stop a trial as soon as its best objective after an epoch is worse than the "
             "median of the finished trials' after the same epoch (once 3 trials have "
             "finished), so bad configurations cost an epoch or two")
    precision: str = option(
        "auto", choices=PRECISION_CHOICES, identity=True,
        help="dtype policy the trials train with: float32, mixed_float16 or mixed_bfloat16 "
             "(float32 weights, 16-bit compute; input uint8 and output float32 either way), "
             "or auto: mixed_float16 on GPUs of compute capability 7.0 or more, "
             "mixed_bfloat16 on a CPU with native bfloat16 (AMX or AVX512_BF16 flags), "
             "float32 otherwise (default: {default})")
    devices: str | int | None = option(
        None, parse=parse_devices, check=check_devices, tuner_kwarg="distribution_strategy",
        to_tuner=strategy_of, metavar="all|N",
        help="train each trial on several devices at once (tf.distribute.MirroredStrategy): "
             "'all' the GPUs, or the first N (without a GPU: the CPU devices). The batch size "
             "(--batch-size or the space's) is the global batch, split across the devices "
             "(default: one device, no strategy)")
    keep_checkpoints: int = option(
        3, parse=non_negative_int, minimum=0, metavar="K",
        help="after each trial, delete the weight checkpoints of all finished trials but the "
             "best K (keras-tuner keeps one a trial: a few MB for small models, ~100 MB for a "
             "ResNet50); the best K, ties with the K-th, and the checkpoints Hyperband "
             "builds them or a later round from are kept. 0 keeps them all "
             "(default: {default})")
    overwrite: bool = option(
        False, tuner_kwarg="overwrite",
        help="start over instead of resuming the run in --out")
    tensorboard: str | None = option(
        None, metavar="DIR",
        help="write TensorBoard logs to DIR: each trial's curves in DIR/<trial id>/, and "
             "every trial's hyperparameters and results in the HParams dashboard "
             "(tensorboard --logdir DIR) (default: none)")
    mlflow: str | None = option(
        None, metavar="URI", check=_check_mlflow,
        help="log each trial as an MLflow run (its hyperparameters and per-epoch metrics) and "
             "the exported bundle as an artifact of the best trial's run, to the tracking "
             "server or store at URI: http://HOST:PORT, or file:///path/mlruns for a folder "
             "(needs pip install \"resnet-tuner[mlflow]\") (default: none)")
    mlflow_experiment: str | None = option(
        None, metavar="NAME",
        help="the MLflow experiment of --mlflow's runs (default: the name of --out's folder)")

    def validate(self, *, paths: bool = True) -> None:
        """Checks every field against its `Option`.

        Args:
            paths: also check that `data_dir` exists.

        Raises:
            ValueError: a value out of its choices or bounds.
            FileNotFoundError: `data_dir` is not a folder (with `paths`).
        """
        for field in dataclasses.fields(self):
            meta: Option = field.metadata["option"]
            value = getattr(self, field.name)
            if value is None and field.default is None:
                continue
            choices = meta.choices() if callable(meta.choices) else meta.choices
            if choices is not None and value not in choices:
                raise ValueError(f"{field.name} must be one of {tuple(choices)}. "
                                 f"Received: {field.name}={value!r}")
            if meta.minimum is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < meta.minimum
            ):
                bound = "a positive integer" if meta.minimum == 1 else (
                    f"an integer >= {meta.minimum}")
                raise ValueError(f"{field.name} must be {bound}. "
                                 f"Received: {field.name}={value!r}")
            if meta.check is not None and (paths or field.name != "data_dir"):
                meta.check(value)

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> SearchOptions:
        """Options from `dataclasses.asdict` JSON (run.json); unknown keys are ignored."""
        values = {f.name: saved[f.name] for f in dataclasses.fields(cls) if f.name in saved}
        if "split" in values:
            values["split"] = tuple(values["split"])
        return cls(**values)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **given) -> SearchOptions:
        """Options from parsed `add_arguments` arguments; `given` overrides them."""
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
                  if hasattr(args, f.name)}
        return cls(**{**values, **given})

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The fields that have a default, with it, as JSON values."""
        return {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
                for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON values (tuples become lists), as `run.json` stores them."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    def tuner_arguments(self, **resolved) -> dict[str, Any]:
        """Keyword arguments of the `tuner`'s constructor, from the fields that feed one.

        Args:
            **resolved: field values to use instead of the stored ones (e.g.
                `epochs` resolved against the space when it is None).
        """
        kwargs = {}
        for field in dataclasses.fields(self):
            meta: Option = field.metadata["option"]
            keyword = meta.tuner_kwarg
            if isinstance(keyword, Mapping):
                keyword = keyword.get(self.tuner)
            if not keyword:
                continue
            value = resolved.get(field.name, getattr(self, field.name))
            kwargs[keyword] = meta.to_tuner(value) if meta.to_tuner else value
        return kwargs


#: Settings that define a run: resuming with others would mix two searches.
IDENTITY = tuple(f.name for f in dataclasses.fields(SearchOptions)
                 if f.metadata["option"].identity)


def _shown(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def add_arguments(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """Adds one argument per `SearchOptions` field (but `exclude`) to `parser`."""
    for field in dataclasses.fields(SearchOptions):
        if field.name in exclude:
            continue
        meta: Option = field.metadata["option"]
        default = None if field.default is dataclasses.MISSING else field.default
        choices = meta.choices() if callable(meta.choices) else meta.choices
        text = meta.help
        if "{" in text:
            text = text.format(default=_shown(default), presets=", ".join(preset_names()),
                               choices=", ".join(map(str, choices or ())))
        kwargs: dict[str, Any] = {"help": text}
        if meta.metavar:
            kwargs["metavar"] = meta.metavar
        if meta.flag is None:
            parser.add_argument(field.name, **kwargs)
            continue
        flag = meta.flag or "--" + field.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", **kwargs)
            continue
        if meta.parse is not None:
            kwargs["type"] = meta.parse
        if choices is not None:
            kwargs["choices"] = choices
        if meta.required:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
        parser.add_argument(flag, dest=field.name, **kwargs)
