"""Shard writer: contents against the decoded source, tiling, and no file left after bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from conftest import REPO
from hpaflow import h5names as h5n
from hpaflow import versions
from hpaflow.data import ShardDataset, ShardRows
from hpaflow.h5names import FormatError
from hpaflow.io import ImageError
from hpaflow.layout import shard_count, shard_slice
from hpaflow.shards import (
    COMPRESSIONS,
    ShardSpec,
    content_fingerprint,
    read_fields,
    read_shard,
    write_shard,
)

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


@pytest.mark.parametrize("compression", list(COMPRESSIONS))
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
        assert versions.read_stamp(h5.attrs) == versions.environment_versions()  # what wrote it


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
    # Every codec: the same row digests and fingerprint as uncompressed shards of the same images.
    with h5py.File(tmp_path / "a.h5") as h5:
        digests = h5["row_digests"][...]
    for name in COMPRESSIONS:
        write_shard(tmp_path / f"codec_{name}.h5", spec(tmp_path, compression=name), ids, labels)
        with h5py.File(tmp_path / f"codec_{name}.h5") as h5:
            assert np.array_equal(h5["row_digests"][...], digests), name
        assert content_fingerprint([str(tmp_path / f"codec_{name}.h5")]) == whole, name
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


def make_compressible_pngs(d: Path, ids, size=32, seed=0) -> None:
    """Planes of random rows, each repeated 8 times: every codec compresses them (random planes would be
    stored as they are, the codec never decoding), and no two rows of an image are alike by chance."""
    rng = np.random.default_rng(seed)
    for i in ids:
        for c in COLORS:
            cv2.imwrite(str(d / f"{i}_{c}.png"), np.repeat(rng.integers(0, 256, (size // 8, size), np.uint8), 8, 0))


# What each codec name stands for: its HDF5 filter (h5py's name, or hdf5plugin's registered id) and the options
# that make it that codec (hdf5plugin's codes: blosc compressor 1 lz4, 5 zstd; bitshuffle 2 lz4; shuffle 0 none).
CODEC_FILTERS = {
    "none": (None, lambda o: True),
    "lzf": ("lzf", lambda o: True),
    "gzip": ("gzip", lambda o: o == 4),
    "blosc_lz4": ("32001", lambda o: (o[4], o[5], o[6]) == (9, 0, 1)),
    # blosc2: filter value 1 is the block size: one block per chunk (32 x 32 x 4 bytes here)
    "blosc2_lz4": ("32026", lambda o: (o[5], o[6]) == (0, 1) and o[1] >= 32 * 32 * 4),
    "blosc2_zstd": ("32026", lambda o: (o[5], o[6]) == (0, 5) and o[1] >= 32 * 32 * 4),
    "bitshuffle_lz4": ("32008", lambda o: o[4] == 2),
}


@pytest.mark.parametrize("compression", list(COMPRESSIONS))
def test_every_codec_is_its_filter_and_reads_back_bit_identical_to_none(tmp_path, compression):
    assert set(CODEC_FILTERS) == set(COMPRESSIONS)
    ids = ["a", "b", "c"]
    make_compressible_pngs(tmp_path, ids)
    labels = np.eye(28, dtype=np.uint8)[[0, 5, 27]]
    write_shard(tmp_path / "none.h5", spec(tmp_path, compression="none"), ids, labels)
    write_shard(tmp_path / "c.h5", spec(tmp_path, compression=compression), ids, labels)
    plain, coded = read_shard(tmp_path / "none.h5"), read_shard(tmp_path / "c.h5")
    assert np.array_equal(coded.images, plain.images) and coded.images.dtype == np.uint8
    assert list(coded.ids) == ids and np.array_equal(coded.labels, labels)
    # The training path too: random single rows through ShardDataset.
    ds = ShardDataset(ShardRows.from_files([tmp_path / "c.h5"]), 32)
    for i in [2, 0, 1]:
        assert np.array_equal(ds[i][0].numpy().transpose(1, 2, 0), plain.images[i])
    with h5py.File(tmp_path / "c.h5") as h5:
        images = h5[h5n.IMAGES]
        name, options_ok = CODEC_FILTERS[compression]
        assert list(images._filters) == ([] if name is None else [name])
        assert name is None or options_ok(images._filters[name]), images._filters
        # Compressed for real, so that reading decoded every chunk (lz4 codecs store about 1/8 of these rows).
        raw = images.size * images.dtype.itemsize
        assert images.id.get_storage_size() == raw if name is None else images.id.get_storage_size() < raw / 2


def test_a_shard_written_by_plain_h5py_without_filters_still_reads(tmp_path):
    """Shards are plain HDF5: one written by hand in the current format, no codec, reads as before."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 16, 16, 4), np.uint8)
    labels = np.eye(28, dtype=np.uint8)[[1, 2, 3]]
    with h5py.File(tmp_path / "s.h5", "w") as h5:
        h5.create_dataset(h5n.IMAGES, data=images, chunks=(1, 16, 16, 4))
        h5.create_dataset(h5n.IDS, data=np.array(["a", "b", "c"], object), dtype=h5py.string_dtype())
        h5.create_dataset(h5n.TILE_ORIGIN, data=np.zeros((3, 2), np.int32))
        h5.create_dataset(h5n.HASHES, data=np.zeros((3, 4), np.uint64))
        h5.create_dataset(h5n.ROW_DIGESTS, data=np.zeros(3, np.uint64))
        h5.create_dataset(h5n.LABELS, data=labels)
        h5.attrs.update({h5n.FORMAT: h5n.SHARD_FORMAT, "image_size": 16, "tiling": "none"})
    s = read_shard(tmp_path / "s.h5")
    assert np.array_equal(s.images, images) and list(s.ids) == ["a", "b", "c"] and np.array_equal(s.labels, labels)
    rows = ShardRows.from_files([tmp_path / "s.h5"])
    assert np.array_equal(ShardDataset(rows, 16)[1][0].numpy().transpose(1, 2, 0), images[1])


# Each reader of shards as its rule script imports it, in a fresh interpreter (this module has imported
# hpaflow.shards, which would register the filters for any reader): the rows it reads, as uint8 (N, S, S, 4).
READERS = {
    "classify": (
        "from hpaflow.classify import shard_batches\nrows = np.concatenate([r for _, r in shard_batches(files, 32, 2)])"
    ),
    "classify_gallery": "from hpaflow.gallery import shard_images\nrows = np.stack(shard_images(files, ids))",
    "export": (
        "from hpaflow.data import ShardDataset, ShardRows\nfrom hpaflow.export import shard_size\n"
        "ds = ShardDataset(ShardRows.from_files(files), shard_size(files))\n"
        "rows = np.stack([ds[i][0].numpy().transpose(1, 2, 0) for i in range(len(ds))])"
    ),
    "predict": (
        "from hpaflow.predict import ShardDataset, ShardRows\nds = ShardDataset(ShardRows.from_files(files), 32)\n"
        "rows = np.stack([ds[i][0].numpy().transpose(1, 2, 0) for i in range(len(ds))])"
    ),
    "h5py alone": "import h5py\nrows = np.concatenate([h5py.File(f)['images'][...] for f in files])",
}


def read_in_fresh_interpreter(reader: str, files: list[Path], ids: list[str], out: Path) -> subprocess.CompletedProcess:
    code = "import json, sys\nimport numpy as np\nfiles, ids = json.loads(sys.argv[1]), json.loads(sys.argv[2])\n"
    code += READERS[reader] + "\nnp.save(sys.argv[3], rows)\n"
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow_scripts")}
    args = [json.dumps([str(f) for f in files]), json.dumps(ids), str(out)]
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)


def test_every_reader_of_shards_reads_a_compressed_one_by_itself(tmp_path):
    """classify, its gallery (and plots), export and predict (and train, embed: hpaflow.data) register
    hdf5plugin's filters themselves; h5py alone reads uncompressed shards (plain HDF5) but not blosc ones."""
    ids = ["a", "b", "c"]
    make_compressible_pngs(tmp_path, ids, seed=2)
    write_shard(tmp_path / "blosc.h5", spec(tmp_path, role="test", compression="blosc_lz4"), ids, None)
    write_shard(tmp_path / "none.h5", spec(tmp_path, role="test"), ids, None)
    expected = read_shard(tmp_path / "none.h5").images
    for reader in READERS:
        proc = read_in_fresh_interpreter(reader, [tmp_path / "blosc.h5"], ids, tmp_path / f"{reader}.npy")
        if reader == "h5py alone":
            # HDF5 looks for the blosc filter in its plugin folder, finds none and h5py raises OSError
            assert proc.returncode != 0 and "OSError: Can't synchronously read data" in proc.stderr, proc.stderr[-2000:]
            proc = read_in_fresh_interpreter(reader, [tmp_path / "none.h5"], ids, tmp_path / f"{reader}.npy")
        assert proc.returncode == 0, f"{reader}: {proc.stderr[-2000:]}"
        assert np.array_equal(np.load(tmp_path / f"{reader}.npy"), expected), reader


# --- threads (issue 23): a job decodes, hashes and digests several Ids at once; the shard is the same


def make_12_bit_pngs(d: Path, n: int) -> list[str]:
    """n Ids of 16-bit PNGs holding 12-bit data (each plane peaks at 4095), every 5th a 20 px field (under half
    of a 48 px image_size), the others 64 px."""
    rng = np.random.default_rng(7)
    ids = [f"m{k:02d}" for k in range(n)]
    for k, i in enumerate(ids):
        side = 20 if k % 5 == 0 else 64
        for c in COLORS:
            plane = rng.integers(0, 4096, (side, side), dtype=np.uint16)
            plane[0, 0] = 4095
            cv2.imwrite(str(d / f"{i}_{c}.png"), plane)
    return ids


@pytest.mark.parametrize("tiling,compression", [("none", "none"), ("grid", "lzf")])
def test_shards_written_on_1_2_and_4_threads_are_the_same(tmp_path, caplog, tiling, compression):
    """Images, Ids, origins, pHashes, row digests, labels and attributes equal, whatever the threads; the
    warnings count over all Ids (merged from the threads) and the progress log reaches every Id. Raw chunks
    (none) and filtered blocks (lzf), whole rows and tiles."""
    from hpaflow.hashing import phash_rgby
    from hpaflow.io import Uint16Scaling, read_rgby
    from hpaflow.shards import cut_tiles, row_digest

    ids = make_12_bit_pngs(tmp_path, 40)  # more than a write block (16) and than the Ids in flight (8 on 4)
    labels = np.eye(28, dtype=np.uint8)[np.arange(40) % 28]
    grid = {"tiling": "grid", "tile_size": 16} if tiling == "grid" else {}
    s = spec(tmp_path, image_size=48, compression=compression, **grid)
    cv2_threads = cv2.getNumThreads()
    shards, warnings = {}, {}
    for threads in (1, 2, 4):
        caplog.clear()
        with caplog.at_level("INFO", logger="hpaflow"):
            write_shard(tmp_path / f"{threads}.h5", s, ids, labels, 3, threads=threads)
        warnings[threads] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        progress = [r.getMessage() for r in caplog.records if "images/s" in r.getMessage()]
        assert progress[-1].startswith("shard ds/3: 40/40 (100%)"), progress
        with h5py.File(tmp_path / f"{threads}.h5") as h5:
            shards[threads] = ({k: h5[k][...] for k in h5}, dict(h5.attrs))
        assert cv2.getNumThreads() == cv2_threads  # the job's one cv2 thread is undone
    data, attrs = shards[1]
    assert set(data) == {"images", "ids", "tile_origin", "hashes", "row_digests", "labels"}
    for threads in (2, 4):
        assert shards[threads][0].keys() == data.keys()
        for k in data:
            assert np.array_equal(shards[threads][0][k], data[k]), (threads, k)
        assert shards[threads][1] == attrs and warnings[threads] == warnings[1]
    assert len(warnings[1]) == 2, warnings[1]
    assert "all 160 uint16 planes peak at 4095 (< 4096): 12-bit camera data?" in warnings[1][0]
    assert "8 of 40 fields are smaller than half of image_size 48 px (smallest 20 px)" in warnings[1][1]
    # Known answers: each Id's rows as read_rgby and cut_tiles make them, their image's pHashes, their digests.
    per = 9 if grid else 1
    for k, image_id in enumerate(ids):
        rows = slice(k * per, (k + 1) * per)
        rgby = read_rgby(tmp_path, image_id, "png", 48, Uint16Scaling())
        tiles, origins = cut_tiles(rgby, s)
        assert np.array_equal(data["images"][rows], tiles) and np.array_equal(data["tile_origin"][rows], origins)
        assert (data["hashes"][rows] == phash_rgby(rgby)).all()
        assert data["row_digests"][rows].tolist() == [row_digest(t) for t in tiles]
        assert {x.decode() for x in data["ids"][rows]} == {image_id}
        assert (data["labels"][rows] == labels[k]).all()


def test_threaded_shard_lists_every_failure_in_id_order_and_leaves_nothing(tmp_path):
    ids = make_12_bit_pngs(tmp_path, 30)
    for k in (0, 13, 29):  # the first, one in the middle, the last
        (tmp_path / f"{ids[k]}_green.png").unlink()
    (tmp_path / f"{ids[7]}_red.png").write_bytes(b"garbage" * 50)
    out = tmp_path / "out"
    out.mkdir()
    labels = np.zeros((30, 28), np.uint8)
    for threads in (1, 4):
        with pytest.raises(ImageError) as e:
            write_shard(out / "0.h5", spec(tmp_path, image_size=48), ids, labels, threads=threads)
        lines = str(e.value).splitlines()
        assert lines[0] == "dataset ds, shard 0: 4 of 30 image(s) failed the check; no shard written:"
        assert [line.strip() for line in lines[1:]] == [
            f"{tmp_path / 'm00_green.png'}: missing file",
            f"{tmp_path / 'm07_red.png'}: not a PNG file",
            f"{tmp_path / 'm13_green.png'}: missing file",
            f"{tmp_path / 'm29_green.png'}: missing file",
        ]
        assert list(out.iterdir()) == []
    # What is not a bad image (a wrong setting, a bug) stops the job as it comes, leaving nothing either.
    with pytest.raises(ValueError, match="reduced_decode applies to jpg sources only, not png"):
        write_shard(out / "0.h5", spec(tmp_path, image_size=48, reduced_decode=True), ids, labels, threads=4)
    assert list(out.iterdir()) == []
