"""Colour modes, normalisation, resizing and the per-sample augmentation parameters.

The colour maps and statistics here are applied on the training device by `augment` (torch, whole
batches, dihedral views included); this module draws each sample's random parameters on the CPU.
"""

from __future__ import annotations

import cv2
import numpy as np

# RGBY -> model input channels: each mode is a linear map, one row per output channel.
COLOR_MATRICES: dict[str, np.ndarray] = {
    # The seed's composition: protein first, the references averaged with yellow (ER).
    "gyb": np.array([[0, 1, 0, 0], [0.5, 0, 0, 0.5], [0, 0, 0.5, 0.5]], np.float32),
    "rgb": np.eye(4, dtype=np.float32)[:3],
    "rgby": np.eye(4, dtype=np.float32),
}
CHANNELS = {mode: len(m) for mode, m in COLOR_MATRICES.items()}
# ImageNet statistics for the three pretrained input filters; the 4th (yellow) filter starts as
# a copy of the red one (models.py), so it takes red's statistics.
MEAN = np.array([0.485, 0.456, 0.406, 0.485], np.float32)
STD = np.array([0.229, 0.224, 0.225, 0.229], np.float32)

# One row of augmentation parameters per sample: dihedral view (0-7), rotation (degrees),
# scale, shift x and y (fractions of the side), contrast factor, brightness offset.
IDENTITY = np.array([0, 0, 1, 0, 0, 1, 0], np.float32)


# Shard row -> model input (predict, training, classify); the exported preprocessing.json names them from here.
SHRINK, ENLARGE = cv2.INTER_AREA, cv2.INTER_LINEAR


def interpolation(side: int, size: int) -> int | None:
    """The cv2 interpolation `resize` uses from side to size px; None: no resize (same size)."""
    return None if side == size else SHRINK if size < side else ENLARGE


def resize(x: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) to (size, size, C): INTER_AREA to shrink, bilinear to enlarge."""
    interp = interpolation(x.shape[0], size)
    if interp is None:
        return x
    out = cv2.resize(x, (size, size), interpolation=interp)
    return out if out.ndim == 3 else out[..., None]


def sample_params(rng: np.random.Generator) -> np.ndarray:
    """Random augmentation of one sample: any dihedral view, rotation +-15 deg, scale 0.9-1.1,
    shift +-5%, contrast x0.85-1.15, brightness +-0.05."""
    return np.array(
        [
            rng.integers(8),
            rng.uniform(-15, 15),
            rng.uniform(0.9, 1.1),
            *rng.uniform(-0.05, 0.05, 2),
            rng.uniform(0.85, 1.15),
            rng.uniform(-0.05, 0.05),
        ],
        np.float32,
    )
