"""Decoders of the three source formats, against known pixels and the real HPAv18 sample."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from conftest import DATA
from hpaflow.demo import write_hpav18_jpeg
from hpaflow.io import (
    ImageError,
    Uint16Scaling,
    decode_hpav18_jpeg,
    decode_png,
    decode_tiff,
    jpeg_frame,
    read_rgby,
    reduced_factor,
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


# ------------------------------------------------------------------ reduced JPEG decode (issue 23)
def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an EXIF APP1 segment right after SOI that sets Orientation (tag 0x0112)."""
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + b"\x00" * 4
    app1 = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08" + ifd
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def test_jpeg_frame_reads_the_sides_without_decoding(tmp_path: Path):
    for c in ["red", "green", "blue", "yellow"]:
        path = DATA / f"{SAMPLE_ID}_{c}.jpg"
        assert jpeg_frame(path.read_bytes(), path) == (1728, 1728, 3)
    grey = cv2.imencode(".jpg", random_plane(37, 53))[1].tobytes()
    assert jpeg_frame(grey, Path("g.jpg")) == (37, 53, 1)
    colour = cv2.imencode(".jpg", RNG.integers(0, 256, (70, 61, 3), dtype=np.uint8))[1].tobytes()
    assert jpeg_frame(with_exif_orientation(colour, 6), Path("c.jpg")) == (70, 61, 3)  # past an APP1 segment
    progressive = cv2.imencode(".jpg", random_plane(20, 30), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert b"\xff\xc2" in progressive and jpeg_frame(progressive, Path("p.jpg")) == (20, 30, 1)


def test_jpeg_without_a_frame_header_is_named(tmp_path: Path):
    data = (DATA / f"{SAMPLE_ID}_red.jpg").read_bytes()
    sof = data.index(b"\xff\xc0")
    (tmp_path / "X_red.jpg").write_bytes(data[:sof] + b"\xff\xd9")  # the segments before SOF, then EOI
    with pytest.raises(ImageError, match=r"X_red\.jpg: no JPEG frame header \(SOF marker\)"):
        decode_hpav18_jpeg(tmp_path / "X_red.jpg", "red", 512)


@pytest.mark.parametrize(
    "side,size,factor",
    [(2048, 512, 4), (1728, 512, 2), (1728, 1024, 1), (2048, 1024, 2), (2048, 256, 8), (1728, 216, 8)]
    + [(1728, 217, 4), (2047, 256, 8), (2049, 257, 8), (512, 512, 1), (100, 512, 1)],
)
def test_reduced_factor_keeps_at_least_the_target_side(side, size, factor):
    assert reduced_factor(side, size) == factor


def full_decode_at(size: int) -> np.ndarray:
    """The real field through the full decode, each plane INTER_AREA-resized: the shards' rule, by hand."""
    out = []
    for c, plane in [("red", [2]), ("green", [1]), ("blue", [0]), ("yellow", [2, 1])]:
        bgr = cv2.imread(str(DATA / f"{SAMPLE_ID}_{c}.jpg"), cv2.IMREAD_UNCHANGED).astype(np.int32)
        p = ((bgr[:, :, plane].sum(-1) + len(plane) - 1) // len(plane)).astype(np.uint8)
        out.append(cv2.resize(p, (size, size), interpolation=cv2.INTER_AREA))
    return np.stack(out, axis=-1)


def test_reduced_decode_off_is_the_full_decode_on_the_real_field():
    for size in (512, 1024):
        assert np.array_equal(read_rgby(DATA, SAMPLE_ID, "jpg", size), full_decode_at(size)), size
    # factor 1 (1728 px to 1024: half would be 864 px) decodes in full with the option on too
    assert np.array_equal(read_rgby(DATA, SAMPLE_ID, "jpg", 1024, reduced_decode=True), full_decode_at(1024))


def test_reduced_decode_on_the_real_field_is_half_scale_and_close_to_the_full_decode():
    path = DATA / f"{SAMPLE_ID}_green.jpg"
    frames: list[tuple[int, int]] = []
    assert decode_hpav18_jpeg(path, "green", 512, frames).shape == (864, 864)  # 1728 / 2
    assert frames == [(1728, 1728)]
    sources: list[int] = []
    reduced = read_rgby(DATA, SAMPLE_ID, "jpg", 512, source_sizes=sources, reduced_decode=True)
    assert sources == [1728]  # the side as stored: the small-field warning is about it
    half = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_REDUCED_COLOR_2)
    assert np.array_equal(reduced[:, :, 1], cv2.resize(half[:, :, 1], (512, 512), interpolation=cv2.INTER_AREA))
    diff = np.abs(reduced.astype(np.int32) - full_decode_at(512)).reshape(-1, 4)
    # Measured (docs/usage.md): mean 0.37 0.56 0.11 0.55, max 11 12 8 14 grey levels (R G B Y).
    assert 0 < diff.max() <= 16 and (diff.mean(0) < 0.75).all(), (diff.mean(0), diff.max(0))


def test_reduced_decode_of_2048_px_to_512_skips_the_resize(tmp_path: Path):
    rgby = cv2.resize(RNG.integers(0, 256, (64, 64, 4), dtype=np.uint8), (2048, 2048))
    write_hpav18_jpeg(tmp_path, "X", rgby)
    assert decode_hpav18_jpeg(tmp_path / "X_red.jpg", "red", 512).shape == (512, 512)  # 1/4 scale
    bgr = cv2.imdecode(np.fromfile(tmp_path / "X_blue.jpg", np.uint8), cv2.IMREAD_REDUCED_COLOR_4)
    out = read_rgby(tmp_path, "X", "jpg", 512, reduced_decode=True)
    assert out.shape == (512, 512, 4) and np.array_equal(out[:, :, 2], bgr[:, :, 0])


def test_reduced_decode_ignores_exif_orientation_as_the_full_decode_does(tmp_path: Path):
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, :16, 2], img[:8, :, 1] = 200, 150  # a red band on the left, a green one at the top: not symmetric
    plain = cv2.imencode(".jpg", img)[1].tobytes()
    (tmp_path / "plain.jpg").write_bytes(plain)
    (tmp_path / "rotated.jpg").write_bytes(with_exif_orientation(plain, 6))
    for color in ("red", "green"):
        for min_side in (None, 32):  # full, then half scale
            rotated = decode_hpav18_jpeg(tmp_path / "rotated.jpg", color, min_side)
            assert np.array_equal(rotated, decode_hpav18_jpeg(tmp_path / "plain.jpg", color, min_side))


def test_reduced_decode_is_for_rgb_jpegs_only(tmp_path: Path):
    write_png_set(tmp_path)
    with pytest.raises(ValueError, match="reduced_decode applies to jpg sources only, not png"):
        read_rgby(tmp_path, "X", "png", 20, reduced_decode=True)
    cv2.imwrite(str(tmp_path / "grey.jpg"), random_plane(64, 64))
    with pytest.raises(ImageError, match=r"grey\.jpg: expected an RGB JPEG, got 1 colour component"):
        decode_hpav18_jpeg(tmp_path / "grey.jpg", "red", 32)


def test_shard_spec_reduced_decode_reaches_the_shard_rows(tmp_path: Path):
    """ShardSpec.reduced_decode (the shard job's datasets[].reduced_decode) is the decode the rows come from."""
    import h5py

    from hpaflow.shards import ShardSpec, write_shard

    rows = {}
    for reduced in (False, True):
        spec = ShardSpec("hpav18", "jpg", str(DATA), "test", 512, reduced_decode=reduced)
        write_shard(tmp_path / f"{reduced}.h5", spec, [SAMPLE_ID], None)
        with h5py.File(tmp_path / f"{reduced}.h5") as h5:
            rows[reduced] = h5["images"][0]
    assert np.array_equal(rows[False], full_decode_at(512))
    assert np.array_equal(rows[True], read_rgby(DATA, SAMPLE_ID, "jpg", 512, reduced_decode=True))
    assert not np.array_equal(rows[True], rows[False])
