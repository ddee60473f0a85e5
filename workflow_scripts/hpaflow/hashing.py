"""Perceptual hashes of image planes: the 64-bit pHash, as `imagehash.phash` computes it.

A plane is shrunk to 32 x 32 (Pillow's Lanczos filter), its 2-D DCT-II taken (scipy.fftpack), and
each of the 8 x 8 lowest-frequency coefficients compared with their median: bit 63 (the most
significant) is coefficient (0, 0), bit 0 is (7, 7), as the hex string of imagehash reads. Near
copies of a field (re-encoded, resized, slightly shifted) differ in a few bits; unrelated fields
in about 32. The values equal imagehash's (tested), and so does the shrink equal Pillow's
`resize((32, 32), LANCZOS)` pixel for pixel, at a fifth to a third of Pillow's cost (benchmarks/README.md,
"Issue 23"):

Pillow's 8-bit resample (libImaging/Resample.c) is two integer passes, horizontal then vertical: each
output is sum(pixel * k) + 2**21 shifted right by 22 bits and clipped to 0..255, with k the Lanczos
weights of its window normalised to sum 1 and rounded to 22 fractional bits (`pillow_coefficients`
repeats its float steps one by one). Here a pass is a float32 matrix product over each output's band
of inputs (`_Pass`), whose rounding error is bounded (`_Pass.tol`); the few outputs (~0.5%) whose value
lies within that bound of a rounding step are recomputed exactly in float64 (integer sums far below
2**53). Small passes are float64 throughout.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import scipy.fftpack
from PIL import Image

HASH_SIZE = 8
SHRUNK = HASH_SIZE * 4  # imagehash's highfreq_factor 4
PRECISION_BITS = 22  # Resample.c: 32 - 8 - 2
LANCZOS_SUPPORT = 3.0
BLOCK_BYTES = 1 << 20  # float32 rows per block: 1 MB (512 rows at 512 px), in the core's L2 cache; few calls
GROUP = 8  # output columns per matrix product (their input bands overlap; 8 measured fastest at 512 -> 32)
SMALL_PASS = 1 << 17  # inputs of at most this many pixels (the vertical pass at 512 px) go exact: fewer steps
EXACT_SHARE = 0.125  # above this share of outputs near a rounding step, a pass is done exactly throughout
_U32 = 2.0**-24  # float32 unit roundoff


def _lanczos(x: float) -> float:
    """Resample.c's lanczos_filter (its sinc_filter inlined), in the same double operations."""
    if not -3.0 <= x < 3.0:
        return 0.0

    def sinc(v: float) -> float:
        if v == 0.0:
            return 1.0
        v = v * math.pi
        return math.sin(v) / v

    return sinc(x) * sinc(x / 3)


def pillow_coefficients(in_size: int, out_size: int) -> np.ndarray:
    """(in_size, out_size) int64: Pillow's 8-bit Lanczos weights of each output over the inputs, as
    Resample.c's precompute_coeffs and normalize_coeffs_8bpc make them (no box, so in0 = 0)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = LANCZOS_SUPPORT * filterscale
    ss = 1.0 / filterscale
    k = np.zeros((in_size, out_size), np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # C's (int) truncates toward zero, as int() does
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = [_lanczos((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        ww = 0.0
        for v in w:  # summed in order, as C does
            ww += v
        if ww != 0.0:
            w = [v / ww for v in w]
        one = 1 << PRECISION_BITS
        k[xmin : xmin + xmax, xx] = [int(-0.5 + v * one) if v < 0 else int(0.5 + v * one) for v in w]
    return k


@dataclass(frozen=True)
class _Pass:
    """One resample pass in_size -> out_size along the last axis of uint8 rows."""

    in_size: int
    out_size: int
    groups: tuple[tuple[int, int, int, int, np.ndarray], ...]  # (col0, col1, row0, row1, float32 weights / 2**22)
    exact: tuple[tuple[int, int, int, int, np.ndarray], ...]  # the same bands, float64 integer weights
    start: np.ndarray  # (out,) first input of each output's window (kept inside the row)
    window: np.ndarray  # (out, span) float64 integer weights from `start` on (zeros outside the output's taps)
    taps: np.ndarray  # arange(span): the offsets of a window
    tol: float  # bound on |float32 result - exact sum / 2**22| (in output levels), with a margin of 1.25


@lru_cache(maxsize=32)
def _plan(in_size: int, out_size: int) -> _Pass:
    k = pillow_coefficients(in_size, out_size)
    nonzero = k != 0
    taps = int(nonzero.sum(0).max())  # most nonzero weights of an output (bounds the float error)
    first = nonzero.argmax(0)
    span = int(max(len(nonzero) - nonzero[::-1].argmax(0) - first))  # a window, zero weights inside included
    groups, exact = [], []
    for c0 in range(0, out_size, GROUP):
        c1 = min(c0 + GROUP, out_size)
        rows = np.flatnonzero(nonzero[:, c0:c1].any(1))
        r0, r1 = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 1)
        band = k[r0:r1, c0:c1].astype(np.float64)
        groups.append((c0, c1, r0, r1, (band / (1 << PRECISION_BITS)).astype(np.float32)))
        exact.append((c0, c1, r0, r1, band))
    # Each output's weights over `span` inputs from `start`, a window kept inside its row (so inside x).
    start = np.minimum(first, in_size - span)
    window = np.stack([k[start[j] : start[j] + span, j] for j in range(out_size)]).astype(np.float64)
    # A float dot product of n nonzero terms is within gamma_n * sum|terms| of the exact sum, whatever the
    # order of its additions (Higham, Accuracy and Stability of Numerical Algorithms, 3.1; zero terms add
    # nothing, not even a rounding). Pixels and weights / 2**22 are exact in float32.
    gamma = taps * _U32 / (1 - taps * _U32)
    tol = 1.25 * gamma * 255 * np.abs(k).sum(0).max() / (1 << PRECISION_BITS)
    return _Pass(in_size, out_size, tuple(groups), tuple(exact), start, window, np.arange(span), float(tol))


_local = threading.local()


def _buffer(name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """A work array of this thread, kept between calls (one per name and shape: a few, ~2 MB in all at
    512 px): fresh arrays of a few MB cost page faults that weigh as much as the arithmetic."""
    buffers = _local.__dict__.setdefault("buffers", {})
    key = (name, shape, np.dtype(dtype).str)
    if key not in buffers:
        buffers[key] = np.empty(shape, dtype)
    return buffers[key]


def _resample(x: np.ndarray, p: _Pass, exact: bool = False) -> np.ndarray:
    """(C, R, in) C-contiguous uint8 -> (C, R, out) uint8: one Pillow pass along the last axis."""
    c_n, r_n, _ = x.shape
    if exact or x.size <= SMALL_PASS:  # float64 sums of integers below 2**53: exact whatever BLAS does
        y = np.empty((c_n, r_n, p.out_size))
        for c in range(c_n):
            xc = x[c].astype(np.float64)
            for c0, c1, r0, r1, band in p.exact:
                np.matmul(xc[:, r0:r1], band, out=y[c, :, c0:c1])
        return _levels(y)
    y = _buffer("sums", (c_n, r_n, p.out_size), np.float32)
    level = _buffer("level", y.shape, np.float32)
    rows = max(16, BLOCK_BYTES // (4 * p.in_size))
    block = _buffer("block", (min(rows, r_n), p.in_size), np.float32)
    for c in range(c_n):
        for b in range(0, r_n, rows):
            xb = block[: min(rows, r_n - b)]
            np.copyto(xb, x[c, b : b + rows])
            for c0, c1, r0, r1, band in p.groups:
                np.matmul(xb[:, r0:r1], band, out=y[c, b : b + rows, c0:c1])
    y += 0.5  # rounds by at most half an ulp (< 2**-16 below 256): far inside tol's margin
    np.floor(y, out=level)
    y -= level  # the fraction, exact
    near = np.flatnonzero((y < p.tol) | (y > 1 - p.tol))
    if len(near) > EXACT_SHARE * y.size:  # a flat or synthetic plane: exact throughout is cheaper
        return _resample(x, p, exact=True)
    if len(near):
        row, j = np.divmod(near, p.out_size)
        first = row * p.in_size + p.start[j]  # each window in the flat x
        pixels = x.reshape(-1).take(first[:, None] + p.taps).astype(np.float64)
        level.flat[near] = _levels(np.einsum("ij,ij->i", pixels, p.window[j]))  # float64 sums of integers: exact
    np.maximum(level, 0, out=level)
    return np.minimum(level, 255, out=level).astype(np.uint8)


def _levels(sums: np.ndarray) -> np.ndarray:
    """Exact integer sums -> Resample.c's clip8((sum + 2**21) >> 22): a floor shift, then 0..255."""
    y = np.floor((sums + (1 << (PRECISION_BITS - 1))) * (1.0 / (1 << PRECISION_BITS)))
    np.maximum(y, 0, out=y)
    return np.minimum(y, 255, out=y).astype(np.uint8)


def shrink(planes: np.ndarray, size: int = SHRUNK) -> np.ndarray:
    """(C, H, W) uint8 -> (C, size, size) uint8, equal to Pillow's `Image.resize((size, size), LANCZOS)` of
    each plane: the horizontal pass over all H rows, then the vertical one (a side already at `size` is
    not resampled, as in Pillow).

    Pillow 13 resizes vertically first where the height shrinks much more than the width (its PR #9549,
    a rule of its C code): planes that are not square and need both passes go to Pillow itself. Fields and
    their tiles are square.
    """
    c_n, h, w = planes.shape
    if h != w and size not in (h, w):
        resize = Image.Resampling.LANCZOS
        return np.stack(
            [np.asarray(Image.fromarray(np.ascontiguousarray(p)).resize((size, size), resize)) for p in planes]
        )
    x = planes
    if w != size:  # all planes' rows as one stack: fewer, larger products
        x = _resample(np.ascontiguousarray(planes).reshape(1, c_n * h, w), _plan(w, size)).reshape(c_n, h, size)
    if h == size:
        return np.ascontiguousarray(x)
    t = np.ascontiguousarray(x.transpose(0, 2, 1)).reshape(1, c_n * size, h)
    return np.ascontiguousarray(_resample(t, _plan(h, size)).reshape(c_n, size, size).transpose(0, 2, 1))


def _hashes(small: np.ndarray) -> np.ndarray:
    """(C, 32, 32) uint8 shrunk planes -> (C,) uint64, imagehash's steps on each."""
    # One call per axis for all planes: the same values as imagehash's per-plane calls (pocketfft runs
    # each 1-D transform alike; tested on 2,000 random stacks and in tests/unit/test_duplicates.py).
    dct = scipy.fftpack.dct(scipy.fftpack.dct(small, axis=1), axis=2)
    low = dct[:, :HASH_SIZE, :HASH_SIZE].reshape(len(small), -1)
    middle = np.sort(low, axis=1)[:, 31:33]
    bits = low > (middle[:, :1] + middle[:, 1:]) / 2  # np.median's mean of the middle two, in the same float steps
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def phash(plane: np.ndarray) -> np.uint64:
    """pHash of one uint8 (H, W) plane."""
    return _hashes(shrink(plane[None]))[0]


def phash_rgby(rgby: np.ndarray) -> np.ndarray:
    """(C,) uint64: the pHash of each plane of a uint8 (H, W, C) image (RGBY: 4)."""
    h, w, c_n = rgby.shape
    planes = _buffer("planes", (c_n, h, w), np.uint8)
    if rgby.flags.c_contiguous and c_n <= 4:
        cv2.split(rgby, [planes[c] for c in range(c_n)])  # SIMD; numpy's strided copy is ~5x slower
    else:
        np.copyto(planes, rgby.transpose(2, 0, 1))
    return _hashes(shrink(planes))
