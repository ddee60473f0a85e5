"""Colour modes, normalisation, resizing, crop positions and the per-sample augmentation parameters.

The colour maps and statistics here are applied on the training device by `augment` (torch, whole
batches, dihedral views included); this module draws each sample's random parameters on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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


def random_crop_offset(side: int, crop: int, rng: np.random.Generator) -> tuple[int, int]:
    """A training crop's top-left corner (y, x), uniform over the crop x crop squares of a side x side image."""
    _check_crop(side, crop)
    y, x = rng.integers(0, side - crop, size=2, endpoint=True)
    return int(y), int(x)


def _check_crop(side: int, crop: int) -> None:
    if not 0 < crop <= side:
        raise ValueError(f"crop_size {crop} must be between 1 and the image side {side}")


def _round_half_down(p: np.ndarray, q: int) -> np.ndarray:
    """p / q rounded to the nearest integer, ties down, in integers (no float ties to break by platform)."""
    return (2 * p + q - 1) // (2 * q)


def _fixed(side: int, crop: int, n: int, seed: int) -> np.ndarray:
    """n entries spread over a g x g grid (g = ceil(sqrt n)) of positions spread evenly over [0, side - crop] per
    axis, row-major; entries round(linspace(0, g*g - 1, n)). Ties round down, so the centre of a 3 x 3 grid is
    the centre (side - crop) // 2 that n = 1 takes."""
    g, span = math.isqrt(n - 1) + 1, side - crop  # isqrt(n - 1) + 1 == ceil(sqrt(n)), exactly
    k = np.arange(g)
    axis = np.array([span // 2]) if g == 1 else _round_half_down(k * span, g - 1)
    grid = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)  # (y, x), row-major
    picks = np.zeros(1, np.int64) if n == 1 else _round_half_down(np.arange(n) * (g * g - 1), n - 1)
    return grid[picks]


def _seeded(side: int, crop: int, n: int, seed: int) -> np.ndarray:
    """n positions drawn uniformly from [0, side - crop] per axis, from (seed, side, crop, n): every image,
    predict job and export get the same ones."""
    return np.random.default_rng([seed, side, crop, n]).integers(0, side - crop, size=(n, 2), endpoint=True)


# predict.crop_placement -> (side, crop, n, seed) -> (n, 2) top-left corners (y, x); the schema's enum is these keys.
CROP_PLACEMENTS: dict[str, Callable[[int, int, int, int], np.ndarray]] = {"fixed": _fixed, "seeded": _seeded}


def crop_offsets(side: int, crop: int, n: int, placement: str, seed: int) -> np.ndarray:
    """Top-left corners (y, x) of the n crop x crop squares that predict (and the exported graph) score in
    a side x side image: int64 (n, 2), the same for every image. fixed: 1 = the centre, 4 = the corners,
    5 = corners and centre, 9 = the 3 x 3 grid; seeded: n random positions from `seed`."""
    if placement not in CROP_PLACEMENTS:
        raise ValueError(f"unknown crop_placement {placement!r} (one of {', '.join(CROP_PLACEMENTS)})")
    if n < 1:
        raise ValueError(f"crops: {n} crops asked for; at least 1 (0 scores the whole image, without crops)")
    _check_crop(side, crop)
    return CROP_PLACEMENTS[placement](side, crop, n, seed).astype(np.int64)
