"""Datasets that ship inside installed packages: `resnet_tuner.datasets.digits()`.

Kept as a module of its own for `from resnet_tuner import datasets`; the code
lives in `resnet_tuner.data.datasets`.
"""

from resnet_tuner.data.datasets import digits

__all__ = ["digits"]
