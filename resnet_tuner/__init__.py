"""resnet_tuner: search ResNets for your own image folders with Keras Tuner.

Example:
    >>> import keras_tuner as kt
    >>> from resnet_tuner import ResNetHyperModel
    >>> hm = ResNetHyperModel("quick", input_shape=(32, 32, 3), num_classes=10)
    >>> tuner = kt.Hyperband(hm, objective="val_accuracy", max_epochs=10)
"""

from resnet_tuner import datasets
from resnet_tuner.builder import build_resnet, freeze_stages
from resnet_tuner.config import ResNetConfig, TrainConfig
from resnet_tuner.data import ImageData, ImageFolder, load_image
from resnet_tuner.export import export_best, export_model, load_bundle
from resnet_tuner.hypermodel import ResNetHyperModel
from resnet_tuner.space import SearchSpace, SpaceError, available_spaces, load_space

__version__ = "0.1.0"

__all__ = [
    "ImageData",
    "ImageFolder",
    "datasets",
    "export_best",
    "export_model",
    "load_bundle",
    "load_image",
    "ResNetConfig",
    "ResNetHyperModel",
    "SearchSpace",
    "SpaceError",
    "TrainConfig",
    "available_spaces",
    "build_resnet",
    "freeze_stages",
    "load_space",
]
