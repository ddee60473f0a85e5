"""ImageNet weight files of each backbone, under their torch hub file names in `pretrained_dir`.

Standard library only: the planning step (rules/common.smk) makes the file an input of the train job
(its content decides the model, not the folder's name), and the launcher env has no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TORCHVISION = "https://download.pytorch.org/models/"
CADENE = "http://data.lip6.fr/cadene/pretrainedmodels/"
TIMM = "timm/"  # backbone prefix: any timm model by name, weights from its Hugging Face hub repo timm/<name>


@dataclass(frozen=True)
class WeightFiles:
    files: tuple[str, ...]  # accepted file names (relative to pretrained_dir), preferred first
    url: str  # where the first file comes from


# One entry per backbone of hpaflow.models.BACKBONES (tests check they agree); file names and URLs as in
# torchvision's and pretrainedmodels' sources (the later second names: what newer torchvision downloads).
WEIGHTS: dict[str, WeightFiles] = {
    "resnet18": WeightFiles(("resnet18-5c106cde.pth", "resnet18-f37072fd.pth"), TORCHVISION + "resnet18-5c106cde.pth"),
    "resnet34": WeightFiles(("resnet34-b627a593.pth", "resnet34-333f7ec4.pth"), TORCHVISION + "resnet34-b627a593.pth"),
    "resnet50": WeightFiles(
        ("resnet50-19c8e357.pth", "resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"),
        TORCHVISION + "resnet50-19c8e357.pth",
    ),
    "se_resnet50": WeightFiles(("se_resnet50-ce0d4300.pth",), CADENE + "se_resnet50-ce0d4300.pth"),
    "se_resnext50_32x4d": WeightFiles(("se_resnext50_32x4d-a260b3a4.pth",), CADENE + "se_resnext50_32x4d-a260b3a4.pth"),
    "densenet121": WeightFiles(("densenet121-a639ec97.pth",), TORCHVISION + "densenet121-a639ec97.pth"),
    "densenet169": WeightFiles(("densenet169-b2777c0a.pth",), TORCHVISION + "densenet169-b2777c0a.pth"),
    "inception_v3": WeightFiles(
        ("inception_v3_google-0cc3c7bd.pth", "inception_v3_google-1a9a5a14.pth"),
        TORCHVISION + "inception_v3_google-0cc3c7bd.pth",
    ),
    "xception": WeightFiles(("xception-43020ad28.pth",), CADENE + "xception-43020ad28.pth"),
    "bninception": WeightFiles(("bn_inception-52deb4733.pth",), CADENE + "bn_inception-52deb4733.pth"),
}


# The smallest input side each backbone takes (its strides and unpadded pools leave no feature map below
# it); others take the schema's minimum, 16 px. Checked when the config is read (config.check_model),
# measured by tests/unit/test_models.py.
MIN_SIDE: dict[str, int] = {"densenet121": 29, "densenet169": 29, "inception_v3": 75}


class WeightsError(FileNotFoundError):
    pass


def weight_files(backbone: str) -> WeightFiles:
    """A backbone's accepted files: WEIGHTS, or for timm/<name> its hub repo's weights in timm/<name>/."""
    if backbone.startswith(TIMM):
        repo = backbone  # the Hugging Face hub repo is named as the backbone: timm/<name>
        return WeightFiles((f"{repo}/model.safetensors", f"{repo}/pytorch_model.bin"), f"https://huggingface.co/{repo}")
    if backbone not in WEIGHTS:
        raise ValueError(f"unknown backbone {backbone!r} (known: {', '.join(WEIGHTS)}, or timm/<name>)")
    return WEIGHTS[backbone]


def weights_path(backbone: str, pretrained_dir: str | Path) -> Path:
    """The first accepted file present in pretrained_dir; else an error naming what to put where."""
    spec = weight_files(backbone)
    for name in spec.files:
        p = Path(pretrained_dir) / name
        if p.is_file():
            return p
    expected = f"ImageNet weights for {backbone} not found: expected {Path(pretrained_dir) / spec.files[0]}" + (
        f" (or {', '.join(spec.files[1:])})" if len(spec.files) > 1 else ""
    )
    if backbone.startswith(TIMM):
        local = Path(pretrained_dir) / backbone
        how = (
            f". Download the hub repo {spec.url} on a machine with internet: `hf download {backbone} --local-dir "
            f"{local}` (older huggingface_hub: `huggingface-cli download`); timm's hub repos carry the pretrained "
            "tag in their name (e.g. timm/resnet50.a1_in1k), so name the backbone the same way"
        )
    else:
        how = f". Download it on a machine with internet from {spec.url} into pretrained_dir ({pretrained_dir})"
    raise WeightsError(expected + how + ", or set `pretrained: false` for this model.")
