"""Image decoders for the three HPA source formats.

Every decoder returns one uint8 plane (H, W) per colour; `read_rgby` stacks the
four as (H, W, 4) in RGBY order. Errors are `ImageError`s that name the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile

from .layout import COLORS, JPEG_PLANES, channel_path

# The whole IEND chunk: zero length, type, CRC. Its 12 bytes do not occur by chance in a file.
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# Source plane -> shard size, shrinking or enlarging (the exported preprocessing.json names it from here).
SHARD_INTERPOLATION = cv2.INTER_AREA
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): FFC0-FFCF but DHT, JPG and DAC.
JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# libjpeg's scaled decode (datasets[].reduced_decode): the IDCT itself outputs 1/f of the side, so the
# full-size planes are never made. IGNORE_ORIENTATION: like the full IMREAD_UNCHANGED decode, no EXIF rotation.
REDUCED_DECODE_FLAGS = {
    1: cv2.IMREAD_UNCHANGED,
    2: cv2.IMREAD_REDUCED_COLOR_2 | cv2.IMREAD_IGNORE_ORIENTATION,
    4: cv2.IMREAD_REDUCED_COLOR_4 | cv2.IMREAD_IGNORE_ORIENTATION,
    8: cv2.IMREAD_REDUCED_COLOR_8 | cv2.IMREAD_IGNORE_ORIENTATION,
}


class ImageError(ValueError):
    """A source image that is missing, unreadable, truncated or of the wrong shape."""


def _missing(path: Path) -> ImageError:
    if path.is_symlink():
        return ImageError(f"{path}: broken symbolic link to {os.readlink(path)}")
    return ImageError(f"{path}: missing file")


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise _missing(path) from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror})") from None
    if not data:
        raise ImageError(f"{path}: empty file")
    return data


def uint16_to_uint8(img: np.ndarray, bits: int) -> np.ndarray:
    """Linear map of the `bits`-bit range onto uint8, rounded: v8 = round(v16 * 255 / (2**bits - 1)),
    values above the range clipped to 255.

    A fixed rule (not per-image contrast stretching) keeps intensities comparable
    across images, which is what the classifier learns from; with 16 bits a uint8 value v
    stored as v * 257 comes back exactly.
    """
    # cv2's SIMD scaling rounds to nearest and saturates; it equals the integer formula for all
    # 65,536 inputs (no input lies exactly on .5; tests/unit/test_io.py checks every value): 25x faster on 2048 px.
    return cv2.convertScaleAbs(img, alpha=255.0 / ((1 << bits) - 1))


@dataclass
class Uint16Scaling:
    """How uint16 planes become uint8 (`bits` significant bits), and what was seen on the way, so
    that a shard can say once, not per plane, when the data do not look like `bits`-bit data."""

    bits: int = 16
    key: str = "bits"  # the config key that sets `bits` (`datasets[1].bits`, `classify.bits`), for the warning
    planes: int = 0
    peak: int = 0
    clipped: int = 0

    def to_uint8(self, img: np.ndarray) -> np.ndarray:
        peak = int(img.max())
        self.planes += 1
        self.peak = max(self.peak, peak)
        self.clipped += peak > (1 << self.bits) - 1
        return uint16_to_uint8(img, self.bits)

    def merge(self, other: Uint16Scaling) -> None:
        """Add what `other` saw (a shard job's worker threads each keep their own)."""
        self.planes += other.planes
        self.peak = max(self.peak, other.peak)
        self.clipped += other.clipped

    def warning(self) -> str | None:
        if not self.planes:
            return None
        where = "" if "." in self.key else " on this dataset"  # a bare `bits` says which entry it is on
        if self.clipped:
            return (
                f"{self.clipped} of {self.planes} uint16 planes hold values above {(1 << self.bits) - 1} "
                f"(peak {self.peak}), clipped to 255: are they more than {self.bits}-bit data? "
                f"(config key `{self.key}`)"
            )
        if self.bits == 16 and self.peak < 256:
            return (
                f"all {self.planes} uint16 planes peak at {self.peak} (< 256): 8-bit values in 16-bit files? "
                f"Mapped over the full 16-bit range they come out 257x dimmer; set `{self.key}: 8`{where}"
            )
        if self.bits == 16 and self.peak < 4096:
            return (
                f"all {self.planes} uint16 planes peak at {self.peak} (< 4096): 12-bit camera data? Mapped "
                f"over the full 16-bit range they come out 16x dimmer; set `{self.key}: 12`{where}"
            )
        return None


def decode_png(path: Path, scaling: Uint16Scaling | None = None) -> np.ndarray:
    """One 8-bit (or 16-bit, scaled) single-channel PNG."""
    data = _read_bytes(path)
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ImageError(f"{path}: not a PNG file")
    # libpng stops without an error on some truncations: the IEND chunk must be there. Bytes after
    # it are ignored, as libpng does (some writers pad files).
    if data.rfind(PNG_IEND, 8) < 0:
        raise ImageError(f"{path}: truncated PNG (no IEND chunk)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError(f"{path}: PNG cannot be decoded")
    if img.ndim != 2:
        raise ImageError(f"{path}: expected a single-channel (gray) PNG, got shape {img.shape}")
    return _to_uint8(img, path, scaling)


def decode_tiff(path: Path, scaling: Uint16Scaling | None = None) -> np.ndarray:
    """One single-plane TIFF, uint8 or uint16 (scaled by `uint16_to_uint8`); uncompressed or compressed
    (LZW, deflate, ... through imagecodecs)."""
    if not path.exists():
        raise _missing(path)
    if not path.is_file():
        raise ImageError(f"{path}: not a file")
    try:
        img = tifffile.imread(path)
    except Exception as e:  # tifffile raises many types for broken files
        raise ImageError(f"{path}: TIFF cannot be decoded ({type(e).__name__}: {e})") from None
    img = np.squeeze(img)
    if img.ndim != 2:
        raise ImageError(f"{path}: expected a single-plane TIFF, got shape {img.shape}")
    return _to_uint8(img, path, scaling)


def _rounded_mean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a + b + 1) // 2 in uint8 without widening: ceil((a + b) / 2) = (a | b) - ((a ^ b) >> 1)."""
    return cv2.subtract(cv2.bitwise_or(a, b), cv2.bitwise_xor(a, b) >> 1)


def jpeg_frame(data: bytes, path: Path) -> tuple[int, int, int]:
    """(height, width, components) from a JPEG's start-of-frame header, without decoding: the segments
    before it are skipped by their lengths."""
    i, n = 2, len(data)  # after SOI
    while i + 4 <= n and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length field
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI or start of scan: the frame header should have come first
            break
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in JPEG_SOF_MARKERS and length >= 8 and i + 10 <= n:
            h, w = int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 7 : i + 9], "big")
            if h == 0 or w == 0:  # height 0: given later by a DNL marker, which no camera here writes
                raise ImageError(f"{path}: JPEG frame header gives a {w}x{h} image")
            return h, w, data[i + 9]
        if length < 2:
            break
        i += 2 + length
    raise ImageError(f"{path}: no JPEG frame header (SOF marker) before the image data")


def reduced_factor(side: int, size: int) -> int:
    """The largest of 1, 2, 4, 8 whose scaled decode of a `side` px JPEG (libjpeg gives ceil(side / f) px)
    is still at least `size` px, so that the INTER_AREA resize after it only shrinks."""
    return next((f for f in (8, 4, 2) if -(-side // f) >= size), 1)


def decode_hpav18_jpeg(
    path: Path, color: str, min_side: int | None = None, frames: list[tuple[int, int]] | None = None
) -> np.ndarray:
    """The plane of an HPAv18 RGB JPEG that carries `color`.

    With `min_side` (datasets[].reduced_decode), the JPEG is decoded at the smallest of 1/2, 1/4, 1/8 scale
    whose side is still >= min_side (`reduced_factor`; full size if none is); `frames`, if given, gets the
    (height, width) stored in the file, whatever the scale.
    """
    data = _read_bytes(path)
    if not data.startswith(b"\xff\xd8"):
        raise ImageError(f"{path}: not a JPEG file")
    # libjpeg pads a truncated file with grey and only warns: require the EOI marker.
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise ImageError(f"{path}: truncated JPEG (no end-of-image marker)")
    flags, expected = cv2.IMREAD_UNCHANGED, None
    if min_side is not None or frames is not None:
        h, w, components = jpeg_frame(data, path)
        if frames is not None:
            frames.append((h, w))
        if min_side is not None:
            # A reduced decode makes any JPEG colour: a grey one must fail as the full decode fails it.
            if components != 3:
                raise ImageError(f"{path}: expected an RGB JPEG, got {components} colour component(s)")
            f = reduced_factor(min(h, w), min_side)
            flags, expected = REDUCED_DECODE_FLAGS[f], (-(-h // f), -(-w // f), 3)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None:
        raise ImageError(f"{path}: JPEG cannot be decoded")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ImageError(f"{path}: expected an RGB JPEG, got shape {img.shape}")
    if expected is not None and img.shape != expected:  # the scaled decode must be libjpeg's, not a resize
        raise ImageError(f"{path}: reduced decode gave shape {img.shape}, expected {expected}")
    planes = [cv2.extractChannel(img, i) for i in JPEG_PLANES[color]]
    return planes[0] if len(planes) == 1 else _rounded_mean(*planes)  # yellow: R and G equally


def _to_uint8(img: np.ndarray, path: Path, scaling: Uint16Scaling | None) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (scaling or Uint16Scaling()).to_uint8(img)
    raise ImageError(f"{path}: expected uint8 or uint16 pixels, got {img.dtype}")


def decode_channel(path: Path, fmt: str, color: str, scaling: Uint16Scaling | None = None) -> np.ndarray:
    if fmt == "png":
        return decode_png(path, scaling)
    if fmt == "tiff":
        return decode_tiff(path, scaling)
    if fmt == "jpg":
        return decode_hpav18_jpeg(path, color)
    raise ValueError(f"unknown image format {fmt!r} (expected png, tiff or jpg)")


def read_rgby(
    images_dir: str | Path,
    image_id: str,
    fmt: str,
    size: int | None = None,
    scaling: Uint16Scaling | None = None,
    source_sizes: list[int] | None = None,
    reduced_decode: bool = False,
) -> np.ndarray:
    """The four channels of one Id as uint8 (H, W, 4), RGBY order; all must share one square shape.
    Channel files are found with any extension of the format in any case (`layout.channel_path`).

    With `size`, each plane is resized (cv2 INTER_AREA) to size x size as it is read, which
    spares stacking full-size planes (a 2048 px image is 16 MB of them). `source_sizes`, if given,
    gets the side of the field as stored (before any reduced decode or resize), so that a caller can
    count small fields. `reduced_decode` (jpg only, with `size`): each JPEG is decoded at 1/2, 1/4
    or 1/8 scale first when that still gives at least `size` px (`decode_hpav18_jpeg`).
    """
    if reduced_decode and fmt != "jpg":
        raise ValueError(f"reduced_decode applies to jpg sources only, not {fmt}")
    paths = [channel_path(images_dir, image_id, c, fmt) for c in COLORS]
    if reduced_decode and size is not None:
        frames: list[tuple[int, int]] = []  # the sides as stored, which the checks below are about
        planes = [decode_hpav18_jpeg(path, c, size, frames) for path, c in zip(paths, COLORS)]
    else:
        planes = [decode_channel(path, fmt, c, scaling) for path, c in zip(paths, COLORS)]
        frames = [p.shape for p in planes]
    if len(set(frames)) != 1:
        detail = ", ".join(f"{c} {w}x{h}" for c, (h, w) in zip(COLORS, frames))
        raise ImageError(f"Id {image_id}: channels differ in size ({detail})")
    h, w = frames[0]
    if h != w:
        raise ImageError(f"Id {image_id}: image is {w}x{h}, expected a square field of view")
    if source_sizes is not None:
        source_sizes.append(h)
    if size is None or size == planes[0].shape[0]:
        return np.stack(planes, axis=-1)
    out = np.empty((size, size, 4), np.uint8)
    for c, p in enumerate(planes):
        # INTER_AREA averages source pixels when shrinking (no aliasing of fine structure).
        out[:, :, c] = cv2.resize(p, (size, size), interpolation=SHARD_INTERPOLATION)
    return out
