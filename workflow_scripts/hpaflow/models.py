"""Models: an ImageNet backbone less its classifier (the body, image -> last feature map) and a head
(feature map -> 28 logits), both chosen by name.

A new backbone joins by one entry in BACKBONES and its weight files in hpaflow.weights.WEIGHTS (read at
planning time, where torch is not installed); any timm model joins by name as `timm/<name>`. Nothing is
downloaded at run time: weights are read from `pretrained_dir` under their hub file names. Every body takes
our input convention (hpaflow.augment.normalize_batch: ImageNet mean/std, RGB(Y)); where a backbone's
weights expect another (BGR, 0-255, (v - 0.5) / 0.5, ...), the conversion is folded into its first
convolution when the model is built, so one input serves all.
"""

from __future__ import annotations

import copy
import math
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .labels import NUM_CLASSES
from .transforms import MEAN, STD
from .weights import TIMM, WeightsError, weights_path  # noqa: F401 (WeightsError: the error callers catch)


@dataclass(frozen=True)
class InputSpace:
    """What a backbone's ImageNet weights were trained on: per channel (scale * v - mean) / std of the image
    v in [0, 1], channels RGB or BGR."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 1.0
    bgr: bool = False


# Ours (hpaflow.transforms.MEAN/STD, torchvision's ImageNet statistics), for the first three channels.
IMAGENET = InputSpace(tuple(float(m) for m in MEAN[:3]), tuple(float(s) for s in STD[:3]))
HALF = InputSpace((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # Inception-style (v - 0.5) / 0.5 (Keras/TF ports)


def _load_file(net: nn.Module, path: Path, remap: Callable[[dict], None] | None = None) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if remap is not None:
        remap(state)  # in place: keeps the file's _metadata (old BatchNorm files lack num_batches_tracked)
    net.load_state_dict(state)  # strict: a file of the wrong architecture fails here


# torchvision's densenet files keep pre-0.4 names (`norm.1` for norm1): renamed as torchvision does.
_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _densenet_keys(state: dict) -> None:
    for key in list(state):
        m = _DENSENET_KEY.match(key)
        if m:
            state[m[1] + m[2]] = state.pop(key)


def _torchvision(name: str, remap: Callable[[dict], None] | None = None, **kwargs) -> Callable[..., nn.Module]:
    def build(weights: Path | None = None) -> nn.Module:
        import torchvision

        net = getattr(torchvision.models, name)(weights=None, **kwargs)
        if weights is not None:
            _load_file(net, weights, remap)
        return net

    return build


def _pretrainedmodels(name: str) -> Callable[..., nn.Module]:
    def build(weights: Path | None = None) -> nn.Module:
        import importlib

        import pretrainedmodels

        if name == "xception":  # the class itself: its file has `fc`, which xception() renames last_linear
            net = importlib.import_module("pretrainedmodels.models.xception").Xception(num_classes=1000)
        else:
            net = getattr(pretrainedmodels, name)(num_classes=1000, pretrained=None)
        if weights is not None:
            _load_file(net, weights)
        if name == "bninception":
            for pool in ("inception_3c_pool", "inception_4e_pool"):
                setattr(net, pool, EvenMaxPool(getattr(net, pool)))
        return net

    return build


class EvenMaxPool(nn.Module):
    """BN-Inception's grid reductions concatenate a ceil-mode 3x3/2 max pool (no padding) with 3x3/2 convs
    (padding 1): on an odd side the pool gives one row fewer, so the model took only sides 32k-1..32k+6.
    An odd side is padded to even (with -inf: no window takes it) first; even sides pool as before."""

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return self.pool(F.pad(x, (0, w % 2, 0, h % 2), value=float("-inf")))


# Bodies: (ImageNet network, image) -> its last feature map (B, F, h, w), before any pooling.
def _resnet_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def _densenet_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.relu(net.features(x))  # torchvision's forward applies this ReLU before pooling


_INCEPTION_LAYERS = (
    "Conv2d_1a_3x3 Conv2d_2a_3x3 Conv2d_2b_3x3 maxpool1 Conv2d_3b_1x1 Conv2d_4a_3x3 maxpool2 Mixed_5b Mixed_5c "
    "Mixed_5d Mixed_6a Mixed_6b Mixed_6c Mixed_6d Mixed_6e Mixed_7a Mixed_7b Mixed_7c"
).split()


def _inception_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    for name in _INCEPTION_LAYERS:  # torchvision's _forward without AuxLogits, pooling and fc
        x = getattr(net, name)(x)
    return x


def _pretrainedmodels_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net.features(x)


def _xception_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.relu(net.features(x))  # pretrainedmodels' xception applies this ReLU in logits()


def _timm_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = net.forward_features(x)
    if getattr(net, "output_fmt", "NCHW") == "NHWC":  # e.g. Swin: channels last
        x = x.permute(0, 3, 1, 2)
    if x.ndim != 4:
        raise ValueError(
            f"timm/{net.pretrained_cfg.get('architecture')}: forward_features gives shape {tuple(x.shape)}, not a "
            "feature map (B, C, H, W); use a convolutional timm model"
        )
    return x


@dataclass(frozen=True)
class Backbone:
    # (weights file or None) -> the ImageNet architecture with its classifier, the file loaded strict
    build: Callable[..., nn.Module]
    features: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (network, image) -> last feature map
    first_conv: str  # attribute path of the input convolution
    classifier: str  # attribute of the ImageNet classifier (an nn.Linear), removed (timm: reset_classifier)
    input_space: InputSpace = IMAGENET  # what the ImageNet weights expect (folded into first_conv)
    unused: tuple[str, ...] = ()  # other modules removed from the body: fixed-size pools, auxiliary heads


BACKBONES: dict[str, Backbone] = {
    "resnet18": Backbone(_torchvision("resnet18"), _resnet_features, "conv1", "fc"),
    "resnet34": Backbone(_torchvision("resnet34"), _resnet_features, "conv1", "fc"),
    "resnet50": Backbone(_torchvision("resnet50"), _resnet_features, "conv1", "fc"),
    # SENets and BN-Inception hard-code AvgPool2d(7), i.e. 224 px input only: removed (the head pools).
    "se_resnet50": Backbone(
        _pretrainedmodels("se_resnet50"),
        _pretrainedmodels_features,
        "layer0.conv1",
        "last_linear",
        unused=("avg_pool",),
    ),
    "se_resnext50_32x4d": Backbone(
        _pretrainedmodels("se_resnext50_32x4d"),
        _pretrainedmodels_features,
        "layer0.conv1",
        "last_linear",
        unused=("avg_pool",),
    ),
    "densenet121": Backbone(
        _torchvision("densenet121", _densenet_keys), _densenet_features, "features.conv0", "classifier"
    ),
    "densenet169": Backbone(
        _torchvision("densenet169", _densenet_keys), _densenet_features, "features.conv0", "classifier"
    ),
    # Built with its auxiliary classifier (the file has it, loaded strict), then that is removed; the weights
    # expect (v - 0.5) / 0.5 (torchvision converts with transform_input; here the first conv does).
    "inception_v3": Backbone(
        _torchvision("inception_v3", aux_logits=True, init_weights=True),
        _inception_features,
        "Conv2d_1a_3x3.conv",
        "fc",
        HALF,
        unused=("AuxLogits",),
    ),
    "xception": Backbone(_pretrainedmodels("xception"), _xception_features, "conv1", "fc", HALF),
    "bninception": Backbone(
        _pretrainedmodels("bninception"),
        _pretrainedmodels_features,
        "conv1_7x7_s2",
        "last_linear",
        InputSpace((104.0, 117.0, 128.0), (1.0, 1.0, 1.0), scale=255.0, bgr=True),  # Caffe's
        unused=("global_pool",),
    ),
}


def _timm_backbone(backbone: str) -> Backbone:
    """timm/<name> (name may carry a pretrained tag, e.g. resnet50.a1_in1k): its input convolution and
    input statistics from its pretrained_cfg, loaded by timm itself from the local hub file."""
    import timm

    name = backbone.removeprefix(TIMM)
    if not timm.is_model(name):
        raise ValueError(f"unknown backbone {backbone!r}: timm {timm.__version__} has no model {name!r}")
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not isinstance(cfg.first_conv, str):
        raise ValueError(f"backbone {backbone!r}: timm names no single input convolution (pretrained_cfg.first_conv)")

    def build(weights: Path | None = None) -> nn.Module:
        if weights is None:
            return timm.create_model(name)
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(weights)})

    space = InputSpace(tuple(cfg.mean), tuple(cfg.std))
    return Backbone(build, _timm_features, cfg.first_conv, cfg.classifier, space)


def backbone_spec(backbone: str) -> Backbone:
    if backbone.startswith(TIMM):
        return _timm_backbone(backbone)
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r} (known: {', '.join(BACKBONES)}, or timm/<name>)")
    return BACKBONES[backbone]


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    *parents, last = path.split(".")
    for part in parents:
        module = getattr(module, part)
    setattr(module, last, value)


def _with_weights(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    """A copy of `conv` (its class and padding kept, e.g. timm's Conv2dSame) with these parameters."""
    if conv.groups != 1:
        raise ValueError(f"input convolution with groups={conv.groups}: cannot change its input channels")
    new = copy.deepcopy(conv)
    new.in_channels = weight.shape[1]
    new.weight = nn.Parameter(weight.detach().clone())
    new.bias = None if bias is None else nn.Parameter(bias.detach().clone())
    return new


def _same(a: InputSpace, b: InputSpace) -> bool:
    close = [math.isclose(x, y, rel_tol=1e-6) for x, y in zip((*a.mean, *a.std, a.scale), (*b.mean, *b.std, b.scale))]
    return all(close) and a.bgr == b.bgr


def fold_input(conv: nn.Conv2d, space: InputSpace, ours: InputSpace = IMAGENET) -> nn.Conv2d:
    """The 3-channel input convolution `conv`, trained on `space` inputs, as one taking `ours`: same output
    away from the zero padding. With v = ours.std * x + ours.mean, their channel c reads our channel
    j (j = 2 - c for BGR) as a_c x_j + b_c, a_c = scale * std_j / S_c, b_c = (scale * mean_j - M_c) / S_c;
    so weight[:, j] = a_c W[:, c], bias += sum_c b_c sum(W[:, c])."""
    if _same(space, ours):
        return conv
    if conv.in_channels != 3:
        raise ValueError(f"input convolution has {conv.in_channels} channels, expected 3 (RGB)")
    w = conv.weight.detach().double()
    weight = torch.empty_like(w)
    bias = torch.zeros(w.shape[0], dtype=torch.float64) if conv.bias is None else conv.bias.detach().double()
    for c in range(3):
        j = 2 - c if space.bgr else c
        a = space.scale * ours.std[j] / space.std[c]
        b = (space.scale * ours.mean[j] - space.mean[c]) / space.std[c]
        weight[:, j] = a * w[:, c]
        bias = bias + b * w[:, c].sum((1, 2))
    dtype = conv.weight.dtype
    return _with_weights(conv, weight.to(dtype), bias.to(dtype))


def adapt_input(model: nn.Module, path: str, channels: int) -> None:
    """Give the input convolution `channels` filters; extra ones start as copies of the red filter."""
    conv: nn.Conv2d = _get(model, path)
    if conv.in_channels == channels:
        return
    if conv.in_channels != 3 or channels < 3:
        raise ValueError(f"input convolution {path}: {conv.in_channels} -> {channels} channels (RGB -> 3 or more only)")
    w = conv.weight.detach()
    extra = [w[:, :1]] * (channels - 3)
    _set(model, path, _with_weights(conv, torch.cat([w[:, :3], *extra], 1), conv.bias))


# Heads: (B, F, h, w) feature map -> (B, num_classes) logits.
class ConcatPool(nn.Module):
    """(B, F, h, w) -> (B, 2F): each channel's mean, then each channel's max ([mean_1..mean_F, max_1..max_F])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)


class AvgPool(nn.Module):
    """(B, F, h, w) -> (B, F): global average pooling (any h, w)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


def linear_head(num_features: int, num_classes: int, hidden: int, dropout: float) -> nn.Module:
    return nn.Sequential(OrderedDict(pool=AvgPool(), fc=nn.Linear(num_features, num_classes)))


def concat_pool_head(num_features: int, num_classes: int, hidden: int, dropout: float) -> nn.Module:
    """bestfitting's (1st place, HPA 2018): [avg, max] pooling, BN, dropout, hidden ReLU layer, BN, dropout, fc."""
    return nn.Sequential(
        OrderedDict(
            pool=ConcatPool(),
            bn1=nn.BatchNorm1d(2 * num_features),
            drop1=nn.Dropout(dropout),
            fc1=nn.Linear(2 * num_features, hidden),
            relu=nn.ReLU(),
            bn2=nn.BatchNorm1d(hidden),
            drop2=nn.Dropout(dropout),
            fc=nn.Linear(hidden, num_classes),
        )
    )


HEADS: dict[str, Callable[[int, int, int, float], nn.Module]] = {
    "linear": linear_head,
    "concat_pool": concat_pool_head,
}


class Classifier(nn.Module):
    """body (an ImageNet network less its classifier) -> `features` (its last feature map) -> head -> logits."""

    def __init__(self, body: nn.Module, features: Callable[[nn.Module, torch.Tensor], torch.Tensor], head: nn.Module):
        super().__init__()
        self.body = body
        self.head = head
        self.features = features  # a function, not a module: no state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.body, x))


def build_model(
    backbone: str,
    in_channels: int = 3,
    pretrained: bool = False,
    pretrained_dir: str | Path = "pretrained",
    num_classes: int = NUM_CLASSES,
    *,
    head: str = "linear",
    head_hidden: int = 512,
    dropout: float = 0.5,
) -> Classifier:
    """`backbone` (BACKBONES or timm/<name>) taking `in_channels` inputs in our convention, with `head` (HEADS)."""
    spec = backbone_spec(backbone)
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r} (known: {', '.join(HEADS)})")
    if pretrained:
        path = weights_path(backbone, pretrained_dir)
        try:
            body = spec.build(path)
        except Exception as e:  # torch and timm raise many types for a foreign or truncated file
            raise RuntimeError(f"{path}: cannot be loaded as the ImageNet weights of {backbone}: {e}") from e
    else:
        body = spec.build()
    if backbone.startswith(TIMM):
        num_features = body.num_features  # channels of forward_features (timm >= 1.0)
        body.reset_classifier(0)  # timm's classifier may be nested or several layers
    else:
        num_features = _get(body, spec.classifier).in_features
        delattr(body, spec.classifier)
    for name in spec.unused:
        delattr(body, name)
    # Structural, pretrained or not, so that a checkpoint's keys (a folded conv gains a bias) never depend on it.
    _set(body, spec.first_conv, fold_input(_get(body, spec.first_conv), spec.input_space))
    adapt_input(body, spec.first_conv, in_channels)
    return Classifier(body, spec.features, HEADS[head](num_features, num_classes, head_hidden, dropout))
