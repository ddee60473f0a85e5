"""Batch preparation on the training device: colour composition, augmentation, normalisation.

Loader workers only read uint8 RGBY images and draw each sample's augmentation parameters
(`transforms.sample_params`); the floating-point work runs here on whole batches, on the GPU
when there is one, so the CPUs of a GPU node keep up with it (benchmarks/).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .transforms import COLOR_MATRICES, MEAN, STD


def dihedral_batch(x: torch.Tensor, view: int) -> torch.Tensor:
    """transforms.dihedral on a batch (B, C, H, W): flip W if view >= 4, then rot90 x (view % 4)."""
    if view >= 4:
        x = torch.flip(x, dims=(3,))
    return torch.rot90(x, view % 4, dims=(2, 3))


def check_crops(offsets, size: int | None) -> None:
    if (offsets is None) != (size is None):
        raise ValueError("crop offsets and crop_size go together: give both or neither")


def cut_crops(batch: torch.Tensor, offsets, size: int | None) -> list[torch.Tensor]:
    """The size x size squares of a batch (B, C, H, W) at each top-left corner (y, x) of offsets
    (predict.model_crops); offsets None: the whole batch. Predict and the exported graph cut crops here
    (Python ints: the graph slices statically)."""
    check_crops(offsets, size)
    if offsets is None:
        return [batch]
    return [batch[:, :, y : y + size, x : x + size] for y, x in ((int(a), int(b)) for a, b in offsets)]


def compose_batch(rgby: torch.Tensor, mode: str) -> torch.Tensor:
    """uint8 (B, 4, H, W) -> float (B, C, H, W) in [0, 1]."""
    m = torch.as_tensor(COLOR_MATRICES[mode], device=rgby.device)
    return torch.einsum("ck,bkhw->bchw", m, rgby.float() / 255.0)


def _imagenet(x: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    mean = torch.as_tensor(MEAN[:c], device=x.device).view(1, c, 1, 1)
    std = torch.as_tensor(STD[:c], device=x.device).view(1, c, 1, 1)
    return (x - mean) / std


# per_image: (x - mean) / (std + PER_IMAGE_EPS). One grey level on the [0, 1] scale: a constant channel (std 0)
# becomes 0, and a nearly blank one (a few noisy pixels) is not blown up to huge values.
PER_IMAGE_EPS = 1 / 255


def _per_image(x: torch.Tensor) -> torch.Tensor:
    # Written out (population std, no torch.std) so that the exported graph computes the very same ops.
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True).sqrt()
    return (x - mean) / (std + PER_IMAGE_EPS)


# models[].normalize -> float (B, C, H, W) in [0, 1] -> model input; the schema's enum is these keys.
NORMALIZERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "imagenet": _imagenet,  # ImageNet mean and std per channel (transforms.MEAN, STD)
    "per_image": _per_image,  # each image's own per-channel mean and std over its pixels
}


def normalize_batch(x: torch.Tensor, mode: str = "imagenet") -> torch.Tensor:
    """Normalise a float batch (B, C, H, W) by `mode` (NORMALIZERS)."""
    if mode not in NORMALIZERS:
        raise ValueError(f"unknown normalize {mode!r} (one of {', '.join(NORMALIZERS)})")
    return NORMALIZERS[mode](x)


def augment_batch(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Apply each sample's parameters (B, 7) to x (B, C, H, W) in [0, 1] (see transforms.sample_params)."""
    p = params.to(x.device, torch.float32)
    views = p[:, 0].round().long()
    out = torch.empty_like(x)
    for v in views.unique().tolist():
        idx = views == v
        out[idx] = dihedral_batch(x[idx], v)
    angle, scale = p[:, 1] * (math.pi / 180), p[:, 2]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # Output -> input sampling grid in normalised coordinates; shifts are fractions of the side.
    theta = torch.stack([torch.stack([cos, -sin, 2 * p[:, 3]], 1), torch.stack([sin, cos, 2 * p[:, 4]], 1)], 1)
    if not torch.allclose(theta, torch.eye(2, 3, device=x.device).expand_as(theta)):
        grid = F.affine_grid(theta, list(out.shape), align_corners=False)
        out = F.grid_sample(out, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    out = out * p[:, 5].view(-1, 1, 1, 1) + p[:, 6].view(-1, 1, 1, 1)
    return out.clamp(0.0, 1.0)


def prepare_batch(
    rgby: torch.Tensor,
    mode: str,
    device: torch.device,
    params: torch.Tensor | None = None,
    normalize: str = "imagenet",
) -> torch.Tensor:
    """uint8 RGBY batch from the loader -> normalised model input on `device` (NHWC on CUDA): colour `mode`,
    augmentation `params` (none: as is), then `normalize` (NORMALIZERS; per_image sees the augmented image)."""
    x = compose_batch(rgby.to(device, non_blocking=True), mode)
    if params is not None:
        x = augment_batch(x, params)
    x = normalize_batch(x, normalize)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x
