"""Models: ImageNet weights read from pretrained_dir under hub names, the input convention folded into the
first convolution, input channels adapted, any input size, the heads, ONNX export."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hpaflow.models import (
    BACKBONES,
    HEADS,
    ConcatPool,
    EvenMaxPool,
    WeightsError,
    backbone_spec,
    build_model,
    fold_input,
)
from hpaflow.weights import MIN_SIDE, WEIGHTS, weight_files

TIMM = "timm/resnet10t"  # a small timm model (ImageNet statistics)
TIMM_HALF = "timm/mobilenetv4_conv_small_050.e3000_r224_in1k"  # a timm tag trained on (v - 0.5) / 0.5
# Smallest input side each works at (stride-32 bodies down to 1 x 1 maps; DenseNet's unpadded 2 x 2 average
# pools after its stem need 29; Inception v3's unpadded stem and grid reductions 75), and a larger, odd one.
# The smallest is weights.MIN_SIDE's (the config check's): this test measures it.
SIZES = {name: (MIN_SIDE.get(name, 16), 77) for name in [*BACKBONES, TIMM]} | {"inception_v3": (75, 107)}
OUR_MEAN, OUR_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # torchvision's ImageNet statistics


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Big models on a shared CPU: one thread for the whole module (conftest)."""


def their_input(backbone: str, x: torch.Tensor) -> torch.Tensor:
    """Our model-space input (ImageNet-normalised RGB) as each backbone's ImageNet weights were trained on it,
    from the sources' pretrained settings: back to v in [0, 1], then their convention."""
    v = x * torch.tensor(OUR_STD).view(1, 3, 1, 1) + torch.tensor(OUR_MEAN).view(1, 3, 1, 1)
    if backbone == "bninception":  # pretrainedmodels: BGR, 0-255, mean [104, 117, 128], std 1
        return 255 * v.flip(1) - torch.tensor([104.0, 117.0, 128.0]).view(1, 3, 1, 1)
    if backbone in ("xception", "inception_v3", TIMM_HALF):  # mean = std = 0.5
        return (v - 0.5) / 0.5
    return x  # torchvision's and the SENets' statistics are ours


def hub_file(backbone: str, folder) -> object:
    return folder / weight_files(backbone).files[0]


def imagenet_like_state(backbone: str, seed: int) -> dict:
    """A state dict with the keys and shapes of the backbone's ImageNet file, random values (first conv at
    the scale of real ones); densenets' under the files' pre-0.4 names without num_batches_tracked."""
    state = backbone_spec(backbone).build().state_dict()
    g = torch.Generator().manual_seed(seed)
    out = {k: 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in state.items()}
    out[first_conv_key(backbone)] *= 0.1
    for k in out:
        if k.endswith("running_var"):  # a variance: positive
            out[k] = out[k].abs() + 0.5
    if backbone.startswith("densenet"):
        old = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in out.items()}
        out = {k: v for k, v in old.items() if not k.endswith("num_batches_tracked")}
        assert "features.denseblock1.denselayer1.norm.1.weight" in out
    return out


def first_conv_key(backbone: str) -> str:
    return backbone_spec(backbone).first_conv + ".weight"


def save(state: dict, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


@pytest.mark.parametrize("backbone", [*BACKBONES, TIMM])
def test_weights_load_from_hub_file_input_is_folded_and_adapted_any_size(tmp_path, backbone):
    spec = backbone_spec(backbone)
    state = imagenet_like_state(backbone, 1)
    save(state, hub_file(backbone, tmp_path))
    model = build_model(backbone, 4, pretrained=True, pretrained_dir=tmp_path).eval()
    got = model.body.state_dict()
    conv = spec.first_conv
    dropped = (spec.classifier, *spec.unused)
    for k, v in state.items():
        k = re.sub(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.", r"\1\2.", k)  # torchvision's new names
        if k.startswith(conv + "."):
            continue
        if k.split(".")[0] in dropped:
            assert k not in got, k
        else:
            assert torch.equal(got[k], v), k
    assert model.head.fc.weight.shape[0] == 28

    # The first conv reads our input as the original read theirs (valid positions); Y copies the red filter.
    w, b = got[conv + ".weight"], got.get(conv + ".bias")
    assert w.shape[1] == 4 and torch.equal(w[:, 3], w[:, 0])
    w0, b0 = state[conv + ".weight"], state.get(conv + ".bias")
    x = torch.randn(1, 3, 9, 9, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(F.conv2d(x, w[:, :3], b), F.conv2d(their_input(backbone, x), w0, b0), rtol=0, atol=1e-4)

    # What predict builds (not pretrained) takes what training saved (folded, so with a bias) strictly.
    build_model(backbone, 4).load_state_dict(model.state_dict())
    # No fixed-size pooling left (the SENets' and BN-Inception's AvgPool2d(7)): the head pools.
    assert not [m for m in model.body.modules() if isinstance(m, torch.nn.AvgPool2d) and m.kernel_size == 7]
    with torch.no_grad():
        for size in SIZES[backbone]:
            assert model(torch.zeros(2, 4, size, size)).shape == (2, 28), size
        # Each of these ends in a ReLU before its pooling (xception's and densenet's outside .features).
        assert model.features(model.body, torch.randn(2, 4, 77, 77)).min() >= 0
        if SIZES[backbone][0] > 16:  # the smallest indeed
            with pytest.raises(RuntimeError):
                model(torch.zeros(2, 4, SIZES[backbone][0] - 1, SIZES[backbone][0] - 1))


@pytest.mark.parametrize("backbone", ["bninception", "xception", "inception_v3", TIMM_HALF, "resnet18"])
def test_fold_gives_on_our_input_what_the_original_gives_on_theirs(backbone):
    """The conversion each backbone declares is its weights' (their_input: from the sources' settings)."""
    g = torch.Generator().manual_seed(3)
    conv = torch.nn.Conv2d(3, 5, 3, bias=backbone == "bninception")
    with torch.no_grad():
        conv.weight.copy_(0.01 * torch.randn(conv.weight.shape, generator=g))
        if conv.bias is not None:
            conv.bias.copy_(torch.randn(5, generator=g))
    folded = fold_input(conv, backbone_spec(backbone).input_space)
    x = torch.randn(2, 3, 12, 12, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), conv(their_input(backbone, x)), rtol=0, atol=1e-4)
    assert (folded is conv) == (backbone == "resnet18")  # ours: left as it is (no bias added)


def test_bninception_grid_reduction_pools_as_before_on_even_sides_and_pads_odd_ones():
    pool = EvenMaxPool(torch.nn.MaxPool2d((3, 3), stride=(2, 2), ceil_mode=True))
    # Max of each 3 x 3 window from (2i, 2j): its bottom-right pixel, clipped to the image (or the padding row).
    assert pool(torch.arange(16.0).view(1, 1, 4, 4)).tolist() == [[[[10.0, 11.0], [14.0, 15.0]]]]
    odd = [[12.0, 14.0, 14.0], [22.0, 24.0, 24.0], [22.0, 24.0, 24.0]]  # 3 = what the stride-2 convs give on 5
    assert pool(torch.arange(25.0).view(1, 1, 5, 5)).tolist() == [[odd]]


def test_second_hub_name_accepted(tmp_path):
    torch.save(imagenet_like_state("resnet18", 2), tmp_path / "resnet18-f37072fd.pth")
    build_model("resnet18", 3, pretrained=True, pretrained_dir=tmp_path)


def test_timm_weights_also_as_pytorch_model_bin(tmp_path):
    state = imagenet_like_state(TIMM, 2)
    save(state, tmp_path / TIMM / "pytorch_model.bin")
    model = build_model(TIMM, 3, pretrained=True, pretrained_dir=tmp_path)
    assert torch.equal(model.body.state_dict()["conv1.0.weight"], state["conv1.0.weight"])


def test_missing_weights_name_path_and_source(tmp_path):
    with pytest.raises(WeightsError) as e:
        build_model("se_resnet50", 3, pretrained=True, pretrained_dir=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "se_resnet50-ce0d4300.pth") in msg
    assert "http://data.lip6.fr/cadene/pretrainedmodels/se_resnet50-ce0d4300.pth" in msg
    assert "pretrained: false" in msg


def test_missing_timm_weights_name_the_hub_repo_and_the_download_command(tmp_path):
    with pytest.raises(WeightsError) as e:
        build_model("timm/resnet50.a1_in1k", 3, pretrained=True, pretrained_dir=tmp_path)
    msg = str(e.value)
    assert (
        f"expected {tmp_path}/timm/resnet50.a1_in1k/model.safetensors (or timm/resnet50.a1_in1k/pytorch_model.bin)"
        in msg
    )
    assert "https://huggingface.co/timm/resnet50.a1_in1k" in msg
    assert f"hf download timm/resnet50.a1_in1k --local-dir {tmp_path}/timm/resnet50.a1_in1k" in msg


@pytest.mark.parametrize(
    "backbone,other",
    [("resnet50", "resnet18"), ("xception", "bninception"), ("densenet169", "densenet121"), (TIMM, "resnet18")],
)
def test_weights_of_another_architecture_rejected_with_the_file_named(tmp_path, backbone, other):
    path = hub_file(backbone, tmp_path)
    save(imagenet_like_state(other, 3), path)
    with pytest.raises(
        RuntimeError, match=re.escape(f"{path}: cannot be loaded as the ImageNet weights of {backbone}")
    ):
        build_model(backbone, 3, pretrained=True, pretrained_dir=tmp_path)


def test_unknown_backbone_and_head():
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        build_model("vgg")
    with pytest.raises(ValueError, match="timm .* has no model 'no_such_net'"):
        build_model("timm/no_such_net")
    with pytest.raises(ValueError, match="unknown head 'mlp'"):
        build_model("resnet18", head="mlp")


def test_every_backbone_has_its_weight_files():
    """The planning step reads weights.WEIGHTS (no torch there): one entry per backbone."""
    assert list(WEIGHTS) == list(BACKBONES)
    assert list(HEADS) == ["linear", "concat_pool"]


# Two channels' 2 x 2 maps: means 3 and -1, maxima 6 and 2.
FMAP = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]], [[-1.0, -5.0], [0.0, 2.0]]]])


def test_concat_pool_is_each_channels_mean_then_each_channels_max():
    assert ConcatPool()(FMAP).tolist() == [[3.0, -1.0, 6.0, 2.0]]


def test_concat_pool_head_known_answer():
    """pool -> BN -> dropout -> Linear -> ReLU -> BN -> dropout -> Linear, worked by hand in eval mode."""
    head = HEADS["concat_pool"](2, 1, 2, 0.25).eval()
    with torch.no_grad():
        head.bn1.eps = head.bn2.eps = 0.0
        head.bn1.running_mean.copy_(torch.tensor([1.0, 1.0, 2.0, 2.0]))  # [3, -1, 6, 2] -> [1, -1, 2, 0]
        head.bn1.running_var.copy_(torch.tensor([4.0, 4.0, 4.0, 4.0]))
        head.fc1.weight.copy_(torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]]))  # -> [3, -1]
        head.fc1.bias.zero_()
        head.bn2.running_mean.copy_(torch.tensor([1.0, 1.0]))  # relu [3, 0] -> [1, -0.5]
        head.bn2.running_var.copy_(torch.tensor([4.0, 4.0]))
        head.fc.weight.copy_(torch.tensor([[1.0, 1.0]]))
        head.fc.bias.copy_(torch.tensor([0.25]))
        assert head(FMAP).tolist() == [[0.75]]
    assert [m.p for m in head.modules() if isinstance(m, torch.nn.Dropout)] == [0.25, 0.25]


def test_linear_head_known_answer():
    head = HEADS["linear"](2, 1, 512, 0.5)
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor([[1.0, 2.0]]))
        head.fc.bias.copy_(torch.tensor([0.5]))
        assert head(FMAP).tolist() == [[3.0 - 2.0 + 0.5]]


@pytest.mark.parametrize("head", ["linear", "concat_pool"])
def test_build_model_takes_the_head_and_its_settings(head):
    model = build_model("resnet18", 4, head=head, head_hidden=7, dropout=0.1).eval()
    fc = model.head.fc
    assert (fc.in_features, fc.out_features) == ((7, 28) if head == "concat_pool" else (512, 28))
    with torch.no_grad():
        assert model(torch.zeros(2, 4, 32, 32)).shape == (2, 28)


@pytest.mark.parametrize("backbone", ["densenet121", "xception"])
def test_onnx_export_agrees_with_torch(tmp_path, backbone):
    """The exporter the workflow uses (dynamo, hpaflow.export.OPSET) takes the bodies and the heads."""
    import onnxruntime as ort

    from hpaflow.export import OPSET

    model = build_model(backbone, 4, head="concat_pool").eval()
    x = torch.randn(2, 4, 64, 64, generator=torch.Generator().manual_seed(4))
    path = tmp_path / "m.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=True,
            opset_version=OPSET,
            input_names=["x"],
            external_data=False,
            verbose=False,
        )
        expected = model(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4
