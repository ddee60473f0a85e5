"""Backbones: ImageNet weights read from pretrained_dir under hub names, input/head adaptation."""

from __future__ import annotations

import re

import pytest
import torch

from hpaflow.models import BACKBONES, WeightsError, build_model
from hpaflow.weights import WEIGHTS


def imagenet_like_state(backbone: str, seed: int) -> dict:
    """A state dict with the exact keys and shapes of the backbone's ImageNet checkpoint, random values."""
    torch.manual_seed(seed)
    state = BACKBONES[backbone].build().state_dict()
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in state.items()}


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_weights_load_from_hub_file_and_input_is_adapted(tmp_path, backbone):
    spec = BACKBONES[backbone]
    state = imagenet_like_state(backbone, 1)
    torch.save(state, tmp_path / WEIGHTS[backbone].files[0])
    conv_key = f"{spec.first_conv}.weight"
    head_key = f"{spec.head}.weight"
    assert state[head_key].shape[0] == 1000

    m3 = build_model(backbone, 3, pretrained=True, pretrained_dir=tmp_path)
    got = m3.state_dict()
    for k, v in state.items():
        if not k.startswith(spec.head + "."):
            assert torch.equal(got[k], v), k
    assert got[head_key].shape == (28, state[head_key].shape[1])

    m4 = build_model(backbone, 4, pretrained=True, pretrained_dir=tmp_path)
    w = m4.state_dict()[conv_key]
    assert w.shape[1] == 4
    assert torch.equal(w[:, :3], state[conv_key]) and torch.equal(w[:, 3], state[conv_key][:, 0])

    # Any input size works (the SENets' AvgPool2d(7) is replaced by adaptive pooling).
    m4.eval()
    with torch.no_grad():
        assert m4(torch.zeros(2, 4, 64, 64)).shape == (2, 28)


def test_second_hub_name_accepted(tmp_path):
    torch.save(imagenet_like_state("resnet18", 2), tmp_path / "resnet18-f37072fd.pth")
    build_model("resnet18", 3, pretrained=True, pretrained_dir=tmp_path)


def test_missing_weights_name_path_and_source(tmp_path):
    with pytest.raises(WeightsError) as e:
        build_model("se_resnet50", 3, pretrained=True, pretrained_dir=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "se_resnet50-ce0d4300.pth") in msg
    assert "http://data.lip6.fr/cadene/pretrainedmodels/se_resnet50-ce0d4300.pth" in msg
    assert "pretrained: false" in msg


def test_weights_of_another_architecture_rejected(tmp_path):
    torch.save(imagenet_like_state("resnet18", 3), tmp_path / "resnet50-19c8e357.pth")
    with pytest.raises(RuntimeError, match=re.escape("Error(s) in loading state_dict")):
        build_model("resnet50", 3, pretrained=True, pretrained_dir=tmp_path)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        build_model("vgg")


def test_every_backbone_has_its_weight_files():
    """The planning step reads weights.WEIGHTS (no torch there): one entry per backbone."""
    assert list(WEIGHTS) == list(BACKBONES)
