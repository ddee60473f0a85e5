"""Shard writer: contents against the decoded source, tiling, and no file left after bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from hpaflow.io import ImageError
from hpaflow.shards import ShardSpec, read_shard, shard_count, shard_slice, write_shard

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
        full[y:y + 16, x:x + 16] = tile
    expected = np.stack([cv2.resize(p, (48, 48), interpolation=cv2.INTER_AREA) for p in src["a"]], -1)
    assert np.array_equal(full, expected)


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "b_blue.png").unlink(), r"b_blue\.png: missing file"),
    (lambda d: (d / "b_red.png").write_bytes((d / "b_red.png").read_bytes()[:100]), r"b_red\.png: truncated PNG"),
    (lambda d: (d / "b_red.png").write_bytes(b"garbage" * 50), r"b_red\.png: not a PNG"),
    (lambda d: cv2.imwrite(str(d / "b_green.png"), np.zeros((40, 40), np.uint8)),
     r"Id b: channels differ in size"),
])
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
