"""Decoders of the three source formats, against known pixels and the real HPAv18 sample."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from conftest import DATA
from hpaflow.io import (
    ImageError,
    Uint16Scaling,
    decode_hpav18_jpeg,
    decode_png,
    decode_tiff,
    read_rgby,
    uint16_to_uint8,
)
from hpaflow.layout import channel_path

RNG = np.random.default_rng(0)


def random_plane(h=40, w=40):
    return RNG.integers(0, 256, (h, w), dtype=np.uint8)


def test_png_8bit_roundtrip(tmp_path: Path):
    img = random_plane()
    cv2.imwrite(str(tmp_path / "a.png"), img)
    assert np.array_equal(decode_png(tmp_path / "a.png"), img)


def test_png_16bit_is_scaled(tmp_path: Path):
    cv2.imwrite(str(tmp_path / "a.png"), np.array([[0, 257 * 7, 65535]], np.uint16))
    assert decode_png(tmp_path / "a.png").tolist() == [[0, 7, 255]]


def test_uint16_rule():
    v = np.array([0, 128, 129, 257, 32767, 32896, 65535], np.uint16)
    # round(v * 255 / 65535)
    assert uint16_to_uint8(v, 16).tolist() == [0, 0, 1, 1, 127, 128, 255]
    every8 = np.arange(256, dtype=np.uint16)
    assert np.array_equal(uint16_to_uint8(every8 * 257, 16), every8)
    every16 = np.arange(65536, dtype=np.uint64)
    exact = (every16 * 255 + 32767) // 65535  # round(v * 255 / 65535) in integers
    assert np.array_equal(uint16_to_uint8(every16.astype(np.uint16).reshape(256, 256), 16).ravel(), exact)


def test_uint16_rule_with_fewer_bits():
    v = np.arange(65536, dtype=np.uint64)
    for bits in (12, 14):
        top = (1 << bits) - 1
        exact = np.minimum((v * 255 + top // 2) // top, 255)  # round(v * 255 / top), clipped
        assert np.array_equal(uint16_to_uint8(v.astype(np.uint16).reshape(256, 256), bits).ravel(), exact), bits
    assert uint16_to_uint8(np.array([0, 16, 4095, 4096, 65535], np.uint16), 12).tolist() == [0, 1, 255, 255, 255]


def test_12_bit_tiffs_warn_and_decode_with_bits(tmp_path: Path):
    img = random_plane()
    tifffile.imwrite(tmp_path / "a.tif", ((img.astype(np.uint32) * 4095 + 127) // 255).astype(np.uint16))  # 12-bit
    full = Uint16Scaling()
    assert decode_tiff(tmp_path / "a.tif", full).max() <= 16  # 16x dimmer
    assert "set `bits: 12` on this dataset" in full.warning() and "(< 4096)" in full.warning()
    twelve = Uint16Scaling(12)
    assert np.array_equal(decode_tiff(tmp_path / "a.tif", twelve), img) and twelve.warning() is None
    tifffile.imwrite(tmp_path / "b.tif", np.full((8, 8), 5000, np.uint16))
    decode_tiff(tmp_path / "b.tif", twelve)
    assert twelve.warning().startswith("1 of 2 uint16 planes hold values above 4095 (peak 5000)")
    tifffile.imwrite(tmp_path / "c.tif", np.full((8, 8), 40000, np.uint16))  # 16-bit data: no warning
    assert Uint16Scaling().warning() is None
    sixteen = Uint16Scaling()
    decode_tiff(tmp_path / "c.tif", sixteen)
    assert sixteen.warning() is None


@pytest.mark.parametrize("compression", ["lzw", "zlib"])  # zlib is TIFF's deflate
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_compressed_tiff_equals_uncompressed(tmp_path: Path, dtype, compression):
    rng = np.random.default_rng(1)
    stored = rng.integers(0, np.iinfo(dtype).max, (64, 64), dtype=dtype, endpoint=True)
    tifffile.imwrite(tmp_path / "plain.tif", stored)
    tifffile.imwrite(tmp_path / "packed.tif", stored, compression=compression)
    assert tifffile.TiffFile(tmp_path / "packed.tif").pages[0].compression.name in ("LZW", "ADOBE_DEFLATE")
    assert (tmp_path / "packed.tif").read_bytes() != (tmp_path / "plain.tif").read_bytes()
    assert np.array_equal(decode_tiff(tmp_path / "packed.tif"), decode_tiff(tmp_path / "plain.tif"))
    # OpenCV writes LZW TIFFs too (what many tools hand on): they decode the same.
    if dtype == np.uint8 and compression == "lzw":
        cv2.imwrite(str(tmp_path / "cv.tif"), stored)
        assert np.array_equal(decode_tiff(tmp_path / "cv.tif"), stored)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_tiff(tmp_path: Path, dtype):
    img = random_plane()
    stored = img.astype(np.uint16) * 257 if dtype == np.uint16 else img
    tifffile.imwrite(tmp_path / "a.tif", stored)
    assert np.array_equal(decode_tiff(tmp_path / "a.tif"), img)


def test_tiff_float_rejected(tmp_path: Path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((8, 8), np.float32))
    with pytest.raises(ImageError, match=r"a\.tif: expected uint8 or uint16 pixels, got float32"):
        decode_tiff(tmp_path / "a.tif")


def test_tiff_extension_tiff_accepted(tmp_path: Path):
    tifffile.imwrite(tmp_path / "X_red.tiff", random_plane())
    assert channel_path(tmp_path, "X", "red", "tiff").name == "X_red.tiff"
    assert channel_path(tmp_path, "X", "green", "tiff").name == "X_green.tif"


SAMPLE_ID = "89_B5_1"


@pytest.mark.parametrize("color,plane", [("red", 2), ("green", 1), ("blue", 0)])
def test_hpav18_sample_takes_the_signal_plane(color, plane):
    """Each real HPAv18 file carries its signal in one RGB plane; the decoder must return that plane."""
    path = DATA / f"{SAMPLE_ID}_{color}.jpg"
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr.shape == (1728, 1728, 3)
    energy = bgr.reshape(-1, 3).astype(np.float64).mean(0)
    assert energy.argmax() == plane and energy[plane] > 5 * np.delete(energy, plane).max()
    out = decode_hpav18_jpeg(path, color)
    assert out.dtype == np.uint8 and out.shape == (1728, 1728)
    assert np.array_equal(out, bgr[:, :, plane])


def test_hpav18_sample_yellow_is_mean_of_red_and_green():
    path = DATA / f"{SAMPLE_ID}_yellow.jpg"
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR).astype(np.int32)
    r, g, b = bgr[:, :, 2], bgr[:, :, 1], bgr[:, :, 0]
    assert r.mean() > 5 * b.mean() and g.mean() > 5 * b.mean()  # yellow is R + G, B near 0
    out = decode_hpav18_jpeg(path, "yellow").astype(np.int32)
    assert np.array_equal(out, (r + g + 1) // 2)


def test_read_rgby_stacks_in_rgby_order(tmp_path: Path):
    planes = [random_plane() for _ in range(4)]
    for c, p in zip(["red", "green", "blue", "yellow"], planes):
        cv2.imwrite(str(tmp_path / f"X_{c}.png"), p)
    out = read_rgby(tmp_path, "X", "png")
    assert out.shape == (40, 40, 4)
    for k in range(4):
        assert np.array_equal(out[:, :, k], planes[k])


# ------------------------------------------------------------------ bad input
def write_png_set(d: Path, image_id="X", sizes=(40, 40, 40, 40)):
    for c, s in zip(["red", "green", "blue", "yellow"], sizes):
        cv2.imwrite(str(d / f"{image_id}_{c}.png"), random_plane(s, s))


def test_missing_channel(tmp_path: Path):
    write_png_set(tmp_path)
    (tmp_path / "X_yellow.png").unlink()
    with pytest.raises(ImageError, match=r"X_yellow\.png: missing file"):
        read_rgby(tmp_path, "X", "png")


def test_truncated_png(tmp_path: Path):
    write_png_set(tmp_path)
    p = tmp_path / "X_green.png"
    p.write_bytes(p.read_bytes()[:-30])
    with pytest.raises(ImageError, match=r"X_green\.png: truncated PNG"):
        read_rgby(tmp_path, "X", "png")


def test_png_with_bytes_after_iend_decodes(tmp_path: Path):
    write_png_set(tmp_path)
    p = tmp_path / "X_green.png"
    whole = decode_png(p)
    for tail in (b"\x00", b"\n", b"\x00" * 100):
        p.write_bytes(p.read_bytes().split(b"IEND")[0] + b"IEND\xaeB`\x82" + tail)
        assert np.array_equal(decode_png(p), whole)


def test_truncated_jpeg(tmp_path: Path):
    data = (DATA / f"{SAMPLE_ID}_red.jpg").read_bytes()
    (tmp_path / "a.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"a\.jpg: truncated JPEG"):
        decode_hpav18_jpeg(tmp_path / "a.jpg", "red")


@pytest.mark.parametrize("fmt,name", [("png", "X_red.png"), ("jpg", "X_red.jpg"), ("tiff", "X_red.tif")])
def test_unreadable(tmp_path: Path, fmt, name):
    (tmp_path / name).write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageError, match=re.escape(name) + ": "):
        read_rgby(tmp_path, "X", fmt)


def test_empty_file(tmp_path: Path):
    (tmp_path / "X_red.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"X_red\.png: empty file"):
        read_rgby(tmp_path, "X", "png")


def test_channels_of_different_size(tmp_path: Path):
    write_png_set(tmp_path, sizes=(40, 40, 32, 40))
    with pytest.raises(ImageError, match=r"Id X: channels differ in size \(red 40x40, green 40x40, blue 32x32"):
        read_rgby(tmp_path, "X", "png")


def test_colour_png_rejected(tmp_path: Path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ImageError, match=r"a\.png: expected a single-channel"):
        decode_png(tmp_path / "a.png")


def test_non_square_rejected(tmp_path: Path):
    for c in ["red", "green", "blue", "yellow"]:
        cv2.imwrite(str(tmp_path / f"X_{c}.png"), np.zeros((30, 40), np.uint8))
    with pytest.raises(ImageError, match="Id X: image is 40x30, expected a square"):
        read_rgby(tmp_path, "X", "png")
