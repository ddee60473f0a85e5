"""Cell geometry of a synthetic field and its label-independent channels (nuclei, microtubules, ER)."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np


@dataclass
class Field:
    """Geometry and label-independent channels of one synthetic field of view."""

    size: int
    rng: np.random.Generator
    cell_map: np.ndarray  # int32, 0 = background, i + 1 = cell i
    nuc_map: np.ndarray  # int32, likewise for nuclei
    centers: list[tuple[float, float]]  # nucleus centre (x, y) of each cell
    nuc_axes: list[tuple[float, float, float]]  # nucleus semi-axes and angle
    nucleoli: np.ndarray  # float32 blobs inside nuclei
    nucleoli_centers: list[tuple[int, int]]
    red: np.ndarray  # float32 0..1
    yellow: np.ndarray
    blue: np.ndarray
    tips: list[tuple[int, int]] = field(default_factory=list)

    @property
    def n_cells(self) -> int:
        return len(self.centers)

    @property
    def unit(self) -> float:
        """Pixels per unit at the 128 px reference scale: patterns keep their look at any size."""
        return self.size / 128.0

    def cyto(self, i: int | None = None) -> np.ndarray:
        if i is None:
            return (self.cell_map > 0) & (self.nuc_map == 0)
        return (self.cell_map == i + 1) & (self.nuc_map == 0)

    def nuc(self, i: int | None = None) -> np.ndarray:
        return self.nuc_map > 0 if i is None else self.nuc_map == i + 1

    def points(self, mask: np.ndarray, n: int) -> np.ndarray:
        """n random (x, y) pixel positions inside mask (none if the mask is empty)."""
        ys, xs = np.nonzero(mask)
        if len(xs) == 0 or n <= 0:
            return np.zeros((0, 2), np.int32)
        pick = self.rng.integers(0, len(xs), n)
        return np.stack([xs[pick], ys[pick]], axis=1).astype(np.int32)


def _blank(s: int) -> np.ndarray:
    return np.zeros((s, s), np.float32)


def _smooth_noise(rng: np.random.Generator, s: int, sigma: float) -> np.ndarray:
    n = cv2.GaussianBlur(rng.random((s, s), dtype=np.float32), (0, 0), sigma)
    n -= n.min()
    return n / max(float(n.max()), 1e-6)


def _ellipse_mask(s: int, center, axes, angle) -> np.ndarray:
    m = np.zeros((s, s), np.uint8)
    c = (int(round(center[0])), int(round(center[1])))
    a = (max(1, int(round(axes[0]))), max(1, int(round(axes[1]))))
    cv2.ellipse(m, c, a, float(angle), 0, 360, 1, -1)
    return m.astype(bool)


def make_field(size: int, rng: np.random.Generator) -> Field:
    u = size / 128.0
    n_cells = int(rng.integers(3, 8))
    cell_map = np.zeros((size, size), np.int32)
    nuc_map = np.zeros((size, size), np.int32)
    centers, nuc_axes = [], []
    tries = 0
    # Give up on the rest after 4 tries per cell, but never leave the field empty.
    while len(centers) < n_cells and (tries < 4 * n_cells or not centers):
        tries += 1
        cx, cy = rng.uniform(0.12, 0.88, 2) * size
        ax, ay = rng.uniform(13, 22) * u, rng.uniform(10, 17) * u
        ang = rng.uniform(0, 180)
        full = _ellipse_mask(size, (cx, cy), (ax, ay), ang)
        # Cells may touch but not overlap: a new cell takes only free pixels.
        cell = full & (cell_map == 0)
        # Nucleus: off-centre, about half the cell, wholly inside the cell's free part.
        f = rng.uniform(0.42, 0.55)
        off = rng.uniform(-0.25, 0.25, 2) * (ax, ay)
        nx, ny = cx + off[0], cy + off[1]
        nax, nay, nang = ax * f, ay * f * rng.uniform(0.9, 1.2), ang + rng.normal(0, 15)
        nuc = _ellipse_mask(size, (nx, ny), (nax, nay), nang)
        if cell.sum() < 0.6 * full.sum() or (nuc & ~cell).any():
            continue
        i = len(centers)
        cell_map[cell] = i + 1
        nuc_map[nuc] = i + 1
        centers.append((nx, ny))
        nuc_axes.append((nax, nay, nang))
    n_cells = len(centers)
    # Nucleoli: 2-4 round blobs per nucleus (used by classes 0, 2, 3).
    nucleoli = _blank(size)
    nucleoli_centers = []
    for i in range(n_cells):
        for x, y in _points_in(rng, nuc_map == i + 1, int(rng.integers(2, 5)), erode=int(2 * u)):
            r = max(1, int(round(rng.uniform(1.8, 2.8) * u)))
            cv2.circle(nucleoli, (int(x), int(y)), r, 1.0, -1)
            nucleoli_centers.append((int(x), int(y)))
    nucleoli *= nuc_map > 0

    blue = (nuc_map > 0) * (0.55 + 0.45 * _smooth_noise(rng, size, 2 * u))
    blue = cv2.GaussianBlur(blue.astype(np.float32), (0, 0), 0.8 * u)

    # Red: microtubule filaments radiating from the nucleus to the cell edge.
    red = _blank(size)
    tips = []
    for i, (nx, ny) in enumerate(centers):
        cell = cell_map == i + 1
        for _ in range(int(rng.integers(10, 16))):
            theta = rng.uniform(0, 2 * np.pi)
            pts = []
            x, y, t = nx, ny, theta
            for _step in range(40):
                t += rng.normal(0, 0.08)
                x, y = x + np.cos(t) * u, y + np.sin(t) * u
                xi, yi = int(round(x)), int(round(y))
                if not (0 <= xi < size and 0 <= yi < size and cell[yi, xi]):
                    break
                pts.append((xi, yi))
            if len(pts) > 3:
                cv2.polylines(red, [np.array(pts, np.int32)], False, 1.0, 1)
                tips.append(pts[-1])
    red = cv2.GaussianBlur(red, (0, 0), 0.5 * u) * (cell_map > 0)
    red /= max(float(red.max()), 1e-6)

    # Yellow: reticular ER texture, densest around the nucleus.
    tex = _smooth_noise(rng, size, 1.2 * u)
    reticulum = np.clip(1.0 - np.abs(tex - 0.5) * 8.0, 0, 1)
    dist = cv2.distanceTransform((nuc_map == 0).astype(np.uint8), cv2.DIST_L2, 3)
    yellow = reticulum * np.exp(-dist / (10 * u)) * (cell_map > 0) * (nuc_map == 0)
    yellow = yellow.astype(np.float32) + 0.15 * (cell_map > 0)
    return Field(
        size,
        rng,
        cell_map,
        nuc_map,
        centers,
        nuc_axes,
        nucleoli,
        nucleoli_centers,
        red,
        yellow.astype(np.float32),
        blue.astype(np.float32),
        tips,
    )


def _points_in(rng, mask: np.ndarray, n: int, erode: int = 0) -> np.ndarray:
    if erode > 0:
        k = np.ones((2 * erode + 1, 2 * erode + 1), np.uint8)
        eroded = cv2.erode(mask.astype(np.uint8), k).astype(bool)
        if eroded.any():
            mask = eroded
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return np.zeros((0, 2), np.int32)
    pick = rng.integers(0, len(xs), n)
    return np.stack([xs[pick], ys[pick]], axis=1)
