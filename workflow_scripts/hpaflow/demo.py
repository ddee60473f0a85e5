"""A synthetic, learnable, HPA-like demo set in the exact Kaggle layout (plus TIFF and HPAv18 JPEG variants).

Each field holds a few cells: blue nuclei, red microtubule filaments, yellow ER texture
(none depend on the label, as in real data) and, in green, the sum of one spatial
pattern per present class (`PATTERNS`, one documented function per class). Label sets
are drawn from the real competition's label-set frequencies (`label_sets.tsv`), so the
demo keeps the real imbalance and co-occurrence.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tifffile

from .files import atomic_path
from .labels import NUM_CLASSES, decode, encode
from .layout import COLORS
from .progress import Progress

log = logging.getLogger("hpaflow")
LABEL_SETS_TSV = Path(__file__).with_name("label_sets.tsv")


# ---------------------------------------------------------------- label sets
def count_label_sets(train_csv: str | Path) -> dict[str, int]:
    """How often each label set (sorted, space-separated) occurs in a competition train.csv."""
    df = pd.read_csv(train_csv, dtype=str)
    return dict(collections.Counter(" ".join(sorted(t.split(), key=int)) for t in df["Target"]))


def load_label_sets() -> tuple[list[list[int]], np.ndarray]:
    df = pd.read_csv(LABEL_SETS_TSV, sep="\t", comment="#", dtype={"labels": str})
    sets = [[int(k) for k in s.split()] for s in df["labels"]]
    return sets, df["count"].to_numpy(np.float64)


def sample_label_sets(n: int, rng: np.random.Generator, prior_power: float = 1.0) -> list[list[int]]:
    """Draw n label sets with probability proportional to count**prior_power.

    1.0 keeps the competition's distribution; 0.0 makes every observed set equally likely
    (a flatter prior for a quick smoke test).
    """
    sets, counts = load_label_sets()
    p = counts**prior_power
    idx = rng.choice(len(sets), size=n, p=p / p.sum())
    return [sets[i] for i in idx]


# ---------------------------------------------------------------- geometry
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
    return Field(size, rng, cell_map, nuc_map, centers, nuc_axes, nucleoli, nucleoli_centers,
                 red, yellow.astype(np.float32), blue.astype(np.float32), tips)


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


# ---------------------------------------------------------------- green patterns
def _dots(f: Field, pts, radius: float, ring: bool = False) -> np.ndarray:
    img = _blank(f.size)
    r = max(1, int(round(radius)))
    for x, y in pts:
        cv2.circle(img, (int(x), int(y)), r, 1.0, 1 if ring else -1)
    return img


def _edge(mask: np.ndarray, width: int) -> np.ndarray:
    k = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    m = mask.astype(np.uint8)
    return (m - cv2.erode(m, k)).astype(np.float32)


def _beside_nucleus(f: Field, i: int, gap: float) -> tuple[int, int]:
    """A point just outside nucleus i, on a random side."""
    nx, ny = f.centers[i]
    nax, nay, _ = f.nuc_axes[i]
    t = f.rng.uniform(0, 2 * np.pi)
    r = max(nax, nay) + gap
    return int(round(nx + r * np.cos(t))), int(round(ny + r * np.sin(t)))


def p_nucleoplasm(f: Field) -> np.ndarray:
    """0 Nucleoplasm: the nucleus filled, sparing the nucleoli."""
    return f.nuc() * (0.7 + 0.3 * _smooth_noise(f.rng, f.size, 1.5 * f.unit)) * (f.nucleoli < 0.5)


def p_nuclear_membrane(f: Field) -> np.ndarray:
    """1 Nuclear membrane: a thin ring on the nucleus edge."""
    return _edge(f.nuc_map > 0, max(1, int(round(f.unit))))


def p_nucleoli(f: Field) -> np.ndarray:
    """2 Nucleoli: the 2-4 round blobs in each nucleus."""
    return f.nucleoli


def p_fibrillar_center(f: Field) -> np.ndarray:
    """3 Nucleoli fibrillar center: tiny dots inside the nucleoli."""
    pts = [(x + f.rng.integers(-1, 2), y + f.rng.integers(-1, 2)) for x, y in f.nucleoli_centers]
    return _dots(f, pts, 0.6 * f.unit) * (f.nucleoli > 0)


def p_speckles(f: Field) -> np.ndarray:
    """4 Nuclear speckles: 10-30 irregular spots per nucleus."""
    img = _blank(f.size)
    for i in range(f.n_cells):
        pts = f.points(f.nuc(i), int(f.rng.integers(10, 31)))
        img += _dots(f, pts, f.rng.uniform(0.8, 1.5) * f.unit)
    return cv2.GaussianBlur(img, (0, 0), 0.6 * f.unit) * f.nuc()


def p_nuclear_bodies(f: Field) -> np.ndarray:
    """5 Nuclear bodies: 2-6 small bright dots per nucleus."""
    pts = np.concatenate([f.points(f.nuc(i), int(f.rng.integers(2, 7))) for i in range(f.n_cells)])
    return _dots(f, pts, 1.2 * f.unit) * f.nuc()


def p_er(f: Field) -> np.ndarray:
    """6 Endoplasmic reticulum: a copy of the yellow ER texture."""
    return f.yellow


def p_golgi(f: Field) -> np.ndarray:
    """7 Golgi apparatus: a crescent blob pressed against one side of each nucleus."""
    img = _blank(f.size)
    for i in range(f.n_cells):
        x, y = _beside_nucleus(f, i, 1.5 * f.unit)
        cv2.ellipse(img, (x, y), (int(6 * f.unit), int(3 * f.unit)), f.rng.uniform(0, 180), 0, 360, 1.0, -1)
    return img * f.cyto()


def p_peroxisomes(f: Field) -> np.ndarray:
    """8 Peroxisomes: many tiny uniform dots all over the cytoplasm."""
    cyto = f.cyto()
    return _dots(f, f.points(cyto, int(cyto.sum() / (12 * f.unit**2))), 0.5 * f.unit) * cyto


def p_endosomes(f: Field) -> np.ndarray:
    """9 Endosomes: medium dots scattered through the cytoplasm."""
    pts = np.concatenate([f.points(f.cyto(i), 8) for i in range(f.n_cells)])
    return _dots(f, pts, 1.6 * f.unit) * f.cyto()


def p_lysosomes(f: Field) -> np.ndarray:
    """10 Lysosomes: medium dots clustered close to the nucleus."""
    dist = cv2.distanceTransform((f.nuc_map == 0).astype(np.uint8), cv2.DIST_L2, 3)
    near = f.cyto() & (dist < 5 * f.unit)
    return _dots(f, f.points(near, 8 * f.n_cells), 1.6 * f.unit) * f.cyto()


def _fibres(f: Field, wavy: bool) -> np.ndarray:
    img = _blank(f.size)
    s = f.size
    for i in range(f.n_cells):
        base = f.rng.uniform(0, np.pi)
        for _ in range(int(f.rng.integers(4, 8))):
            x0, y0 = f.points(f.cell_map == i + 1, 1)[0] if (f.cell_map == i + 1).any() else (s // 2, s // 2)
            t = base if not wavy else f.rng.uniform(0, np.pi)
            d = np.linspace(-30, 30, 60) * f.unit
            px, py = x0 + d * np.cos(t), y0 + d * np.sin(t)
            if wavy:  # sinusoidal bends across the fibre
                w = 3 * f.unit * np.sin(d / (5 * f.unit) + f.rng.uniform(0, 6))
                px, py = px - w * np.sin(t), py + w * np.cos(t)
            cv2.polylines(img, [np.stack([px, py], 1).round().astype(np.int32)], False, 1.0, 1)
    return img * (f.cell_map > 0)


def p_intermediate_filaments(f: Field) -> np.ndarray:
    """11 Intermediate filaments: long wavy fibres across the cell."""
    return _fibres(f, wavy=True)


def p_actin(f: Field) -> np.ndarray:
    """12 Actin filaments: straight parallel fibres, one direction per cell."""
    return _fibres(f, wavy=False)


def p_focal_adhesions(f: Field) -> np.ndarray:
    """13 Focal adhesion sites: short radial dashes at the cell edge."""
    img = _blank(f.size)
    edge = _edge(f.cell_map > 0, max(1, int(2 * f.unit))) > 0
    for x, y in f.points(edge, 6 * f.n_cells):
        i = f.cell_map[y, x] - 1
        cx, cy = f.centers[i]
        v = np.array([x - cx, y - cy], np.float64)
        v /= max(np.linalg.norm(v), 1e-6)
        a = (int(x - 2.5 * f.unit * v[0]), int(y - 2.5 * f.unit * v[1]))
        cv2.line(img, a, (int(x), int(y)), 1.0, max(1, int(f.unit)))
    return img * (f.cell_map > 0)


def p_microtubules(f: Field) -> np.ndarray:
    """14 Microtubules: a copy of the red filaments."""
    return f.red


def p_microtubule_ends(f: Field) -> np.ndarray:
    """15 Microtubule ends: dots at the filament tips."""
    return _dots(f, f.tips, 0.8 * f.unit)


def _closest_pair(f: Field) -> tuple[int, int]:
    c = np.array(f.centers)
    d = np.linalg.norm(c[:, None] - c[None], axis=-1) + np.eye(len(c)) * 1e9
    i, j = np.unravel_index(np.argmin(d), d.shape)
    return int(i), int(j)


def p_cytokinetic_bridge(f: Field) -> np.ndarray:
    """16 Cytokinetic bridge: a bright bar between the two closest cells."""
    img = _blank(f.size)
    i, j = _closest_pair(f)
    a = np.array(f.centers[i])
    b = np.array(f.centers[j])
    # The bar spans the middle third between the two nuclei.
    p, q = a + (b - a) / 3, a + 2 * (b - a) / 3
    cv2.line(img, tuple(p.round().astype(int)), tuple(q.round().astype(int)), 1.0, max(2, int(2 * f.unit)))
    return img


def p_mitotic_spindle(f: Field) -> np.ndarray:
    """17 Mitotic spindle: a spindle (bowed lines between two poles) over one cell's nucleus."""
    img = _blank(f.size)
    i = int(f.rng.integers(f.n_cells))
    cx, cy = f.centers[i]
    t = f.rng.uniform(0, np.pi)
    L = 8 * f.unit
    for bow in np.linspace(-4, 4, 7) * f.unit:
        s = np.linspace(-1, 1, 25)
        px = cx + s * L * np.cos(t) - bow * (1 - s**2) * np.sin(t)
        py = cy + s * L * np.sin(t) + bow * (1 - s**2) * np.cos(t)
        cv2.polylines(img, [np.stack([px, py], 1).round().astype(np.int32)], False, 1.0, 1)
    return img


def p_mtoc(f: Field) -> np.ndarray:
    """18 Microtubule organizing center: one bright dot beside each nucleus."""
    return _dots(f, [_beside_nucleus(f, i, 2 * f.unit) for i in range(f.n_cells)], 1.2 * f.unit)


def p_centrosome(f: Field) -> np.ndarray:
    """19 Centrosome: two close dots beside each nucleus."""
    pts = []
    for i in range(f.n_cells):
        x, y = _beside_nucleus(f, i, 2 * f.unit)
        d = int(max(2, 2.5 * f.unit))
        pts += [(x - d // 2, y), (x + d - d // 2, y + 1)]
    return _dots(f, pts, 0.8 * f.unit)


def p_lipid_droplets(f: Field) -> np.ndarray:
    """20 Lipid droplets: small hollow rings in the cytoplasm."""
    pts = np.concatenate([f.points(f.cyto(i), 4) for i in range(f.n_cells)])
    return _dots(f, pts, 2.2 * f.unit, ring=True) * f.cyto()


def _boundaries(f: Field) -> tuple[np.ndarray, np.ndarray]:
    """Cell outline pixels, and those of them where two cells touch."""
    m = f.cell_map
    k = np.ones((3, 3), np.uint8)
    mx = cv2.dilate(m.astype(np.float32), k)
    mn = -cv2.dilate(-m.astype(np.float32), k)
    outline = (m > 0) & ((mx != m) | (mn != m))
    touch = outline & (mn > 0) & (mx != mn)
    return outline.astype(np.float32), touch.astype(np.float32)


def p_plasma_membrane(f: Field) -> np.ndarray:
    """21 Plasma membrane: the thin outline of every cell."""
    return _boundaries(f)[0]


def p_cell_junctions(f: Field) -> np.ndarray:
    """22 Cell junctions: the outline only where two cells touch."""
    touch = _boundaries(f)[1]
    return cv2.dilate(touch, np.ones((2, 2), np.uint8)) if f.unit >= 1 else touch


def p_mitochondria(f: Field) -> np.ndarray:
    """23 Mitochondria: short worm-like tubules in the cytoplasm."""
    img = _blank(f.size)
    for x, y in f.points(f.cyto(), 10 * f.n_cells):
        t = f.rng.uniform(0, 2 * np.pi)
        s = np.linspace(0, 4, 6) * f.unit
        px = x + s * np.cos(t) + np.sin(s / f.unit) * f.unit * np.cos(t + 1.57)
        py = y + s * np.sin(t) + np.sin(s / f.unit) * f.unit * np.sin(t + 1.57)
        cv2.polylines(img, [np.stack([px, py], 1).round().astype(np.int32)], False, 1.0, 1)
    return img * f.cyto()


def p_aggresome(f: Field) -> np.ndarray:
    """24 Aggresome: one large bright blob next to the nucleus, in one or two cells."""
    pts = [_beside_nucleus(f, int(i), 3 * f.unit)
           for i in f.rng.choice(f.n_cells, min(f.n_cells, int(f.rng.integers(1, 3))), replace=False)]
    return _dots(f, pts, 3.5 * f.unit)


def p_cytosol(f: Field) -> np.ndarray:
    """25 Cytosol: diffuse fill of the whole cytoplasm."""
    return f.cyto() * (0.8 + 0.2 * _smooth_noise(f.rng, f.size, 3 * f.unit))


def p_cytoplasmic_bodies(f: Field) -> np.ndarray:
    """26 Cytoplasmic bodies: a few large bright cytoplasmic dots."""
    return _dots(f, f.points(f.cyto(), max(2, f.n_cells // 2)), 2.5 * f.unit) * (f.cell_map > 0)


def p_rods_rings(f: Field) -> np.ndarray:
    """27 Rods & rings: short thick rods and small rings in the cytoplasm."""
    img = _blank(f.size)
    for k, (x, y) in enumerate(f.points(f.cyto(), 2 * f.n_cells)):
        if k % 2:
            cv2.circle(img, (int(x), int(y)), max(2, int(2 * f.unit)), 1.0, 1)
        else:
            t = f.rng.uniform(0, np.pi)
            d = 3 * f.unit
            cv2.line(img, (int(x - d * np.cos(t)), int(y - d * np.sin(t))),
                     (int(x + d * np.cos(t)), int(y + d * np.sin(t))), 1.0, max(1, int(1.5 * f.unit)))
    return img * (f.cell_map > 0)


PATTERNS: dict[int, Callable[[Field], np.ndarray]] = dict(enumerate([
    p_nucleoplasm, p_nuclear_membrane, p_nucleoli, p_fibrillar_center, p_speckles,
    p_nuclear_bodies, p_er, p_golgi, p_peroxisomes, p_endosomes, p_lysosomes,
    p_intermediate_filaments, p_actin, p_focal_adhesions, p_microtubules, p_microtubule_ends,
    p_cytokinetic_bridge, p_mitotic_spindle, p_mtoc, p_centrosome, p_lipid_droplets,
    p_plasma_membrane, p_cell_junctions, p_mitochondria, p_aggresome, p_cytosol,
    p_cytoplasmic_bodies, p_rods_rings,
]))
assert len(PATTERNS) == NUM_CLASSES


def _to_uint8(img: np.ndarray, rng: np.random.Generator, gain: float) -> np.ndarray:
    """Scale to counts, add shot (Poisson) and read (Gaussian) noise, clip to uint8."""
    counts = rng.poisson(np.clip(img, 0, None) * gain * 200.0).astype(np.float32)
    counts += rng.normal(4.0, 2.0, img.shape).astype(np.float32)
    return np.clip(counts, 0, 255).astype(np.uint8)


def render(labels: list[int], size: int, rng: np.random.Generator) -> np.ndarray:
    """One synthetic field as uint8 (size, size, 4) in RGBY order."""
    f = make_field(size, rng)
    green = _blank(size)
    for k in labels:
        p = PATTERNS[k](f).astype(np.float32)
        green += p / max(float(p.max()), 1e-6) * rng.uniform(0.55, 1.0)
    green = cv2.GaussianBlur(green, (0, 0), 0.4 * f.unit)
    planes = [(f.red, 0.8), (green, 1.0), (f.blue, 1.0), (f.yellow, 0.8)]
    return np.stack([_to_uint8(p, rng, g * rng.uniform(0.7, 1.1)) for p, g in planes], axis=-1)


# ---------------------------------------------------------------- writers
def kaggle_id(rng: np.random.Generator) -> str:
    """An Id shaped like the competition's (UUID1-like, `...-11e8-...`)."""
    h = rng.bytes(14).hex()
    return f"{h[:8]}-{h[8:12]}-11e8-{h[12:16]}-{h[16:28]}"


def hpav18_id(rng: np.random.Generator) -> str:
    """An Id shaped like HPAv18's `{antibody}_{plate}_{well}_{field}`."""
    well = f"{'ABCDEFGH'[rng.integers(8)]}{rng.integers(1, 13)}"
    return f"{rng.integers(1, 60000)}_{rng.integers(1, 2000)}_{well}_{rng.integers(1, 5)}"


def write_png(out_dir: Path, image_id: str, rgby: np.ndarray) -> None:
    for c, color in enumerate(COLORS):
        cv2.imwrite(str(out_dir / f"{image_id}_{color}.png"), rgby[:, :, c])


def write_tiff(out_dir: Path, image_id: str, rgby: np.ndarray, uint16: bool) -> None:
    for c, color in enumerate(COLORS):
        plane = rgby[:, :, c]
        # v * 257 spans the full uint16 range and maps back exactly (io.uint16_to_uint8).
        tifffile.imwrite(out_dir / f"{image_id}_{color}.tif", plane.astype(np.uint16) * 257 if uint16 else plane)


# BGR plane indices that carry each colour in an HPAv18 RGB JPEG.
_JPEG_PLANES = {"red": (2,), "green": (1,), "blue": (0,), "yellow": (2, 1)}


def write_hpav18_jpeg(out_dir: Path, image_id: str, rgby: np.ndarray, quality: int = 95) -> None:
    for c, color in enumerate(COLORS):
        bgr = np.zeros(rgby.shape[:2] + (3,), np.uint8)
        for plane in _JPEG_PLANES[color]:
            bgr[:, :, plane] = rgby[:, :, c]
        cv2.imwrite(str(out_dir / f"{image_id}_{color}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])


@dataclass(frozen=True)
class DemoSpec:
    """Sizes and seed of the demo set; defaults live in the config schema only (from_config)."""

    seed: int
    n_train: int
    n_test: int
    n_tiff: int
    n_jpg: int
    size: int
    tiff_size: int
    jpg_size: int
    prior_power: float

    @classmethod
    def from_config(cls, config: dict) -> DemoSpec:
        return cls(**{k: v for k, v in config["demo"].items() if k != "dir"})


# split name -> (sub-directory, id maker, writer, side attribute, count attribute)
SPLITS = {
    "train": ("train", kaggle_id, "png", "size", "n_train"),
    "test": ("test", kaggle_id, "png", "size", "n_test"),
    "train_tiff": ("train_tiff", kaggle_id, "tiff", "tiff_size", "n_tiff"),
    "hpav18": ("hpav18", hpav18_id, "jpg", "jpg_size", "n_jpg"),
}


def make_demo(out_dir: str | Path, spec: DemoSpec) -> dict[str, pd.DataFrame]:
    """Write the demo set under out_dir; returns the label table of each split.

    Layout: train/, test/ (Kaggle PNGs), train.csv, sample_submission.csv, test_labels.csv
    (the hidden truth, never read by the workflow), train_tiff/ + train_tiff.csv (full-size
    style TIFFs, alternately uint16 and uint8), hpav18/ + hpav18.csv (HPAv18-style RGB JPEGs).
    Csvs are written last and atomically: they mark a complete set.
    """
    out = Path(out_dir)
    tables = {}
    for split_no, (split, (sub, make_id, fmt, side_attr, n_attr)) in enumerate(SPLITS.items()):
        n, side = getattr(spec, n_attr), getattr(spec, side_attr)
        d = out / sub
        d.mkdir(parents=True, exist_ok=True)
        label_rng = np.random.default_rng([spec.seed, split_no, 0])
        label_sets = sample_label_sets(n, label_rng, spec.prior_power)
        ids, seen = [], set()
        while len(ids) < n:
            i = make_id(label_rng)
            if i not in seen:
                seen.add(i)
                ids.append(i)
        progress = Progress(n, f"demo {split}", "images", log=log)
        for k, (image_id, labels) in enumerate(zip(ids, label_sets)):
            # One generator per image: the set is the same whatever order images are made in.
            rgby = render(labels, side, np.random.default_rng([spec.seed, split_no, 1, k]))
            if fmt == "png":
                write_png(d, image_id, rgby)
            elif fmt == "tiff":
                write_tiff(d, image_id, rgby, uint16=k % 2 == 0)
            else:
                write_hpav18_jpeg(d, image_id, rgby)
            progress.update()
        tables[split] = pd.DataFrame({"Id": ids, "Target": decode(encode(label_sets))})
    for name, df in [("train.csv", tables["train"]), ("train_tiff.csv", tables["train_tiff"]),
                     ("hpav18.csv", tables["hpav18"]), ("test_labels.csv", tables["test"]),
                     ("sample_submission.csv", tables["test"].assign(Target="0")
                      .rename(columns={"Target": "Predicted"}))]:
        with atomic_path(out / name) as tmp:
            df.to_csv(tmp, index=False)
    return tables
