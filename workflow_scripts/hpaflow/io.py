"""Image decoders for the three HPA source formats, and atomic file writes.

Every decoder returns one uint8 plane (H, W) per colour; `read_rgby` stacks the
four as (H, W, 4) in RGBY order. Errors are `ImageError`s that name the file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import tifffile

COLORS = ("red", "green", "blue", "yellow")
# Extension of the channel files for each `format:` of a dataset.
EXTENSIONS = {"png": "png", "tiff": "tif", "jpg": "jpg"}


class ImageError(ValueError):
    """A source image that is missing, unreadable, truncated or of the wrong shape."""


def channel_path(images_dir: str | Path, image_id: str, color: str, fmt: str) -> Path:
    """`{images}/{Id}_{color}.{ext}`; for TIFF both `.tif` and `.tiff` are accepted."""
    base = Path(images_dir) / f"{image_id}_{color}.{EXTENSIONS[fmt]}"
    if fmt == "tiff" and not base.exists():
        alt = base.with_suffix(".tiff")
        if alt.exists():
            return alt
    return base


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: missing file") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror})") from None
    if not data:
        raise ImageError(f"{path}: empty file")
    return data


def uint16_to_uint8(img: np.ndarray) -> np.ndarray:
    """Linear map of the full uint16 range onto uint8, rounded: v8 = round(v16 * 255 / 65535).

    A fixed rule (not per-image contrast stretching) keeps intensities comparable
    across images, which is what the classifier learns from; a uint8 value v
    stored as v * 257 comes back exactly.
    """
    # cv2's SIMD scaling rounds to nearest and equals the integer formula for all 65,536 inputs
    # (no input lies exactly on .5; tests/test_io.py checks every value): 25x faster on 2048 px.
    return cv2.convertScaleAbs(img, alpha=255.0 / 65535.0)


def decode_png(path: Path) -> np.ndarray:
    """One 8-bit (or 16-bit, scaled) single-channel PNG."""
    data = _read_bytes(path)
    # libpng stops without an error on some truncations: the IEND chunk must close the file.
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ImageError(f"{path}: not a PNG file")
    if data[-12:-8] != b"\x00\x00\x00\x00" or data[-8:-4] != b"IEND":
        raise ImageError(f"{path}: truncated PNG (no IEND chunk at the end)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError(f"{path}: PNG cannot be decoded")
    if img.ndim != 2:
        raise ImageError(f"{path}: expected a single-channel (gray) PNG, got shape {img.shape}")
    return _to_uint8(img, path)


def decode_tiff(path: Path) -> np.ndarray:
    """One single-plane TIFF, uint8 or uint16 (scaled by `uint16_to_uint8`)."""
    if not path.exists():
        raise ImageError(f"{path}: missing file")
    try:
        img = tifffile.imread(path)
    except Exception as e:  # tifffile raises many types for broken files
        raise ImageError(f"{path}: TIFF cannot be decoded ({type(e).__name__}: {e})") from None
    img = np.squeeze(img)
    if img.ndim != 2:
        raise ImageError(f"{path}: expected a single-plane TIFF, got shape {img.shape}")
    return _to_uint8(img, path)


# HPAv18 JPEGs are RGB with the signal in one plane (cv2 gives BGR, hence the indices).
def _rounded_mean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a + b + 1) // 2 in uint8 without widening: ceil((a + b) / 2) = (a | b) - ((a ^ b) >> 1)."""
    return cv2.subtract(cv2.bitwise_or(a, b), cv2.bitwise_xor(a, b) >> 1)


# HPAv18 JPEGs are RGB with the signal in one plane (cv2 gives BGR, hence the indices).
_JPEG_PLANES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "red": lambda bgr: cv2.extractChannel(bgr, 2),
    "green": lambda bgr: cv2.extractChannel(bgr, 1),
    "blue": lambda bgr: cv2.extractChannel(bgr, 0),
    # Yellow is R and G equally: the rounded mean of the two.
    "yellow": lambda bgr: _rounded_mean(cv2.extractChannel(bgr, 2), cv2.extractChannel(bgr, 1)),
}


def decode_hpav18_jpeg(path: Path, color: str) -> np.ndarray:
    """The plane of an HPAv18 RGB JPEG that carries `color`."""
    data = _read_bytes(path)
    if not data.startswith(b"\xff\xd8"):
        raise ImageError(f"{path}: not a JPEG file")
    # libjpeg pads a truncated file with grey and only warns: require the EOI marker.
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise ImageError(f"{path}: truncated JPEG (no end-of-image marker)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError(f"{path}: JPEG cannot be decoded")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ImageError(f"{path}: expected an RGB JPEG, got shape {img.shape}")
    return _JPEG_PLANES[color](img)


def _to_uint8(img: np.ndarray, path: Path) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return uint16_to_uint8(img)
    raise ImageError(f"{path}: expected uint8 or uint16 pixels, got {img.dtype}")


def decode_channel(path: Path, fmt: str, color: str) -> np.ndarray:
    if fmt == "png":
        return decode_png(path)
    if fmt == "tiff":
        return decode_tiff(path)
    if fmt == "jpg":
        return decode_hpav18_jpeg(path, color)
    raise ValueError(f"unknown image format {fmt!r} (expected png, tiff or jpg)")


def read_rgby(images_dir: str | Path, image_id: str, fmt: str, size: int | None = None) -> np.ndarray:
    """The four channels of one Id as uint8 (H, W, 4), RGBY order; all must share one square shape.

    With `size`, each plane is resized (cv2 INTER_AREA) to size x size as it is read, which
    spares stacking full-size planes (a 2048 px image is 16 MB of them).
    """
    planes = [decode_channel(channel_path(images_dir, image_id, c, fmt), fmt, c) for c in COLORS]
    shapes = {p.shape for p in planes}
    if len(shapes) != 1:
        detail = ", ".join(f"{c} {p.shape[1]}x{p.shape[0]}" for c, p in zip(COLORS, planes))
        raise ImageError(f"Id {image_id}: channels differ in size ({detail})")
    h, w = planes[0].shape
    if h != w:
        raise ImageError(f"Id {image_id}: image is {w}x{h}, expected a square field of view")
    if size is None or size == h:
        return np.stack(planes, axis=-1)
    out = np.empty((size, size, 4), np.uint8)
    for c, p in enumerate(planes):
        # INTER_AREA averages source pixels when shrinking (no aliasing of fine structure).
        out[:, :, c] = cv2.resize(p, (size, size), interpolation=cv2.INTER_AREA)
    return out


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the block succeeds.

    A failed or killed job thus never leaves a half-written `final` behind.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        tmp_path.unlink(missing_ok=True)
