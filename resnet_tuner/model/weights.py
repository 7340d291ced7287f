"""The weights files of the pretrained backbones: found, checked, installed.

Weights come from Keras' cache (`$KERAS_HOME/models`, `~/.keras/models` by
default), from a download when the machine is online, or from a file the user
names. Loading always goes through `keras.Model.load_weights`, the same call
keras.applications makes, so a test can exercise it with a file it saved.
Offline, `install_weights` (`resnet-tuner weights install FILE`) recognises a
downloaded file by its MD5 and copies it into Keras' cache. Each backbone's
file name, URL and hash are its record's (`backbones.BACKBONES`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import keras

from resnet_tuner.model.backbones import BACKBONES


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached, downloadable nor given as a file."""


class UnknownWeightsFileError(ValueError):
    """`install_weights` was given a file whose MD5 matches no record of `BACKBONES`.

    Attributes:
        problem: what is wrong with the file (names it and its MD5).
        expected: the files it could have been, one line each (`expected_weights`).
    """

    def __init__(self, problem: str, expected: list[str]):
        super().__init__(f"{problem}; expected one of: " + "; ".join(expected))
        self.problem, self.expected = problem, expected


class BackboneWeightsWarning(UserWarning):
    """Pretrained backbones left out of a space: their weights cannot be had here."""


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights: `$KERAS_HOME/models`, else `~/.keras/models`."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def keras_cache_path(backbone: str = "resnet50") -> Path:
    """Where Keras keeps the downloaded weights of `backbone`."""
    return keras_cache_dir() / BACKBONES[backbone].weights_file


def weights_unavailable_message(backbone: str, reason: str = "") -> str:
    """What to do when `backbone`'s ImageNet weights are not here (one line)."""
    record = BACKBONES[backbone]
    cached = keras_cache_path(backbone)
    why = f" ({reason})" if reason else ""
    return (
        f"ImageNet weights for {record.title} are not in the Keras cache "
        f"({cached}) and could not be downloaded{why}. "
        f"Download {record.weights_url} on a machine with internet access, then "
        f"run `resnet-tuner weights install FILE` (it checks the file and copies it to "
        f"{cached}) or give its path: in a search space file, "
        f"weights = \"/path/to/{record.weights_file}\" under [transfer]; in Python, "
        f"ResNetConfig(weights='/path/to/{record.weights_file}'). To train from "
        "random initialisation instead: weights = \"none\" in the space file, "
        "weights=None in Python."
    )


@functools.cache
def downloadable(url: str, timeout: float = 5.0) -> bool:
    """Whether `url` answers a HEAD request (once per process and URL).

    How `weights_available` tells "offline" from "will download"; tests
    replace it (no network call in the test suite).
    """
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                                    timeout=timeout) as response:
            return 200 <= response.status < 400
    except Exception:  # no network, DNS, proxy, HTTP error ...
        return False


def weights_available(backbone: str) -> bool:
    """Whether `weights="imagenet"` can load for `backbone`: cached, or downloadable."""
    return keras_cache_path(backbone).is_file() or downloadable(BACKBONES[backbone].weights_url)


def resolve_weights(weights: str | None, backbone: str = "resnet50") -> Path | None:
    """Finds the weights file for `ResNetConfig.weights`.

    Args:
        weights: `"imagenet"` (Keras cache, else download), a path to a weights
            file (`.h5` as keras.applications ships, or `.weights.h5`), or None.
        backbone: a key of `BACKBONES`.

    Returns:
        The file to load, or None for random initialisation.

    Raises:
        FileNotFoundError: `weights` is a path that does not exist.
        WeightsUnavailableError: ImageNet weights are not cached and cannot be
            downloaded; the message says how to provide them.
    """
    record = BACKBONES[backbone]
    if weights is None:
        return None
    if weights == "imagenet":
        cached = keras_cache_path(backbone)
        if cached.is_file():
            return cached
        try:
            return Path(
                keras.utils.get_file(
                    record.weights_file,
                    record.weights_url,
                    cache_subdir="models",
                    file_hash=record.weights_hash,
                )
            )
        except Exception as err:  # no network, proxy, bad hash ...
            raise WeightsUnavailableError(
                weights_unavailable_message(backbone, f"{type(err).__name__}: {err}")
            ) from err
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{record.title} weights file not found: {path}. Pass weights='imagenet', None, "
            "or the path of an existing .h5 / .weights.h5 file."
        )
    return path


def file_md5(path: str | os.PathLike) -> str:
    """The MD5 of a file, as `keras.utils.get_file` checks it."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def identify_weights(path: str | os.PathLike) -> str | None:
    """The backbone whose ImageNet weights file `path` is (by MD5), or None."""
    digest = file_md5(path)
    return next((name for name, r in BACKBONES.items() if r.weights_hash == digest), None)


def expected_weights() -> list[str]:
    """One line per backbone: its key, weights file name and URL."""
    return [f"{name}: {r.weights_file} ({r.weights_url})" for name, r in BACKBONES.items()]


def install_weights(path: str | os.PathLike, backbone: str | None = None,
                    force: bool = False) -> tuple[str, Path]:
    """Copies a downloaded weights file where Keras looks for it (`keras_cache_path`).

    Args:
        path: a `_notop.h5` file of keras.applications.
        backbone: the backbone it must be (checked by MD5 unless `force`).
        force: install it as `backbone` without checking its MD5.

    Returns:
        `(backbone, destination)`.

    Raises:
        FileNotFoundError: no such file.
        UnknownWeightsFileError: its MD5 matches no record (or not `backbone`'s);
            the message lists the expected files.
        ValueError: `force` without `backbone`, or an unknown `backbone`.
    """
    source = Path(path).expanduser()
    if backbone is not None and backbone not in BACKBONES:
        raise ValueError(f"Unknown backbone {backbone!r}; known: {', '.join(BACKBONES)}")
    if force and backbone is None:
        raise ValueError("Installing an unverified weights file (force) needs its backbone name")
    if not source.is_file():
        raise FileNotFoundError(f"weights file not found: {source}")
    if force:
        name = backbone
    else:
        digest = file_md5(source)
        name = next((k for k, r in BACKBONES.items() if r.weights_hash == digest), None)
        if name is None or (backbone is not None and name != backbone):
            what = (f"is not {BACKBONES[backbone].title}'s weights file" if backbone
                    else "matches no known ImageNet weights file")
            expected = expected_weights()
            if backbone is not None:
                expected = [expected[list(BACKBONES).index(backbone)]]
            raise UnknownWeightsFileError(f"{source} {what} (MD5 {digest})", expected)
    destination = keras_cache_path(name)
    destination.parent.mkdir(parents=True, exist_ok=True)
    if source.resolve() != destination.resolve():
        # Copied beside the destination and renamed: never half a file in the cache.
        fd, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.")
        os.close(fd)
        try:
            shutil.copyfile(source, temporary)
            os.replace(temporary, destination)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    return name, destination
