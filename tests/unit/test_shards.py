"""Shard writer: contents against the decoded source, tiling, and no file left after bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from hpaflow.data import ShardRows
from hpaflow.h5names import FormatError
from hpaflow.io import ImageError
from hpaflow.layout import shard_count, shard_slice
from hpaflow.shards import ShardSpec, content_fingerprint, read_fields, read_shard, write_shard

COLORS = ["red", "green", "blue", "yellow"]


def make_pngs(d: Path, ids, size=48, seed=0):
    rng = np.random.default_rng(seed)
    src = {}
    for i in ids:
        planes = [rng.integers(0, 256, (size, size), dtype=np.uint8) for _ in COLORS]
        for c, p in zip(COLORS, planes):
            cv2.imwrite(str(d / f"{i}_{c}.png"), p)
        src[i] = planes
    return src


def spec(d: Path, **kw) -> ShardSpec:
    base = dict(dataset="ds", fmt="png", images_dir=str(d), role="train", image_size=32)
    return ShardSpec(**{**base, **kw})


def test_shard_slices_cover_every_id_once():
    n, size = 1003, 100
    rows = [r for k in range(shard_count(n, size)) for r in range(n)[shard_slice(k, n, size)]]
    assert rows == list(range(n)) and shard_count(n, size) == 11
    with pytest.raises(ValueError):
        shard_slice(11, n, size)


@pytest.mark.parametrize("compression", ["none", "lzf", "gzip"])
def test_contents_match_resized_source(tmp_path, compression):
    ids = ["a", "b", "c"]
    src = make_pngs(tmp_path, ids)
    labels = np.eye(28, dtype=np.uint8)[[0, 5, 27]]
    out = tmp_path / "out" / "0.h5"
    write_shard(out, spec(tmp_path, compression=compression), ids, labels)
    s = read_shard(out)
    assert s.images.shape == (3, 32, 32, 4) and s.images.dtype == np.uint8
    for row, i in enumerate(ids):
        for k in range(4):
            expected = cv2.resize(src[i][k], (32, 32), interpolation=cv2.INTER_AREA)
            assert np.array_equal(s.images[row, :, :, k], expected)
    assert list(s.ids) == ids and np.array_equal(s.labels, labels)
    assert s.attrs["channel_order"] == "RGBY" and s.attrs["image_size"] == 32
    with h5py.File(out) as h5:
        assert h5["images"].chunks == (1, 32, 32, 4)


def test_grid_tiles_reassemble(tmp_path):
    src = make_pngs(tmp_path, ["a"], size=64)
    out = tmp_path / "t.h5"
    write_shard(out, spec(tmp_path, role="test", image_size=48, tiling="grid", tile_size=16), ["a"], None)
    s = read_shard(out)
    assert s.images.shape == (9, 16, 16, 4) and list(s.ids) == ["a"] * 9 and s.labels is None
    full = np.zeros((48, 48, 4), np.uint8)
    for tile, (y, x) in zip(s.images, s.tile_origin):
        full[y : y + 16, x : x + 16] = tile
    expected = np.stack([cv2.resize(p, (48, 48), interpolation=cv2.INTER_AREA) for p in src["a"]], -1)
    assert np.array_equal(full, expected)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda d: (d / "b_blue.png").unlink(), r"b_blue\.png: missing file"),
        (lambda d: (d / "b_red.png").write_bytes((d / "b_red.png").read_bytes()[:100]), r"b_red\.png: truncated PNG"),
        (lambda d: (d / "b_red.png").write_bytes(b"garbage" * 50), r"b_red\.png: not a PNG"),
        (lambda d: cv2.imwrite(str(d / "b_green.png"), np.zeros((40, 40), np.uint8)), r"Id b: channels differ in size"),
    ],
)
def test_bad_image_fails_and_leaves_nothing(tmp_path, damage, message):
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    make_pngs(img_dir, ["a", "b", "c"])
    damage(img_dir)
    out_dir = tmp_path / "out"
    with pytest.raises(ImageError, match=message) as e:
        write_shard(out_dir / "0.h5", spec(img_dir), ["a", "b", "c"], np.zeros((3, 28), np.uint8))
    assert "1 of 3 image(s) failed" in str(e.value)
    assert list(out_dir.iterdir()) == []  # neither the shard nor a temporary file


def test_all_failures_are_listed(tmp_path):
    make_pngs(tmp_path, ["a"])
    with pytest.raises(ImageError) as e:
        write_shard(tmp_path / "0.h5", spec(tmp_path), ["a", "x", "y"], np.zeros((3, 28), np.uint8))
    assert "2 of 3 image(s) failed" in str(e.value)
    assert "x_red.png: missing file" in str(e.value) and "y_red.png: missing file" in str(e.value)


def test_content_fingerprint_follows_ids_and_pixels_not_shard_boundaries_or_codec(tmp_path):
    ids = [f"i{k}" for k in range(20)]  # more than one write block
    make_pngs(tmp_path, ids)
    labels = np.eye(28, dtype=np.uint8)[np.arange(20) % 28]
    write_shard(tmp_path / "a.h5", spec(tmp_path), ids, labels)
    whole = content_fingerprint([str(tmp_path / "a.h5")])
    assert len(whole) == 64
    # The same images in other shards (another shard_size), in another order, with another codec: the same.
    lzf = spec(tmp_path, compression="lzf")
    write_shard(tmp_path / "b0.h5", lzf, ids[13:], labels[13:])
    write_shard(tmp_path / "b1.h5", spec(tmp_path), ids[:13], labels[:13], 1)
    assert content_fingerprint([str(tmp_path / "b0.h5"), str(tmp_path / "b1.h5")]) == whole
    # Labels are the fingerprint's own part (train.job_fingerprint), not the images'.
    changed_label = labels.copy()
    changed_label[7, 3] ^= 1
    write_shard(tmp_path / "c.h5", spec(tmp_path), ids, changed_label)
    assert content_fingerprint([str(tmp_path / "c.h5")]) == whole
    # Another Id or one changed pixel: another fingerprint.
    write_shard(tmp_path / "d.h5", spec(tmp_path), ids[:19] + ["i0"], labels)
    cv2.imwrite(str(tmp_path / "i19_red.png"), np.zeros((48, 48), np.uint8))
    write_shard(tmp_path / "e.h5", spec(tmp_path), ids, labels)
    changed = {content_fingerprint([str(tmp_path / f"{n}.h5")]) for n in "de"}
    assert len(changed) == 2 and whole not in changed
    with h5py.File(tmp_path / "e.h5") as h5:
        assert h5.attrs["format_version"] == 2 and h5["row_digests"].dtype == np.uint64


def test_a_shard_of_another_format_is_refused_with_what_to_rerun(tmp_path):
    make_pngs(tmp_path, ["a"])
    write_shard(tmp_path / "a.h5", spec(tmp_path), ["a"], np.zeros((1, 28), np.uint8))
    with h5py.File(tmp_path / "a.h5", "a") as h5:
        h5.attrs["format_version"] = 1
    for read in (content_fingerprint, read_fields, ShardRows.from_files):
        with pytest.raises(
            FormatError,
            match=r"a\.h5: a shard file of format 1; this workflow reads format 2: "
            r"snakemake --forcerun shard",
        ):
            read([str(tmp_path / "a.h5")])


def test_shard_warns_once_about_12_bit_tiffs(tmp_path, caplog):
    import tifffile

    rng = np.random.default_rng(0)
    for i in ["a", "b"]:
        for c in COLORS:
            tifffile.imwrite(tmp_path / f"{i}_{c}.tif", rng.integers(0, 4096, (40, 40), dtype=np.uint16))
    with caplog.at_level("WARNING", logger="hpaflow"):
        write_shard(
            tmp_path / "s.h5", spec(tmp_path, fmt="tiff", image_size=40), ["a", "b"], np.zeros((2, 28), np.uint8)
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "all 8 uint16 planes peak at 4095" in warnings[0], warnings
    caplog.clear()
    with caplog.at_level("WARNING", logger="hpaflow"):
        write_shard(
            tmp_path / "t.h5",
            spec(tmp_path, fmt="tiff", image_size=40, bits=12),
            ["a", "b"],
            np.zeros((2, 28), np.uint8),
        )
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert read_shard(tmp_path / "s.h5").images.max() == 16 and read_shard(tmp_path / "t.h5").images.max() == 255
