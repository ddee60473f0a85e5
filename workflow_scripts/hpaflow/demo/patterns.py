"""The green channel: one documented spatial pattern per class (`PATTERNS`), an antibody's look of them (`Look`),
and a whole field (`render`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from ..labels import NUM_CLASSES
from .geometry import Field, _blank, _smooth_noise, make_field


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
    pts = [
        _beside_nucleus(f, int(i), 3 * f.unit)
        for i in f.rng.choice(f.n_cells, min(f.n_cells, int(f.rng.integers(1, 3))), replace=False)
    ]
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
            cv2.line(
                img,
                (int(x - d * np.cos(t)), int(y - d * np.sin(t))),
                (int(x + d * np.cos(t)), int(y + d * np.sin(t))),
                1.0,
                max(1, int(1.5 * f.unit)),
            )
    return img * (f.cell_map > 0)


PATTERNS: dict[int, Callable[[Field], np.ndarray]] = dict(
    enumerate(
        [
            p_nucleoplasm,
            p_nuclear_membrane,
            p_nucleoli,
            p_fibrillar_center,
            p_speckles,
            p_nuclear_bodies,
            p_er,
            p_golgi,
            p_peroxisomes,
            p_endosomes,
            p_lysosomes,
            p_intermediate_filaments,
            p_actin,
            p_focal_adhesions,
            p_microtubules,
            p_microtubule_ends,
            p_cytokinetic_bridge,
            p_mitotic_spindle,
            p_mtoc,
            p_centrosome,
            p_lipid_droplets,
            p_plasma_membrane,
            p_cell_junctions,
            p_mitochondria,
            p_aggresome,
            p_cytosol,
            p_cytoplasmic_bodies,
            p_rods_rings,
        ]
    )
)
assert len(PATTERNS) == NUM_CLASSES


def _to_uint8(img: np.ndarray, rng: np.random.Generator, gain: float) -> np.ndarray:
    """Scale to counts, add shot (Poisson) and read (Gaussian) noise, clip to uint8."""
    counts = rng.poisson(np.clip(img, 0, None) * gain * 200.0).astype(np.float32)
    counts += rng.normal(4.0, 2.0, img.shape).astype(np.float32)
    return np.clip(counts, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Look:
    """How one antibody stains: the antibody-specific look of the green plane, on any cells.

    Lengths are in units of the 128 px reference scale (Field.unit), so a look is the same at any field size.
    Fields of one antibody share its label set and its Look; each field still draws its own cells, pattern
    positions, texture and puncta positions and noise.
    """

    gains: tuple[float, ...]  # intensity of each class's pattern (only the present classes show)
    green_gain: float  # the green plane's overall gain (exposure / antibody titre)
    background: float  # diffuse off-target cytoplasmic staining, relative to a pattern's peak
    texture_amp: float  # multiplicative mottling of the stain: x (1 - amp .. 1 + amp)
    texture_scale: float  # blur sigma of that mottling, in units
    puncta_density: float  # granular variant: bright puncta per unit^2 of stained area (0: a smooth stain)
    puncta_radius: float  # in units
    puncta_level: float  # puncta brightness relative to a pattern's peak

    def __post_init__(self):
        if len(self.gains) != NUM_CLASSES:
            raise ValueError(f"Look.gains: {len(self.gains)} gains, expected one per class ({NUM_CLASSES})")


def draw_look(rng: np.random.Generator) -> Look:
    """A random antibody look; always draws the same amount from rng (so what follows stays reproducible).

    Ranges are kept mild: every class pattern stays at >= 0.55 of its peak and above the background, so the
    label remains readable while the look still tells antibodies apart.
    """
    gains = tuple(float(g) for g in rng.uniform(0.55, 1.0, NUM_CLASSES))
    green_gain, background, texture_amp = rng.uniform([0.5, 0.0, 0.0], [1.5, 0.25, 0.6])
    texture_scale = float(np.exp(rng.uniform(np.log(1.5), np.log(6.0))))
    granular, density, radius, level = rng.uniform([0.0, 0.02, 0.6, 0.3], [1.0, 0.12, 2.0, 0.9])
    return Look(
        gains=gains,
        green_gain=float(green_gain),
        background=float(background),
        texture_amp=float(texture_amp),
        texture_scale=texture_scale,
        # Half the antibodies stain smoothly, half granularly.
        puncta_density=float(density) if granular < 0.5 else 0.0,
        puncta_radius=float(radius),
        puncta_level=float(level),
    )


def _puncta(f: Field, support: np.ndarray, look: Look) -> np.ndarray:
    """The granular variant: bright puncta on the stained area only (no new location is stained)."""
    n = int(round(support.sum() * look.puncta_density / f.unit**2))
    return _dots(f, f.points(support, n), look.puncta_radius * f.unit) * support * look.puncta_level


def green_plane(f: Field, labels: list[int], look: Look) -> np.ndarray:
    """The protein channel (float, ~0..1.5) of field f: the class patterns as the antibody's look draws them."""
    green = _blank(f.size)
    for k in labels:
        p = PATTERNS[k](f).astype(np.float32)
        green += p / max(float(p.max()), 1e-6) * look.gains[k]
    if look.puncta_density > 0:
        green += _puncta(f, green > 0.2, look)
    if look.texture_amp > 0:
        tex = _smooth_noise(f.rng, f.size, look.texture_scale * f.unit)
        green *= 1.0 - look.texture_amp + 2.0 * look.texture_amp * tex
    green += look.background * f.cyto()
    return cv2.GaussianBlur(green, (0, 0), 0.4 * f.unit)


def render(labels: list[int], size: int, rng: np.random.Generator, look: Look | None = None) -> np.ndarray:
    """One synthetic field as uint8 (size, size, 4) in RGBY order.

    look: the antibody's look of the green plane; None draws one from rng (the field is its own antibody).
    """
    f = make_field(size, rng)
    look = draw_look(rng) if look is None else look
    green = green_plane(f, labels, look)
    planes = [(f.red, 0.8 * rng.uniform(0.7, 1.1)), (green, look.green_gain), (f.blue, rng.uniform(0.7, 1.1))]
    planes.append((f.yellow, 0.8 * rng.uniform(0.7, 1.1)))
    return np.stack([_to_uint8(p, rng, g) for p, g in planes], axis=-1)
