"""Source folders as they are on disk: extensions in any case, ignored entries counted, ambiguous or
unreadable channel files named; small fields and 8-bit values in 16-bit files warned about."""

from __future__ import annotations

import copy
import logging
import os
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import yaml

from conftest import REPO
from hpaflow import layout  # by attribute, so that each test fails on its own where the API is missing
from hpaflow.config import ConfigError, validate_config
from hpaflow.io import ImageError, read_rgby
from hpaflow.shards import ShardSpec, read_shard, write_shard

COLORS = ("red", "green", "blue", "yellow")
SCHEMA = REPO / "config" / "schemas" / "config.schema.yaml"
DEMO = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
RNG = np.random.default_rng(7)


def planes(size: int = 16) -> np.ndarray:
    return RNG.integers(0, 256, (size, size, 4), dtype=np.uint8)


def write_png(folder: Path, image_id: str, suffixes: tuple[str, ...], size: int = 16) -> np.ndarray:
    """Four gray PNGs, channel c named with suffixes[c] (or suffixes[0] for all); their pixels (H, W, 4)."""
    folder.mkdir(parents=True, exist_ok=True)
    img = planes(size)
    for c, color in enumerate(COLORS):
        suffix = suffixes[c] if len(suffixes) > 1 else suffixes[0]
        ok, data = cv2.imencode(".png", img[:, :, c])
        (folder / f"{image_id}_{color}{suffix}").write_bytes(data.tobytes())
    return img


def write_tiff(folder: Path, image_id: str, suffix: str, dtype=np.uint8) -> np.ndarray:
    folder.mkdir(parents=True, exist_ok=True)
    img = planes()
    for c, color in enumerate(COLORS):
        tifffile.imwrite(folder / f"{image_id}_{color}{suffix}", img[:, :, c].astype(dtype))
    return img


def test_png_extensions_in_any_case_are_listed_and_read(tmp_path):
    """.png, .PNG and .Png: every Id listed with its names as on disk, and read pixel for pixel."""
    folder = tmp_path / "png"
    lower = write_png(folder, "a", (".png",))
    upper = write_png(folder, "b", (".PNG",))
    mixed = write_png(folder, "c", (".Png", ".png", ".PNG", ".pNg"))
    assert layout.find_ids(folder, "png") == ["a", "b", "c"]
    listing = layout.list_channels(folder, "png")
    assert listing.ids == ["a", "b", "c"]
    assert listing.files["b"] == ("b_red.PNG", "b_green.PNG", "b_blue.PNG", "b_yellow.PNG")
    assert listing.paths("c") == [folder / n for n in ("c_red.Png", "c_green.png", "c_blue.PNG", "c_yellow.pNg")]
    assert (listing.hidden, listing.subfolders, listing.other) == (0, 0, 0)
    for image_id, img in (("a", lower), ("b", upper), ("c", mixed)):
        assert np.array_equal(read_rgby(folder, image_id, "png"), img), image_id
    assert layout.channel_path(folder, "b", "red", "png") == folder / "b_red.PNG"
    assert layout.channel_path(folder, "c", "yellow", "png") == folder / "c_yellow.pNg"  # found by the scan
    assert layout.channel_path(folder, "z", "red", "png") == folder / "z_red.png"  # none: the canonical name


def test_tiff_and_jpeg_extensions_in_any_case(tmp_path):
    """.tif/.tiff/.TIF/.TIFF and .jpg/.jpeg/.JPG/.JPEG are the formats' files; read as the canonical name is."""
    suffixes = [".tif", ".TIF", ".tiff", ".TIFF", ".TiFf"]
    tiffs = {suffix: write_tiff(tmp_path / "tiff", f"t{k}", suffix) for k, suffix in enumerate(suffixes)}
    for k, (suffix, img) in enumerate(tiffs.items()):
        assert np.array_equal(read_rgby(tmp_path / "tiff", f"t{k}", "tiff"), img), suffix
    assert layout.find_ids(tmp_path / "tiff", "tiff") == [f"t{k}" for k in range(len(suffixes))]

    jpg = tmp_path / "jpg"
    jpg.mkdir()
    rgb = RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", rgb)
    suffixes = [".jpg", ".JPG", ".jpeg", ".JPEG", ".Jpeg"]
    for k, suffix in enumerate(suffixes):
        for color in COLORS:
            (jpg / f"j{k}_{color}{suffix}").write_bytes(data.tobytes())
    canonical = read_rgby(jpg, "j0", "jpg")
    assert canonical.std() > 0
    for k in range(1, len(suffixes)):
        assert np.array_equal(read_rgby(jpg, f"j{k}", "jpg"), canonical), suffixes[k]
    assert layout.find_ids(jpg, "jpg") == [f"j{k}" for k in range(len(suffixes))]


def test_dot_files_and_subfolders_are_ignored_and_counted(tmp_path):
    """macOS `._x_red.png`, `.DS_Store` and subfolders (even of channel files) are no Ids; each kind counted."""
    folder = tmp_path / "png"
    write_png(folder, "a", (".png",))
    for name in ("._a_red.png", "._a_green.png", ".DS_Store", "notes.txt", "c_purple.png", "d_red.jpg"):
        (folder / name).write_bytes(b"\0\0")
    write_png(folder / "sub", "s", (".png",))
    (folder / "empty").mkdir()
    (folder / ".hidden_dir").mkdir()
    assert layout.find_ids(folder, "png") == ["a"]
    listing = layout.list_channels(folder, "png")
    assert (listing.hidden, listing.subfolders, listing.other) == (4, 2, 3)
    assert listing.summary() == f"{folder}: 1 Ids; ignored 4 dot-file(s), 2 subfolder(s), 3 other file(s)"
    (folder / "a_red.png").unlink()
    for color in ("green", "blue", "yellow"):
        (folder / f"a_{color}.png").unlink()
    with pytest.raises(ValueError, match=re.escape(f"{folder}: no png channel files")) as e:
        layout.list_channels(folder, "png")
    assert str(e.value).endswith("found (4 dot-file(s), 2 subfolder(s) ignored)")


@pytest.mark.parametrize("first,second", [(".tif", ".tiff"), (".tif", ".TIF"), (".TIFF", ".tiff")])
def test_two_files_for_one_channel_are_named(tmp_path, first, second):
    write_tiff(tmp_path, "x", first)
    shutil.copy(tmp_path / f"x_green{first}", tmp_path / f"x_green{second}")
    both = f"{tmp_path / f'x_green{first}'} and {tmp_path / f'x_green{second}'}"
    both_sorted = " and ".join(sorted(both.split(" and ")))  # named in the folder's sorted order
    message = f"{tmp_path}: 1 channel(s) given by two files (keep one of each): {both_sorted}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        layout.find_ids(tmp_path, "tiff")


def test_png_in_two_cases_for_one_channel_is_named(tmp_path):
    write_png(tmp_path, "x", (".png",))
    shutil.copy(tmp_path / "x_red.png", tmp_path / "x_red.PNG")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'x_red.PNG'} and {tmp_path / 'x_red.png'}")):
        layout.find_ids(tmp_path, "png")


def test_unreadable_channel_files_are_named(tmp_path):
    """A broken symlink or a directory under a channel's name stops the listing, named, with why."""
    folder = tmp_path / "png"
    write_png(folder, "a", (".png",))
    write_png(folder, "b", (".png",))
    (folder / "a_red.png").unlink()
    (folder / "a_red.png").symlink_to(tmp_path / "gone.png")
    (folder / "b_green.png").unlink()
    (folder / "b_green.png").mkdir()
    message = (
        f"{folder}: 2 channel file(s) cannot be read: {folder / 'a_red.png'} (broken symbolic link to "
        f"{tmp_path / 'gone.png'}), {folder / 'b_green.png'} (a directory)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        layout.find_ids(folder, "png")
    # The reader (training datasets, listed by their csv) names the link too.
    with pytest.raises(ImageError, match=re.escape(f"{folder / 'a_red.png'}: broken symbolic link to")):
        read_rgby(folder, "a", "png")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without read permission")
def test_channel_file_without_read_permission_is_named(tmp_path):
    write_png(tmp_path, "a", (".png",))
    (tmp_path / "a_blue.png").chmod(0)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'a_blue.png'} (no read permission)")):
        layout.find_ids(tmp_path, "png")


def test_missing_channel_is_named_with_its_siblings_extension(tmp_path):
    write_png(tmp_path, "a", (".PNG",))
    (tmp_path / "a_yellow.PNG").unlink()
    with pytest.raises(
        ValueError, match=re.escape(f"missing (each Id needs red, green, blue and yellow): {tmp_path / 'a_yellow.PNG'}")
    ):
        layout.find_ids(tmp_path, "png")


def test_small_fields_are_counted_and_warned_once_per_shard(tmp_path, caplog):
    """Sources under half of image_size (32 px): 8 and 15 px are, 16 px (exactly half) and 40 px are not."""
    for image_id, size in (("a", 8), ("b", 16), ("c", 40), ("d", 15)):
        write_png(tmp_path / "png", image_id, (".png",), size)
    spec = ShardSpec(dataset="plate", fmt="png", images_dir=str(tmp_path / "png"), role="test", image_size=32)
    caplog.set_level(logging.WARNING, logger="hpaflow")
    write_shard(tmp_path / "s.h5", spec, ["a", "b", "c", "d"], None, 3)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "dataset plate, shard 3: 2 of 4 fields are smaller than half of image_size 32 px (smallest 8 px), "
        "enlarged over 2x: are they crops or thumbnails?"
    ]
    assert read_shard(tmp_path / "s.h5").images.shape == (4, 32, 32, 4)
    caplog.clear()
    write_shard(tmp_path / "t.h5", spec, ["b", "c"], None, 4)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_bits_8_is_allowed_for_datasets_and_classify():
    cfg = copy.deepcopy(DEMO)
    cfg["datasets"][1]["bits"] = 8
    cfg["classify"] = {"name": "plate", "images": "/data/new", "format": "tiff", "bits": 8}
    checked = validate_config(cfg, SCHEMA)
    assert checked["datasets"][1]["bits"] == 8 and checked["classify"]["bits"] == 8
    cfg["classify"]["bits"] = 7
    with pytest.raises(ConfigError, match=r"classify\.bits: 7 is less than the minimum of 8"):
        validate_config(cfg, SCHEMA)


def eight_bit_tiffs(folder: Path) -> np.ndarray:
    """uint16 TIFFs holding 8-bit values (0..255, peak 255)."""
    img = write_tiff(folder, "a", ".tif", np.uint16)
    img[0, 0, 0] = 255
    tifffile.imwrite(folder / "a_red.tif", img[:, :, 0].astype(np.uint16))
    return img


def test_8_bit_values_in_16_bit_files_warn_naming_the_key_and_read_exactly_with_bits_8(tmp_path, caplog):
    img = eight_bit_tiffs(tmp_path)
    caplog.set_level(logging.WARNING, logger="hpaflow")
    spec = ShardSpec(
        dataset="fullsize_train",
        fmt="tiff",
        images_dir=str(tmp_path),
        role="test",
        image_size=16,
        bits_key="datasets[1].bits",
    )
    write_shard(tmp_path / "16.h5", spec, ["a"], None, 0)
    assert [r.getMessage() for r in caplog.records] == [
        "dataset fullsize_train, shard 0: all 4 uint16 planes peak at 255 (< 256): 8-bit values in 16-bit files? "
        "Mapped over the full 16-bit range they come out 257x dimmer; set `datasets[1].bits: 8`"
    ]
    caplog.clear()
    write_shard(tmp_path / "8.h5", ShardSpec(**{**spec.__dict__, "bits": 8}), ["a"], None, 0)
    assert not caplog.records
    assert np.array_equal(read_shard(tmp_path / "8.h5").images[0], img)
