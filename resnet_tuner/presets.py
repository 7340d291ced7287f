"""The named architectures of `ResNetConfig.preset`: the paper's networks and a tutorial's.

`resnet18`..`resnet152` are He et al. (2015)'s Table 1 networks, `resnet20`..`resnet110`
its CIFAR networks (sec. 4.2), `mini_resnet` the cats-vs-dogs tutorial's model
(`../shared/seeds`, post 003). Each is a `ResNetConfig`; any field can be overridden.
"""

from __future__ import annotations

from resnet_tuner.config import ResNetConfig

__all__ = ["PRESETS"]


def _imagenet(block: str, depths: tuple[int, ...]) -> ResNetConfig:
    # He et al. 2015, Table 1.
    return ResNetConfig(block=block, stage_depths=depths, stage_widths=(64, 128, 256, 512))


def _cifar(n: int) -> ResNetConfig:
    # He et al. 2015, sec. 4.2: 6n+2 layers, 3 stages of 16/32/64 filters, option A.
    return ResNetConfig(
        block="basic",
        stage_depths=(n, n, n),
        stage_widths=(16, 32, 64),
        shortcut="A",
        stem="cifar",
        stem_width=16,
    )


PRESETS: dict[str, ResNetConfig] = {
    "resnet18": _imagenet("basic", (2, 2, 2, 2)),
    "resnet34": _imagenet("basic", (3, 4, 6, 3)),
    "resnet50": _imagenet("bottleneck", (3, 4, 6, 3)),
    "resnet101": _imagenet("bottleneck", (3, 4, 23, 3)),
    "resnet152": _imagenet("bottleneck", (3, 8, 36, 3)),
    **{f"resnet{6 * n + 2}": _cifar(n) for n in (3, 5, 7, 9, 18)},
    # The mini-ResNet of a cats-vs-dogs tutorial: 3x3/2 stem of 32, six basic blocks
    # (32 s1 | 64 s2, 64 | 128 s2, 128 | 256 s2), projection shortcuts where the
    # shape changes, biased convs, GAP -> Dense(10, relu) -> Dense(1, sigmoid).
    "mini_resnet": ResNetConfig(
        block="basic",
        stage_depths=(1, 2, 2, 1),
        stage_widths=(32, 64, 128, 256),
        shortcut="B",
        stem="strided3x3",
        stem_width=32,
        conv_bias=True,
        head_hidden=10,
        binary_head=True,
    ),
}
