"""Datasets by name: `resnet_tuner.datasets.digits()` and `fashion_mnist()`.

Kept as a module of its own for `from resnet_tuner import datasets`; the code
lives in `resnet_tuner.data.datasets`.
"""

from resnet_tuner.data.datasets import FASHION_MNIST_CLASSES, digits, fashion_mnist, read_idx

__all__ = ["FASHION_MNIST_CLASSES", "digits", "fashion_mnist", "read_idx"]
