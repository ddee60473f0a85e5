"""Perceptual hashes of image planes: the 64-bit pHash, as `imagehash.phash` computes it.

A plane is shrunk to 32 x 32 (Pillow's Lanczos filter), its 2-D DCT-II taken (scipy.fftpack), and
each of the 8 x 8 lowest-frequency coefficients compared with their median: bit 63 (the most
significant) is coefficient (0, 0), bit 0 is (7, 7), as the hex string of imagehash reads. Near
copies of a field (re-encoded, resized, slightly shifted) differ in a few bits; unrelated fields
in about 32. The same libraries and steps as imagehash make the values equal to it (tested).
"""

from __future__ import annotations

import numpy as np
import scipy.fftpack
from PIL import Image

HASH_SIZE = 8
SHRUNK = HASH_SIZE * 4  # imagehash's highfreq_factor 4


def phash(plane: np.ndarray) -> np.uint64:
    """pHash of one uint8 (H, W) plane."""
    small = np.asarray(Image.fromarray(plane).resize((SHRUNK, SHRUNK), Image.Resampling.LANCZOS))
    dct = scipy.fftpack.dct(scipy.fftpack.dct(small, axis=0), axis=1)[:HASH_SIZE, :HASH_SIZE]
    bits = dct > np.median(dct)
    return np.uint64(int.from_bytes(np.packbits(bits.ravel()).tobytes(), "big"))


def phash_rgby(rgby: np.ndarray) -> np.ndarray:
    """(4,) uint64: the pHash of each plane of a uint8 (H, W, 4) image, RGBY order."""
    return np.array([phash(np.ascontiguousarray(rgby[:, :, c])) for c in range(rgby.shape[2])], np.uint64)
