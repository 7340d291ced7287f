"""Datasets by name: `resnet_tuner.datasets.digits()` and `fashion_mnist()`.

Kept as a module of its own for `from resnet_tuner import datasets`; the code
lives in `resnet_tuner.data.datasets` and `resnet_tuner.data.fashion`.
"""

from resnet_tuner.data.datasets import digits
from resnet_tuner.data.fashion import FASHION_MNIST_CLASSES, fashion_mnist, read_idx

__all__ = ["FASHION_MNIST_CLASSES", "digits", "fashion_mnist", "read_idx"]
