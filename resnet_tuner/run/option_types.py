"""The value types of `SearchOptions`' fields: command-line parsers and checks.

Each parser (`positive_int`, `fractions`, `duration`, `share`, ...) turns a
flag's text into its value, raising `argparse.ArgumentTypeError` with the
rule it broke; each `_check_*` checks a value given from Python the same way
(`SearchOptions.validate`). No TensorFlow or keras-tuner here either.
"""

from __future__ import annotations

import argparse
import math
import re
from importlib import resources
from pathlib import Path

#: Data directory name that selects scikit-learn's bundled digits.
DIGITS = "digits"
#: Fashion-MNIST (`resnet_tuner.datasets.fashion_mnist`): the official test split.
FASHION_MNIST = "fashion-mnist"
#: DATA_DIR names that load a dataset instead of a folder
#: (`resnet_tuner.data.datasets.named_dataset`); a folder of such a name is ./NAME.
DATASETS = (DIGITS, FASHION_MNIST)


def preset_names() -> list[str]:
    """The bundled search-space presets, for the help text.

    `resnet_tuner.space.available_spaces()` lists the same folder, but loading
    it loads keras-tuner and TensorFlow, which `--help` must not wait for.
    """
    try:
        folder = resources.files("resnet_tuner.search_spaces")
    except ModuleNotFoundError:  # a source checkout run without installing
        folder = Path(__file__).resolve().parents[2] / "search_spaces"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def resize_modes() -> tuple[str, ...]:
    """How images can be fitted to the square input (`resnet_tuner.data.RESIZE_MODES`)."""
    from resnet_tuner.data import RESIZE_MODES

    return tuple(RESIZE_MODES)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return 0 if text.strip() == "0" else positive_int(text)


def fractions(text: str) -> tuple[float, float, float]:
    """argparse type: `0.8,0.1,0.1` -> `(0.8, 0.1, 0.1)`."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected three fractions like 0.8,0.1,0.1, got {text!r}")
    return parts  # type: ignore[return-value]


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | float | int) -> float:
    """`"30m"`, `"90s"`, `"1h30m"`, `"2h"`, `"1.5h"` or a number of seconds -> seconds.

    Raises:
        ValueError: anything else, or a duration that is not positive.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        value = str(text).strip().lower().replace(" ", "")
        number = r"(?:\d+(?:\.\d*)?|\.\d+)"
        if re.fullmatch(number, value):
            seconds = float(value)
        elif re.fullmatch(f"(?:{number}[smhd])+", value):
            seconds = sum(float(n) * _UNITS[u] for n, u in re.findall(f"({number})([smhd])", value))
        else:
            raise ValueError(f"expected a duration like 30m, 90s, 1h30m or a number of seconds, "
                             f"got {text!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a time budget must be a positive duration, got {text!r}")
    return seconds


def duration(text: str) -> float:
    """argparse type: a duration (`parse_duration`)."""
    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def share(text: str) -> float:
    """argparse type: a share in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a share from 0 to below 1, got {text!r}")
    return value


def _check_share(value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"final_training must be a share of the time budget in [0, 1). "
                         f"Received: final_training={value!r}")


def _check_split(split) -> None:
    from resnet_tuner.data import check_split_fractions

    check_split_fractions(split)


def _check_data_dir(data_dir) -> None:
    if data_dir not in DATASETS and not Path(data_dir).is_dir():
        raise FileNotFoundError(
            f"Image folder not found: {data_dir} (give a folder with one subfolder per class, "
            f"or a dataset: '{DIGITS}' for the bundled digits, '{FASHION_MNIST}' for "
            "Fashion-MNIST)"
        )


def _check_mlflow(uri) -> None:
    from resnet_tuner.tracking import require_mlflow

    require_mlflow()
