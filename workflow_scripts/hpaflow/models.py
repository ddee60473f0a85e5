"""Backbone registry: build, load ImageNet weights from a folder, adapt input channels and head.

A new backbone joins by one entry in BACKBONES and its weight files in hpaflow.weights.WEIGHTS (read at
planning time, where torch is not installed). Nothing is downloaded at run time: weights are
read from `pretrained_dir` under their torch hub file names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .labels import NUM_CLASSES
from .weights import WEIGHTS, WeightsError, weights_path  # noqa: F401 (WeightsError: the error callers catch)


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None)

    return build


def _pretrainedmodels(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import pretrainedmodels

        model = getattr(pretrainedmodels, name)(num_classes=1000, pretrained=None)
        # The SENets hard-code AvgPool2d(7), i.e. 224 px input only.
        model.avg_pool = nn.AdaptiveAvgPool2d(1)
        return model

    return build


@dataclass(frozen=True)
class Backbone:
    build: Callable[[], nn.Module]  # ImageNet architecture with its 1000-way head
    first_conv: str  # attribute path of the input convolution
    head: str  # attribute name of the final linear layer


BACKBONES: dict[str, Backbone] = {
    "resnet18": Backbone(
        _torchvision("resnet18"),
        "conv1",
        "fc",
    ),
    "resnet50": Backbone(
        _torchvision("resnet50"),
        "conv1",
        "fc",
    ),
    "se_resnet50": Backbone(
        _pretrainedmodels("se_resnet50"),
        "layer0.conv1",
        "last_linear",
    ),
    "se_resnext50_32x4d": Backbone(
        _pretrainedmodels("se_resnext50_32x4d"),
        "layer0.conv1",
        "last_linear",
    ),
}


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    *parents, last = path.split(".")
    for part in parents:
        module = getattr(module, part)
    setattr(module, last, value)


def adapt_input(model: nn.Module, path: str, channels: int) -> None:
    """Give the input convolution `channels` filters; extra ones start as copies of the red filter."""
    conv: nn.Conv2d = _get(model, path)
    if conv.in_channels == channels:
        return
    new = nn.Conv2d(
        channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
    )
    with torch.no_grad():
        new.weight[:, :3] = conv.weight
        for c in range(3, channels):
            new.weight[:, c] = conv.weight[:, 0]
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    _set(model, path, new)


def build_model(
    backbone: str,
    in_channels: int = 3,
    pretrained: bool = False,
    pretrained_dir: str | Path = "pretrained",
    num_classes: int = NUM_CLASSES,
) -> nn.Module:
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r} (known: {', '.join(BACKBONES)})")
    spec = BACKBONES[backbone]
    model = spec.build()
    if pretrained:
        state = torch.load(weights_path(backbone, pretrained_dir), map_location="cpu", weights_only=True)
        model.load_state_dict(state)  # strict: a file of the wrong architecture fails here
    adapt_input(model, spec.first_conv, in_channels)
    head: nn.Linear = getattr(model, spec.head)
    setattr(model, spec.head, nn.Linear(head.in_features, num_classes))
    return model
