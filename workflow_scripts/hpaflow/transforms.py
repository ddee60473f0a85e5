"""Colour composition, augmentation and dihedral (TTA) views: pure numpy/cv2 on (H, W, C) arrays."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

# RGBY planes -> model input channels, as float32 in [0, 1].
COLOR_MODES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    # The seed's composition: protein in the first channel, references averaged with yellow (ER).
    "gyb": lambda x: np.stack([x[..., 1], (x[..., 0] + x[..., 3]) / 2, (x[..., 2] + x[..., 3]) / 2], -1),
    "rgb": lambda x: x[..., :3],
    "rgby": lambda x: x,
}
CHANNELS = {"gyb": 3, "rgb": 3, "rgby": 4}
# ImageNet statistics for the three pretrained input filters; the 4th (yellow) filter starts as
# a copy of the red one (models.py), so it takes red's statistics.
MEAN = np.array([0.485, 0.456, 0.406, 0.485], np.float32)
STD = np.array([0.229, 0.224, 0.225, 0.229], np.float32)


def compose(rgby: np.ndarray, mode: str) -> np.ndarray:
    """uint8 (H, W, 4) RGBY -> float32 (H, W, C) in [0, 1] for colour mode `mode`."""
    return COLOR_MODES[mode](rgby.astype(np.float32) / 255.0)


def normalize(x: np.ndarray) -> np.ndarray:
    c = x.shape[-1]
    return (x - MEAN[:c]) / STD[:c]


def resize(x: np.ndarray, size: int) -> np.ndarray:
    if x.shape[0] == size:
        return x
    interp = cv2.INTER_AREA if size < x.shape[0] else cv2.INTER_LINEAR
    out = cv2.resize(x, (size, size), interpolation=interp)
    return out if out.ndim == 3 else out[..., None]


def dihedral(x: np.ndarray, view: int) -> np.ndarray:
    """View 0-7 of the dihedral group on axes (0, 1): flip left-right if view >= 4, then rotate 90 x (view % 4)."""
    if view >= 4:
        x = x[:, ::-1]
    return np.rot90(x, view % 4, axes=(0, 1))


def augment(x: np.ndarray, rng: np.random.Generator, affine: bool = True) -> np.ndarray:
    """Random dihedral view, small affine (rotation +-15 deg, scale 0.9-1.1, shift +-5%),
    brightness (+-0.05) and contrast (x0.85-1.15) jitter. x: float32 (H, W, C) in [0, 1]."""
    x = dihedral(x, int(rng.integers(8)))
    if affine:
        h, w = x.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-15, 15), rng.uniform(0.9, 1.1))
        m[:, 2] += rng.uniform(-0.05, 0.05, 2) * (w, h)
        c = x.shape[2]
        x = cv2.warpAffine(np.ascontiguousarray(x), m, (w, h), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT_101)
        if x.ndim == 2:
            x = x[..., None]
        assert x.shape[2] == c
    x = x * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def combine(views: np.ndarray, how: str) -> np.ndarray:
    """Combine per-view probabilities (V, N, K) -> (N, K) by `mean` or `max`."""
    if how == "mean":
        return views.mean(0)
    if how == "max":
        return views.max(0)
    raise ValueError(f"unknown combine {how!r} (mean or max)")
