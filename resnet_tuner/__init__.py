"""resnet_tuner: search ResNets for your own image folders with Keras Tuner.

Example:
    >>> from resnet_tuner import Hyperband, ResNetHyperModel
    >>> hm = ResNetHyperModel("quick", input_shape=(32, 32, 3), num_classes=10)
    >>> tuner = Hyperband(hm, objective="val_accuracy", max_epochs=10, seed=1)

`Hyperband`, `RandomSearch`, `BayesianOptimization` and `GridSearch` are
keras-tuner's tuners (same arguments) that try the space's `[[initial]]`
configurations first; keras-tuner's own work with `ResNetHyperModel` too.

Names are imported on first use, so `resnet-tuner --help` answers without
loading TensorFlow, and the CLI can set TensorFlow's log level before it loads.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "ImageData": "resnet_tuner.data",
    "ImageFolder": "resnet_tuner.data",
    "load_image": "resnet_tuner.data",
    "ResNetConfig": "resnet_tuner.config",
    "TrainConfig": "resnet_tuner.config",
    "build_resnet": "resnet_tuner.model",
    "freeze_stages": "resnet_tuner.model",
    "ResNetHyperModel": "resnet_tuner.hypermodel",
    "SearchSpace": "resnet_tuner.space",
    "SpaceError": "resnet_tuner.space",
    "available_spaces": "resnet_tuner.space",
    "load_space": "resnet_tuner.space",
    "export_best": "resnet_tuner.export",
    "export_model": "resnet_tuner.export",
    "load_bundle": "resnet_tuner.export",
    "SearchOptions": "resnet_tuner.run.options",
    "RandomSearch": "resnet_tuner.run.tuners",
    "Hyperband": "resnet_tuner.run.tuners",
    "BayesianOptimization": "resnet_tuner.run.tuners",
    "GridSearch": "resnet_tuner.run.tuners",
    "make_tuner": "resnet_tuner.run.tuners",
    "run_search": "resnet_tuner.run.search",
    "load_run": "resnet_tuner.run.search",
    "MlflowLogger": "resnet_tuner.tracking",
    "predict_files": "resnet_tuner.predict",
}
_SUBMODULES = ("datasets",)

__all__ = sorted([*_EXPORTS, *_SUBMODULES])


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = import_module(f"resnet_tuner.{name}")
    else:
        raise AttributeError(f"module 'resnet_tuner' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return __all__
