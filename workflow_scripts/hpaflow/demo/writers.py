"""Ids and files in the layouts of the three sources: Kaggle PNGs, full-size TIFFs, HPAv18 RGB JPEGs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import tifffile

from ..layout import COLORS, JPEG_PLANES


def kaggle_id(rng: np.random.Generator) -> str:
    """An Id shaped like the competition's (UUID1-like, `...-11e8-...`)."""
    h = rng.bytes(14).hex()
    return f"{h[:8]}-{h[8:12]}-11e8-{h[12:16]}-{h[16:28]}"


def hpav18_id(rng: np.random.Generator, antibody: int | None = None) -> str:
    """An Id shaped like HPAv18's `{antibody}_{plate}_{well}_{field}` (a random antibody unless given)."""
    well = f"{'ABCDEFGH'[rng.integers(8)]}{rng.integers(1, 13)}"
    ab = rng.integers(1, 60000) if antibody is None else antibody
    return f"{ab}_{rng.integers(1, 2000)}_{well}_{rng.integers(1, 5)}"


def write_png(out_dir: Path, image_id: str, rgby: np.ndarray) -> None:
    for c, color in enumerate(COLORS):
        cv2.imwrite(str(out_dir / f"{image_id}_{color}.png"), rgby[:, :, c])


def write_tiff(out_dir: Path, image_id: str, rgby: np.ndarray, uint16: bool) -> None:
    for c, color in enumerate(COLORS):
        plane = rgby[:, :, c]
        # v * 257 spans the full uint16 range and maps back exactly (io.uint16_to_uint8).
        tifffile.imwrite(out_dir / f"{image_id}_{color}.tif", plane.astype(np.uint16) * 257 if uint16 else plane)


def write_hpav18_jpeg(out_dir: Path, image_id: str, rgby: np.ndarray, quality: int = 95) -> None:
    for c, color in enumerate(COLORS):
        bgr = np.zeros(rgby.shape[:2] + (3,), np.uint8)
        for plane in JPEG_PLANES[color]:
            bgr[:, :, plane] = rgby[:, :, c]
        cv2.imwrite(str(out_dir / f"{image_id}_{color}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
