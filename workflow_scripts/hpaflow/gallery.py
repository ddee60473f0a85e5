"""Fields of view as pictures: RGBY shown as RGB, and a captioned grid (classify's gallery, the package's cover)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import h5py
import hdf5plugin  # noqa: F401  registers the shard codecs' HDF5 filters (shards.COMPRESSIONS)
import numpy as np

from . import h5names as h5n
from .files import atomic_path


def shard_images(shard_files: Sequence[str | Path], ids: Sequence[str]) -> list[np.ndarray]:
    """The uint8 RGBY image of each Id (its first row, for a tiled image) from the shards."""
    where = {}
    for f in shard_files:
        with h5py.File(f, "r") as h5:
            for row, i in enumerate(h5[h5n.IDS].asstr()[...]):
                where.setdefault(i, (f, row))
    out = []
    for i in ids:
        f, row = where[i]
        with h5py.File(f, "r") as h5:
            out.append(h5[h5n.IMAGES][row])
    return out


def display_rgb(rgby: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 4) RGBY -> uint8 (..., H, W, 3) RGB as the HPA shows fields: yellow (ER) added
    half to red and half to green, so it looks yellow; clipped at 255."""
    f = rgby.astype(np.float32)
    r, g, b, y = (f[..., k] for k in range(4))
    return np.clip(np.stack([r + y / 2, g + y / 2, b], -1), 0, 255).astype(np.uint8)


def captioned_grid(
    images: Sequence[np.ndarray], captions: Sequence[Sequence[str]], tile: int = 256, cols: int = 4, lines: int = 4
) -> np.ndarray:
    """RGBY fields as one RGB picture: each resized to `tile` px with up to `lines` caption lines below
    (the rest summarised as `+k more`)."""
    if not images:
        raise ValueError("no images to show")
    font, scale, line_h = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 16
    cell_h = tile + (6 + lines * line_h if lines else 0)
    cols = min(cols, len(images))
    rows = -(-len(images) // cols)
    out = np.full((rows * cell_h, cols * tile, 3), 255, np.uint8)
    for k, (rgby, caption) in enumerate(zip(images, captions)):
        y0, x0 = (k // cols) * cell_h, (k % cols) * tile
        out[y0 : y0 + tile, x0 : x0 + tile] = cv2.resize(display_rgb(rgby), (tile, tile), interpolation=cv2.INTER_AREA)
        shown = list(caption[:lines])
        if len(caption) > lines:
            shown[-1] = f"+{len(caption) - lines + 1} more"
        for i, text in enumerate(shown):
            base = (x0 + 4, y0 + tile + 4 + (i + 1) * line_h - 4)
            cv2.putText(out, text, base, font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def write_png(rgb: np.ndarray, path: str | Path) -> None:
    """An RGB picture as PNG, written atomically."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"{path}: PNG encoding failed")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())
