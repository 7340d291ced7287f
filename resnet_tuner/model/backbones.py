"""Pretrained backbones: one `Backbone` record each, and the user's own models.

A record says how to build the network (without its top), which
preprocessing layer turns [0, 1] images into what its weights expect, where
its weights file comes from (name, URL, hash) and how its layers are named by
stage, which `freeze_stages` reads. `BACKBONES` has every ResNet of
keras.applications: ResNet50/101/152 (caffe preprocessing, `CaffePreprocess`)
and ResNet50V2/101V2/152V2 ("tf" preprocessing, [-1, 1]). Adding a backbone
is one record in `BACKBONES` and its stage count in `config.PRETRAINED_STAGES`.

Weights come from Keras' cache (`$KERAS_HOME/models`, `~/.keras/models` by
default), from a download when the machine is online, or from a file the user
names. Loading always goes through `keras.Model.load_weights`, the same call
keras.applications makes, so a test can exercise it with a file it saved.
Offline, `install_weights` (`resnet-tuner weights install FILE`) recognises a
downloaded file by its MD5 and copies it into Keras' cache.

The user's own model as backbone (`backbone = "path/to/best"`) is
`path_backbone`'s; its stages are named as here (`layer_stages`), and
`backbone_stages` / `backbone_label` answer for both kinds.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from resnet_tuner.config import PRETRAINED_STAGES, ResNetConfig, is_backbone_path
from resnet_tuner.model.layers import CaffePreprocess

#: Where keras.applications' ResNet weights files download from (V1 and V2 alike).
WEIGHTS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"


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


@dataclass(frozen=True)
class Backbone:
    """One pretrained network usable as `ResNetConfig.backbone`.

    Attributes:
        title: the name used in messages, e.g. `"ResNet50"`.
        family: the keras.applications module it comes from (`"resnet"`,
            `"resnet_v2"`), whose `preprocess_input` `preprocess` reproduces.
        build: `input_shape -> keras.Model` without top and without weights;
            the model's name is the record's key (the layer name in the model).
        preprocess: `() -> layer` mapping [0, 1] images to the network's input.
        weights_file: file name of the ImageNet weights (Keras' cache name).
        weights_url: where `weights_file` downloads from.
        weights_hash: its MD5, checked by `keras.utils.get_file` and by
            `install_weights`.
        stage_prefixes: for stage 1, 2, ... the prefixes of its layers' names;
            `freeze_stages=k` freezes the layers of stages 1..k.
    """

    title: str
    family: str
    build: Callable[[tuple[int, ...]], keras.Model]
    preprocess: Callable[[], keras.layers.Layer]
    weights_file: str
    weights_url: str
    weights_hash: str
    stage_prefixes: tuple[tuple[str, ...], ...]

    def stage_of(self, layer_name: str) -> int | None:
        """The stage of one of this network's layers (1 = stem), or None."""
        for stage, prefixes in enumerate(self.stage_prefixes, start=1):
            if layer_name.startswith(prefixes):
                return stage
        return None


def _name_shortcut_pools(model: keras.Model) -> None:
    """Names the V2 shortcut max-pools after their block: `conv3_block4_0_pool`.

    keras.applications' ResNet V2 leaves the 1x1 max-pool of each strided
    block's shortcut unnamed, so it gets a process-wide counter name
    (`max_pooling2d_7`) that no stage prefix can match. Its block is the `Add`
    it feeds (`conv3_block4_out`); `_0_` is the shortcut branch, as in V1's
    `conv3_block1_0_conv`. The layer holds no weights, so weights files are
    not affected.
    """
    pools = {id(layer.output): layer for layer in model.layers
             if isinstance(layer, keras.layers.MaxPooling2D)
             and layer.name.startswith("max_pooling2d")}
    for layer in model.layers:
        if pools and isinstance(layer, keras.layers.Add):
            for tensor in layer.input:
                pool = pools.pop(id(tensor), None)
                if pool is not None:
                    pool.name = layer.name.removesuffix("_out") + "_0_pool"


def _application(function: str) -> Callable[[tuple[int, ...]], keras.Model]:
    def build(input_shape: tuple[int, ...]) -> keras.Model:
        model = getattr(keras.applications, function)(
            include_top=False, weights=None, input_shape=input_shape)
        _name_shortcut_pools(model)
        return model

    build.__name__ = build.__qualname__ = f"build_{function}"
    return build


def _caffe() -> keras.layers.Layer:
    # keras.applications.resnet.preprocess_input: RGB -> BGR, minus the ImageNet means.
    return CaffePreprocess(name="caffe_preprocess")


def _tf() -> keras.layers.Layer:
    # keras.applications.resnet_v2.preprocess_input ("tf" mode): pixels / 127.5 - 1.
    # The input holds pixels / 255, so 2 x - 1.
    return keras.layers.Rescaling(2.0, offset=-1.0, name="tf_preprocess")


#: Stem (conv1, pool1) and four residual stages (conv2..conv5), named as in
#: He et al. 2015, Table 1; V2 ends with `post_bn` / `post_relu` after conv5.
_V1_STAGES = (("conv1_", "pool1_"), ("conv2_",), ("conv3_",), ("conv4_",), ("conv5_",))
_V2_STAGES = (*_V1_STAGES[:4], ("conv5_", "post_"))


def _record(key: str, title: str, md5: str) -> Backbone:
    """A keras.applications ResNet; `md5` is its `_notop` file's (keras' `WEIGHTS_HASHES`)."""
    v2 = key.endswith("v2")
    weights_file = f"{key}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    return Backbone(
        title=title,
        family="resnet_v2" if v2 else "resnet",
        build=_application(title),
        preprocess=_tf if v2 else _caffe,
        weights_file=weights_file,
        weights_url=WEIGHTS_BASE_URL + weights_file,
        weights_hash=md5,
        stage_prefixes=_V2_STAGES if v2 else _V1_STAGES,
    )


BACKBONES: dict[str, Backbone] = {
    "resnet50": _record("resnet50", "ResNet50", "4d473c1dd8becc155b73f8504c6f6626"),
    "resnet101": _record("resnet101", "ResNet101", "88cf7a10940856eca736dc7b7e228a21"),
    "resnet152": _record("resnet152", "ResNet152", "ee4c566cf9a93f14d82f913c2dc6dd0c"),
    "resnet50v2": _record("resnet50v2", "ResNet50V2", "fac2f116257151a9d068a22e544a4917"),
    "resnet101v2": _record("resnet101v2", "ResNet101V2", "c0ed64b8031c3730f411d2eb4eea35b5"),
    "resnet152v2": _record("resnet152v2", "ResNet152V2", "ed17cf2e0169df9d443503ef94b23b33"),
}

for _name, _record_ in BACKBONES.items():
    # config.py validates freeze_stages without Keras, from its own stage counts.
    if PRETRAINED_STAGES.get(_name) != len(_record_.stage_prefixes):
        raise ImportError(
            f"resnet_tuner.config.PRETRAINED_STAGES[{_name!r}] must be "
            f"{len(_record_.stage_prefixes)}, the number of stages of backbone {_name!r}"
        )
if set(BACKBONES) != set(PRETRAINED_STAGES):
    raise ImportError(
        f"resnet_tuner.config.PRETRAINED_STAGES {sorted(PRETRAINED_STAGES)} must name the "
        f"backbones {sorted(BACKBONES)}"
    )


# --------------------------------------------------------------------------- weights files


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


# --------------------------------------------------------------------------- stages

#: resnet_tuner's own layer names: `stem_conv`, `stage3_block2_conv1`, `post_bn`.
OWN_STAGE = re.compile(r"^stem_|^stage(\d+)_")


def _own_naming(layers) -> Callable[[str], int | None]:
    """Stages by resnet_tuner's names; `post_*` (pre-activation) ends the last stage."""
    stages = [int(m.group(1)) for m in map(OWN_STAGE.match, (layer.name for layer in layers))
              if m and m.group(1)]
    last = max(stages, default=1)

    def stage(name: str) -> int | None:
        match = OWN_STAGE.match(name)
        if match:
            return int(match.group(1)) if match.group(1) else 1
        return last if name.startswith("post_") else None

    return stage


def layer_stages(model: keras.Model) -> list[tuple[keras.layers.Layer, int | None]]:
    """Every layer of `model` (nested models opened) with its stage (1 = stem), or None.

    A nested model named after a `BACKBONES` key is staged by that record's
    `stage_prefixes`. The layers of any other model are staged by whichever
    naming stages most of them: resnet_tuner's own (`stem_*`, `stage<s>_*`,
    `post_*` in the last stage) or one of the records' (a keras.applications
    ResNet saved flat). A model with none of these names has no stages.
    """
    out: list[tuple[keras.layers.Layer, int | None]] = []

    def walk(m: keras.Model, naming: Callable[[str], int | None] | None) -> None:
        leaves = [layer for layer in m.layers if not isinstance(layer, keras.Model)]
        if naming is None:
            candidates = [_own_naming(leaves)] + [r.stage_of for r in BACKBONES.values()]
            naming = max(candidates, key=lambda f: sum(f(leaf.name) is not None for leaf in leaves))
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                record = BACKBONES.get(layer.name)
                walk(layer, record.stage_of if record else None)
            else:
                out.append((layer, naming(layer.name)))

    walk(model, None)
    return out


def stage_count(model: keras.Model) -> int:
    """The number of stages `layer_stages` finds in `model` (0: none)."""
    return max((s for _, s in layer_stages(model) if s is not None), default=0)


# --------------------------------------------------------------------------- networks


#: The layer name of a user backbone nested in a model (`path_backbone.user_backbone`).
USER_BACKBONE = "user_backbone"


def pretrained_backbone(x, config: ResNetConfig):
    """Applies the pretrained network `config.backbone` names, with its preprocessing, to `x`.

    `x` holds images scaled to [0, 1]. The network is nested as one layer
    named after its key (`resnet50`), whose inner layers keep
    keras.applications' names (`conv1_*`, `conv2_block1_*`, ...), so
    `freeze_stages` finds them by the record's `stage_prefixes`.
    """
    record = BACKBONES[config.backbone]
    x = record.preprocess()(x)
    base = record.build(tuple(x.shape[1:]))
    weights_path = resolve_weights(config.weights, config.backbone)
    if weights_path is not None:
        base.load_weights(str(weights_path))
    return base(x)


def backbone_stages(backbone: str) -> int:
    """Stages of a pretrained or path backbone: the most `freeze_stages` can freeze."""
    if is_backbone_path(backbone):
        from resnet_tuner.model.path_backbone import user_backbone_stages  # it imports us

        return user_backbone_stages(backbone)
    return PRETRAINED_STAGES[backbone]


def backbone_label(backbone: str) -> str:
    """A model-name-safe name of a backbone: the key, or a path's folder / file stem."""
    if not is_backbone_path(backbone):
        return backbone
    path = Path(backbone.rstrip("/\\"))
    label = path.parent.name if path.name == "model.keras" else path.stem
    return re.sub(r"[^A-Za-z0-9_.-]", "_", label) or USER_BACKBONE
