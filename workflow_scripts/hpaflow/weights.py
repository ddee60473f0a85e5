"""ImageNet weight files of each backbone, under their torch hub file names in `pretrained_dir`.

Standard library only: the planning step (rules/common.smk) makes the file an input of the train job
(its content decides the model, not the folder's name), and the launcher env has no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WeightFiles:
    files: tuple[str, ...]  # accepted torch hub file names, preferred first
    url: str  # where the first file comes from


# One entry per backbone of hpaflow.models.BACKBONES (tests check they agree).
WEIGHTS: dict[str, WeightFiles] = {
    "resnet18": WeightFiles(
        ("resnet18-5c106cde.pth", "resnet18-f37072fd.pth"), "https://download.pytorch.org/models/resnet18-5c106cde.pth"
    ),
    "resnet50": WeightFiles(
        ("resnet50-19c8e357.pth", "resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"),
        "https://download.pytorch.org/models/resnet50-19c8e357.pth",
    ),
    "se_resnet50": WeightFiles(
        ("se_resnet50-ce0d4300.pth",), "http://data.lip6.fr/cadene/pretrainedmodels/se_resnet50-ce0d4300.pth"
    ),
    "se_resnext50_32x4d": WeightFiles(
        ("se_resnext50_32x4d-a260b3a4.pth",),
        "http://data.lip6.fr/cadene/pretrainedmodels/se_resnext50_32x4d-a260b3a4.pth",
    ),
}


class WeightsError(FileNotFoundError):
    pass


def weights_path(backbone: str, pretrained_dir: str | Path) -> Path:
    """The first accepted hub file present in pretrained_dir; else an error naming what to put where."""
    spec = WEIGHTS[backbone]
    for name in spec.files:
        p = Path(pretrained_dir) / name
        if p.is_file():
            return p
    raise WeightsError(
        f"ImageNet weights for {backbone} not found: expected {Path(pretrained_dir) / spec.files[0]}"
        + (f" (or {', '.join(spec.files[1:])})" if len(spec.files) > 1 else "")
        + f". Download it on a machine with internet from {spec.url} into pretrained_dir "
        f"({pretrained_dir}), or set `pretrained: false` for this model."
    )
