"""Classifying new fields with an exported package: the package is checked file by file against its manifest
(folder or zip), fields are found by their channel files, the ONNX graph's probabilities are the PyTorch
ensemble's, the package's thresholds make the labels, and `snakemake classify` runs end to end or stops
with the bad file or key named and no predictions.csv."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO, copy_workflow, plan, run_snakemake
from hpaflow import h5names as h5n
from hpaflow import transforms
from hpaflow.classify import model_input, predict_probs, predictions_table, run_classify, session
from hpaflow.config import ConfigError, coerce_strings, validate_config
from hpaflow.data import ShardDataset, ShardRows
from hpaflow.demo.writers import write_png
from hpaflow.export import (
    EnsembleModule,
    ExportError,
    ExportSettings,
    check_rdf,
    preprocessing,
    write_package,
    zip_package,
)
from hpaflow.gallery import captioned_grid, display_rgb
from hpaflow.io import read_rgby
from hpaflow.labels import CLASS_NAMES
from hpaflow.layout import channel_path, find_ids
from hpaflow.models import build_model
from hpaflow.package import Package, PackageError, write_manifest
from hpaflow.predict import load_checkpoint, load_model, predict_rows
from hpaflow.shards import ShardSpec, read_shard, write_shard
from hpaflow.thresholds import apply
from hpaflow.transforms import CHANNELS

SIZE = 32
SCHEMA = REPO / "config" / "schemas" / "config.schema.yaml"
COLUMNS = ["Id", "Predicted", "Labels", *CLASS_NAMES]


@dataclass
class Tiny:
    folder: Path  # the package as `snakemake export` writes it
    zip: Path  # the same, zipped
    module: EnsembleModule  # what its ensemble.onnx was exported from
    fields: Path  # PNG channel files of FIELD_IDS, at SIZE px
    rgby: np.ndarray  # uint8 (3, SIZE, SIZE, 4), the fields' pixels
    thresholds: np.ndarray  # (28,), as thresholds.json holds them


FIELD_IDS = ["f0", "f1", "f2"]
SETTINGS = ExportSettings(
    [0, 1], "mean", True, [{"name": "d", "format": "png", "bits": 16}], ["A B"], "CC-BY-4.0", 0, "fixed", 0
)
METRICS = {
    "n_train": 10,
    "ensemble": {"f1_cross_fitted": 0.3, "f1_at_0.5": 0.2, "final_method": "per_class"},
    "prior_baseline": {"f1": 0.05},
}


def torch_probs(module: EnsembleModule, rgby: np.ndarray) -> np.ndarray:
    """The PyTorch ensemble on uint8 (N, S, S, 4) rows, as a shard holds them."""
    with torch.no_grad():
        return module(torch.as_tensor(np.ascontiguousarray(rgby.transpose(0, 3, 1, 2)))).numpy()


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Tiny convolutions: torch on one thread for the whole module (conftest)."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Tiny:
    """One random resnet18 member (2 TTA views) exported at 32 px, folder and zip. Its thresholds sit just above
    field f0's probabilities, so f0 passes no threshold (at_least_one gives it its argmax) while f1 and f2,
    brighter, pass some."""
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    module = EnsembleModule([(build_model("resnet18", 3).eval(), "gyb")], [0, 1], "mean", [1.0])
    rng = np.random.default_rng(0)
    rgby = np.stack([(rng.integers(0, 256, (SIZE, SIZE, 4)) * g).astype(np.uint8) for g in (0.2, 0.6, 1.0)])
    fields = root / "fields"
    fields.mkdir()
    for image_id, image in zip(FIELD_IDS, rgby):
        write_png(fields, image_id, image)
    thresholds = np.round(torch_probs(module, rgby)[0].astype(np.float64) + 2e-3, 6)
    folder = root / "pkg"
    sample = rgby.transpose(0, 3, 1, 2)
    diff = write_package(folder, module, SIZE, SETTINGS, thresholds, METRICS, ["m"], 1, sample, shard_size=SIZE)
    assert diff <= 1e-4
    zip_package(folder, root / "pkg.zip")
    return Tiny(folder, root / "pkg.zip", module, fields, rgby, thresholds)


def copied(tiny: Tiny, dest: Path) -> Path:
    return Path(shutil.copytree(tiny.folder, dest))


def edit_thresholds(folder: Path) -> None:
    """One byte of thresholds.json changed (same size), the manifest left as exported."""
    path = folder / "thresholds.json"
    text = path.read_text()
    i = text.index('"thresholds": [') + len('"thresholds": [\n  0')
    assert text[i] == "."  # 0.xxxxxx -> 1.xxxxxx below
    path.write_text(text[: i - 1] + "1" + text[i:])


# --- the package on disk ---------------------------------------------------------------------------------


def test_folder_and_zip_verify_and_read_alike(tiny):
    """Both forms verify and give the same size, class names and thresholds; the graph as a path or as bytes."""
    folder, zipped = Package(tiny.folder), Package(tiny.zip)
    for package in (folder, zipped):
        package.verify()
        assert package.image_size == SIZE
        assert package.classes() == list(CLASS_NAMES)
        values, at_least_one = package.thresholds()
        assert at_least_one is True and values.shape == (28,)
        np.testing.assert_array_equal(values, tiny.thresholds)
    listed = {p.name for p in tiny.folder.iterdir()} - {"manifest.json"}
    assert set(folder.files) == set(zipped.files) == listed
    assert {"ensemble.onnx", "rdf.yaml", "test_input.npy", "cover.png"} <= listed
    assert folder.onnx_source() == str(tiny.folder / "ensemble.onnx")
    assert zipped.onnx_source() == (tiny.folder / "ensemble.onnx").read_bytes()


def test_the_written_description_passes_bioimageio_with_its_files_and_a_mismatch_is_named(tiny, monkeypatch):
    """rdf.yaml as export wrote it passes bioimageio.spec's validation with its files opened (sha256, test tensors
    against the axes), offline; a test tensor whose sha256 differs, or an axis of another size, is named."""
    import httpx

    calls = []
    monkeypatch.setattr(httpx.Client, "send", lambda self, request, *a, **k: calls.append(request.url))
    rdf = yaml.safe_load((tiny.folder / "rdf.yaml").read_text())
    check_rdf(rdf, tiny.folder)
    bad = copy.deepcopy(rdf)
    bad["inputs"][0]["test_tensor"]["sha256"] = "1" * 64
    with pytest.raises(ExportError, match=r"\n  inputs\[0\]\.test_tensor: .*SHA256 mismatch for .*test_input\.npy"):
        check_rdf(bad, tiny.folder)
    bad = copy.deepcopy(rdf)
    bad["inputs"][0]["axes"][2]["size"] = SIZE + 8
    message = re.escape(f"axes[y]: test_tensor axis has incompatible size {{{SIZE}}}") + f".*expected {SIZE + 8}"
    with pytest.raises(ExportError, match=message):
        check_rdf(bad, tiny.folder)
    assert calls == []


@pytest.mark.parametrize("as_zip", [False, True])
def test_a_changed_byte_is_refused_naming_the_file(tiny, tmp_path, as_zip):
    """A thresholds.json edited after export: opening works, verifying (or reading it) names the file."""
    folder = copied(tiny, tmp_path / "pkg")
    edit_thresholds(folder)
    path = folder
    if as_zip:
        path = tmp_path / "pkg.zip"
        zip_package(folder, path)
    package = Package(path)  # opening reads the manifest only
    package.verify(["classes.json", "ensemble.onnx"])  # the other files still match
    message = r"thresholds\.json does not match manifest\.json \(sha256 .*; listed .*\): changed or damaged"
    with pytest.raises(PackageError, match=message):
        package.verify()
    with pytest.raises(PackageError, match=message):
        package.thresholds()  # reading a file checks it first
    assert Package(tiny.folder if not as_zip else tiny.zip).thresholds()[0].shape == (28,)  # the original is intact


@pytest.mark.parametrize("as_zip", [False, True])
def test_a_missing_file_is_named(tiny, tmp_path, as_zip):
    """A file the manifest lists but the package lacks is named as missing."""
    folder = copied(tiny, tmp_path / "pkg")
    (folder / "cover.png").unlink()
    path = folder
    if as_zip:
        path = tmp_path / "pkg.zip"
        zip_package(folder, path)
    with pytest.raises(PackageError, match=r"cover\.png is missing"):
        Package(path).verify()


def member_offset(path: Path, name: str) -> int:
    """Where a zip member's (compressed) data start: after its local header, name and extra field."""
    with zipfile.ZipFile(path) as z:
        at = z.getinfo(name).header_offset
    header = path.read_bytes()[at : at + 30]
    return at + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")


@pytest.mark.parametrize(
    "name,stored",
    [
        ("thresholds.json", True),  # stored data changed: zipfile's CRC check fails
        ("thresholds.json", False),  # deflate stream broken: zlib fails
        ("manifest.json", False),
    ],
)
def test_a_damaged_zip_member_is_refused_naming_the_file(tiny, tmp_path, name, stored):
    """A zip member that cannot be decompressed or fails its CRC is a PackageError naming the member."""
    path = tmp_path / "pkg.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED) as z:
        for f in sorted(tiny.folder.iterdir()):
            if f.name != "ensemble.onnx":  # not needed here, and the biggest
                z.write(f, f.name)
    data = bytearray(path.read_bytes())
    at = member_offset(path, name)
    if stored:
        data[at + 20] ^= 0x01
    else:
        data[at] = 0xFF  # deflate block type 3: reserved, "invalid block type"
    path.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=re.escape(name)) as e:
        Package(path).verify([name])
    if stored:
        assert f"{name} cannot be read (Bad CRC-32" in str(e.value)


def test_what_is_not_a_package_is_refused(tiny, tmp_path):
    """No manifest, not a zip, no such path, files one folder down in the zip: each refused with its reason."""
    folder = copied(tiny, tmp_path / "pkg")
    (folder / "manifest.json").unlink()
    with pytest.raises(PackageError, match=r"no manifest\.json; not a package written by `snakemake export`"):
        Package(folder)
    text = tmp_path / "pkg.zip"
    text.write_text("not a zip\n")
    with pytest.raises(PackageError, match="not a folder or a zip file"):
        Package(text)
    with pytest.raises(PackageError, match="does not exist"):
        Package(tmp_path / "nowhere")
    nested = tmp_path / "nested.zip"  # files under a folder inside the zip: no manifest.json at the top
    with zipfile.ZipFile(nested, "w") as z:
        z.write(tiny.folder / "manifest.json", "pkg/manifest.json")
    with pytest.raises(
        PackageError, match=r"no manifest.json.*the zip holds pkg/manifest.json: zip the package's files"
    ):
        Package(nested)


# --- finding the fields ----------------------------------------------------------------------------------


def touch(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def channels(image_id: str, ext: str, colors=("red", "green", "blue", "yellow")) -> list[str]:
    return [f"{image_id}_{c}.{ext}" for c in colors]


def test_find_ids_sorted_other_files_ignored(tmp_path):
    """Ids with all four channels, sorted; other names and formats ignored; .tif and .tiff both count."""
    folder = touch(
        tmp_path / "png",
        *channels("b", "png"),
        *channels("89_B5_1", "png"),  # HPAv18 Ids hold underscores
        *channels("a", "png"),
        *channels("j", "jpg"),  # another format
        "notes.txt",
        "c_purple.png",
        "d.png",
        "_red.png",
    )
    assert find_ids(folder, "png") == ["89_B5_1", "a", "b"]
    tiff = touch(tmp_path / "tiff", *channels("t2", "tiff"), *channels("t1", "tif"), *channels("p", "png"))
    assert find_ids(tiff, "tiff") == ["t1", "t2"]
    assert channel_path(tiff, "t2", "red", "tiff") == tiff / "t2_red.tiff"
    assert channel_path(tiff, "t1", "red", "tiff") == tiff / "t1_red.tif"


def test_find_ids_names_what_is_missing(tmp_path):
    """A missing channel names its exact path (at most 10 shown); no channel files, or no folder, say so."""
    folder = touch(tmp_path / "png", *channels("a", "png"), *channels("b", "png", ("red", "green", "blue")))
    message = (
        f"{folder}: 1 channel file(s) missing (each Id needs red, green, blue and yellow): {folder / 'b_yellow.png'}"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        find_ids(folder, "png")
    many = touch(tmp_path / "many", *[f"i{k:02d}_red.png" for k in range(4)])
    with pytest.raises(ValueError, match=r"12 channel file\(s\) missing.*i00_green\.png.* and 2 more$"):
        find_ids(many, "png")
    empty = touch(tmp_path / "empty", *channels("a", "png"))
    with pytest.raises(ValueError, match=re.escape(f"{empty}: no jpg channel files")):
        find_ids(empty, "jpg")
    with pytest.raises(ValueError, match="no such folder"):
        find_ids(tmp_path / "nowhere", "png")
    with pytest.raises(ValueError, match="no such folder"):
        find_ids(empty / "a_red.png", "png")


# --- predicting ------------------------------------------------------------------------------------------


def test_predictions_table_known_answer():
    """Id, class numbers, '; '-joined names, then the probabilities under the class names; empty rows stay empty."""
    probs = np.arange(56, dtype=np.float32).reshape(2, 28) / 100
    pred = np.zeros((2, 28), bool)
    pred[0, [27, 0, 6]] = True
    table = predictions_table(["007", "b"], probs, pred, list(CLASS_NAMES))
    assert list(table.columns) == COLUMNS
    assert table.Id.tolist() == ["007", "b"]
    assert table.Predicted.tolist() == ["0 6 27", ""]
    assert table.Labels.tolist() == ["Nucleoplasm; Endoplasmic reticulum; Rods & rings", ""]
    assert table["Nucleoplasm"].tolist() == pytest.approx([0.0, 0.28])
    assert table["Rods & rings"].tolist() == pytest.approx([0.27, 0.55])
    np.testing.assert_array_equal(table[list(CLASS_NAMES)].to_numpy(), probs)


def write_shards(tiny: Tiny, out: Path, size: int = SIZE) -> list[str]:
    """f0, f1 in shard 0 and f2 in shard 1, as the classify_shard job writes them."""
    spec = ShardSpec(dataset="new", fmt="png", images_dir=str(tiny.fields), role="test", image_size=size)
    shards = [str(out / "0.h5"), str(out / "1.h5")]
    write_shard(shards[0], spec, FIELD_IDS[:2], None, 0)
    write_shard(shards[1], spec, FIELD_IDS[2:], None, 1)
    return shards


def test_run_classify_computes_the_ensemble_and_applies_the_thresholds(tiny, tmp_path):
    """Over two shards and uneven batches, the ONNX probabilities are the PyTorch ensemble's on the shard rows;
    the labels are p > threshold, or the argmax where none passes; the csv reads back the same."""
    shards = write_shards(tiny, tmp_path)
    rows = []
    for f in shards:
        with h5py.File(f, "r") as h5:
            rows.append(h5[h5n.IMAGES][...])
    rows = np.concatenate(rows)
    np.testing.assert_array_equal(rows, tiny.rgby)  # 32 px PNGs: the shard holds their pixels
    expected = torch_probs(tiny.module, rows)
    out = tmp_path / "predictions.csv"
    table = run_classify(shards, tiny.folder, out, threads=1, batch_size=2)
    assert list(table.columns) == COLUMNS and table.Id.tolist() == FIELD_IDS
    probs = table[list(CLASS_NAMES)].to_numpy()
    assert np.abs(probs - expected).max() <= 1e-5
    # Labels: p > threshold; f0 passes none and gets its most probable class (at_least_one).
    passed = probs > tiny.thresholds
    assert not passed[0].any() and passed[1].any() and passed[2].any()
    expected_pred = [str(np.argmax(probs[0]))] + [" ".join(map(str, np.flatnonzero(p))) for p in passed[1:]]
    assert table.Predicted.tolist() == expected_pred
    pred = apply(probs, tiny.thresholds, True)
    assert table.Predicted.tolist() == [" ".join(map(str, np.flatnonzero(p))) for p in pred]
    assert table.Labels.tolist() == ["; ".join(CLASS_NAMES[k] for k in np.flatnonzero(p)) for p in pred]
    back = pd.read_csv(out, dtype={"Id": str, "Predicted": str, "Labels": str}, keep_default_na=False)
    assert list(back.columns) == COLUMNS
    pd.testing.assert_frame_equal(back[COLUMNS[:3]], table[COLUMNS[:3]])
    assert np.abs(back[list(CLASS_NAMES)].to_numpy() - probs).max() <= 1e-6
    # The zip scores the same; any batch size gives the same rows.
    again = run_classify(shards, tiny.zip, tmp_path / "from_zip.csv", threads=1, batch_size=3)
    pd.testing.assert_frame_equal(again, table, atol=1e-6)


def test_predict_refuses_shards_of_another_size(tiny, tmp_path):
    """A shard made at another size than the package's is refused, naming the shard."""
    shards = write_shards(tiny, tmp_path, size=16)
    sess = session(Package(tiny.folder).onnx_source(), threads=1)
    with pytest.raises(
        ValueError, match=r"0\.h5: rows are 16 px with tiling none; the package's fields are sharded as whole 32 px"
    ):
        predict_probs(sess, shards, SIZE, SIZE, batch_size=2)


def flip_byte(path: Path) -> None:
    """One byte in the middle of a file changed: same size, other sha256."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["thresholds.json", "ensemble.onnx"])
def test_run_classify_refuses_a_damaged_package_before_predicting(tiny, tmp_path, name):
    """A changed weight still loads and predicts, slightly off: every file is checked, not only those read."""
    folder = copied(tiny, tmp_path / "pkg")
    if name == "thresholds.json":
        edit_thresholds(folder)
    else:
        flip_byte(folder / name)
    out = tmp_path / "predictions.csv"
    with pytest.raises(PackageError, match=re.escape(f"{name} does not match manifest.json")):
        run_classify(write_shards(tiny, tmp_path), folder, out, threads=1, batch_size=2)
    assert not out.exists()


# --- one preprocessing path: classify feeds the graph what predict fed the models ------------------------

SOURCE = 40  # the fields' channel files: shrunk to the 32 px shards (INTER_AREA), as training data are
VIEWS = [0, 5]


@dataclass
class Resized:
    """A package whose model takes `size` px while the shards hold SIZE px rows, and the predict path's answer."""

    size: int
    folder: Path
    fields: Path  # PNG channel files of FIELD_IDS at SOURCE px
    predict_rows: np.ndarray  # uint8 (3, 4, size, size): what predict's ShardDataset fed the model
    predict_probs: np.ndarray  # (3, 28): predict's TTA-combined probabilities (PyTorch, CPU)


@pytest.fixture(scope="module", params=[48, 24], ids=["model-larger", "model-smaller"])
def resized(request, tmp_path_factory) -> Resized:
    """A model trained at `size` px on 32 px shards (config image_size 32, models[0].image_size `size`): its
    checkpoint, the rows and probabilities predict gives it on a test dataset's shard, and the package `snakemake
    export` writes from it (one member, weight 1: the ensemble is the model)."""
    size = request.param
    root = tmp_path_factory.mktemp(f"resized{size}")
    torch.manual_seed(size)
    model = build_model("resnet18", CHANNELS["gyb"])
    cfg = {
        **{"name": "m", "backbone": "resnet18", "color_mode": "gyb", "image_size": size, "crop_size": None},
        **{"normalize": "imagenet", "head": "linear", "head_hidden": 512, "dropout": 0.5},
    }
    state = {h5n.FORMAT: h5n.CHECKPOINT_FORMAT, h5n.CKPT_MODEL: model.state_dict(), h5n.CKPT_CONFIG: cfg}
    torch.save({**state, h5n.CKPT_TRAIN_IDS: ["a"]}, root / "best.pt")
    fields = write_fields(root / "fields", FIELD_IDS, size=SOURCE, seed=size)
    # predict: the test dataset's shard (the shard rule's code, at image_size), read by predict_rows.
    spec = ShardSpec(dataset="test", fmt="png", images_dir=str(fields), role="test", image_size=SIZE)
    write_shard(root / "train_shard.h5", spec, FIELD_IDS, None, 0)
    rows = ShardRows.from_files([root / "train_shard.h5"])
    model, cfg = load_model(load_checkpoint(root / "best.pt"), torch.device("cpu"))
    ids, probs, _ = predict_rows(model, cfg, rows, torch.device("cpu"), VIEWS, "mean", "mean", 2, 0)
    assert list(ids) == FIELD_IDS
    fed = np.stack([ShardDataset(rows, cfg["image_size"])[i][0].numpy() for i in range(len(rows))])
    # export: the ensemble of that checkpoint, its sample made as the export job makes it.
    module = EnsembleModule.from_checkpoints(
        [[root / "best.pt"]], [1.0], VIEWS, "mean", crops=0, crop_placement="fixed", seed=0
    )
    assert module.image_size == size
    folder = root / "pkg"
    thresholds = np.full(28, 0.5)
    write_package(folder, module, size, SETTINGS, thresholds, METRICS, ["m"], 1, fed, shard_size=SIZE)
    return Resized(size, folder, fields, fed, probs)


def classify_shards(package: Path, fields: Path, out: Path) -> list[str]:
    """What the classify_shard job writes: the fields sharded at the package's shard size (classify_shard.py)."""
    spec = ShardSpec(
        dataset="new", fmt="png", images_dir=str(fields), role="test", image_size=Package(package).shard_size
    )
    out.mkdir(parents=True, exist_ok=True)
    write_shard(out / "0.h5", spec, FIELD_IDS[:2], None, 0)
    write_shard(out / "1.h5", spec, FIELD_IDS[2:], None, 1)
    return [str(out / "0.h5"), str(out / "1.h5")]


def test_classify_feeds_the_graph_exactly_what_predict_fed_the_model(resized, tmp_path):
    """A model whose image_size differs from the shards' (larger, and smaller): a field classified from its
    channel files reaches the graph as the very uint8 tensor predict's ShardDataset gave the model (shards at
    32 px by the shard code, rows resized by transforms.resize), and its probabilities are predict's."""
    package = Package(resized.folder)
    assert package.sizes() == (SIZE, resized.size)
    shards = classify_shards(resized.folder, resized.fields, tmp_path / "shards")
    rows = np.concatenate([read_shard(f).images for f in shards])
    assert rows.shape == (3, SIZE, SIZE, 4)
    fed = model_input(rows, resized.size)
    assert fed.dtype == np.uint8 and fed.shape == (3, 4, resized.size, resized.size)
    assert np.abs(fed.astype(int) - resized.predict_rows.astype(int)).max() == 0
    # What classify fed the graph before: the channel files resized straight to the model's size (INTER_AREA).
    straight = np.stack([read_rgby(resized.fields, i, "png", resized.size) for i in FIELD_IDS]).transpose(0, 3, 1, 2)
    assert np.abs(straight.astype(int) - resized.predict_rows.astype(int)).max() > 0
    table = run_classify(shards, resized.folder, tmp_path / "predictions.csv", threads=1, batch_size=2)
    assert table.Id.tolist() == FIELD_IDS
    assert np.abs(table[list(CLASS_NAMES)].to_numpy() - resized.predict_probs).max() <= 1e-5
    # The bioimage.io test input is the same kind of tensor: predict's rows for the model.
    np.testing.assert_array_equal(np.load(resized.folder / "test_input.npy"), resized.predict_rows[:2])


def test_preprocessing_json_names_the_resizes_the_code_does(resized, monkeypatch):
    """preprocessing.json gives both sizes and the interpolations the code uses, read from its constants: the
    shards' INTER_AREA (shrinking and enlarging), then predict's INTER_LINEAR to enlarge or INTER_AREA to shrink."""
    resize = json.loads((resized.folder / "preprocessing.json").read_text())["resize"]
    expected = "cv2.INTER_LINEAR" if resized.size > SIZE else "cv2.INTER_AREA"
    assert {k: resize[k] for k in ("shard_size", "shard_interpolation", "size", "interpolation")} == {
        "shard_size": SIZE,
        "shard_interpolation": "cv2.INTER_AREA",
        "size": resized.size,
        "interpolation": expected,
    }
    assert preprocessing(SIZE, [], SIZE)["resize"]["interpolation"] is None  # same size: no resize
    # One source: the constant that resizes the rows is the one named.
    monkeypatch.setattr(transforms, "ENLARGE", cv2.INTER_CUBIC)
    monkeypatch.setattr(transforms, "SHRINK", cv2.INTER_NEAREST)
    assert preprocessing(48, [], SIZE)["resize"]["interpolation"] == "cv2.INTER_CUBIC"
    assert preprocessing(24, [], SIZE)["resize"]["interpolation"] == "cv2.INTER_NEAREST"
    row = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
    np.testing.assert_array_equal(transforms.resize(row, 48), cv2.resize(row, (48, 48), interpolation=cv2.INTER_CUBIC))


def test_a_package_without_its_shard_size_is_refused_with_a_re_export_hint(tiny, tmp_path):
    """A package from an older export (preprocessing.json with resize.size only, the manifest matching) is refused
    before anything is sharded or predicted: PackageError naming preprocessing.json and saying to re-export."""
    folder = copied(tiny, tmp_path / "pkg")
    pre = json.loads((folder / "preprocessing.json").read_text())
    pre["resize"] = {"size": SIZE, "interpolation": "cv2.INTER_AREA to shrink, cv2.INTER_LINEAR to enlarge"}
    (folder / "preprocessing.json").write_text(json.dumps(pre))
    write_manifest(folder)
    package = Package(folder)
    package.verify()
    message = r"preprocessing\.json gives no resize\.shard_size .* older export; re-export the package"
    for read in (lambda: package.shard_size, lambda: package.image_size):
        with pytest.raises(PackageError, match=message):
            read()
    with pytest.raises(PackageError, match=message):
        run_classify(write_shards(tiny, tmp_path), folder, tmp_path / "p.csv", threads=1, batch_size=2)
    assert not (tmp_path / "p.csv").exists()


# --- pictures, config ------------------------------------------------------------------------------------


def test_display_rgb_adds_half_the_yellow_to_red_and_green():
    """RGB = (r + y/2, g + y/2, b), clipped at 255 (no uint8 wrap-around)."""
    rgby = np.array([[[[10, 20, 30, 40], [200, 250, 5, 100]], [[0, 0, 0, 0], [255, 255, 255, 255]]]], np.uint8)
    rgb = display_rgb(rgby)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 2, 2, 3)
    assert rgb.tolist() == [[[[30, 40, 30], [250, 255, 5]], [[0, 0, 0], [255, 255, 255]]]]


def test_captioned_grid_shape_and_tiles():
    """Tiles of `tile` px with room for `lines` captions below, `cols` per row, white where no field is."""
    field = np.broadcast_to(np.array([100, 0, 50, 60], np.uint8), (20, 20, 4))
    grid = captioned_grid([field] * 5, [["a", "b"]] * 5, tile=64, cols=4, lines=5)
    cell = 64 + 6 + 5 * 16
    assert grid.shape == (2 * cell, 4 * 64, 3)
    assert (grid[:64, :64] == [130, 30, 50]).all() and (grid[cell : cell + 64, :64] == [130, 30, 50]).all()
    assert (grid[cell:, 64:] == 255).all()  # the second row holds one field, the rest is white
    with pytest.raises(ValueError, match="no images to show"):
        captioned_grid([], [])


def test_config_strings_from_the_command_line_become_numbers_and_null():
    """--config gives nested values as strings: integers and null are parsed where the schema takes no string;
    a string that spells no number stays, and validation names its key."""
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    given = {"name": "007", "images": "12", "format": "png", "bits": "12", "package": "null", "batch_size": "4"}
    given["shard_size"] = "5"
    cfg = validate_config({**copy.deepcopy(demo), "classify": dict(given)}, SCHEMA)
    assert cfg["classify"] == {
        "name": "007",  # string keys stay strings, even when they look like numbers
        "images": "12",
        "format": "png",
        "bits": 12,
        "package": None,
        "batch_size": 4,
        "shard_size": 5,
        "transfer": True,  # the default: the package's label transfer where it has one
    }
    schema = yaml.safe_load(SCHEMA.read_text())
    assert coerce_strings({"classify": {**given, "package": "~"}}, schema, schema)["classify"]["package"] is None
    assert coerce_strings({"n_folds": "3"}, schema, schema) == {"n_folds": 3}
    with pytest.raises(ConfigError, match=r"classify\.bits: 'twelve' is not of type 'integer'"):
        validate_config({**copy.deepcopy(demo), "classify": {**given, "bits": "twelve"}}, SCHEMA)
    with pytest.raises(ConfigError, match=r"classify\.batch_size: '4\.5' is not of type 'integer'"):
        validate_config({**copy.deepcopy(demo), "classify": {**given, "batch_size": "4.5"}}, SCHEMA)
    home = validate_config(
        {**copy.deepcopy(demo), "classify": {**given, "images": "~/new", "package": "~/p.zip"}}, SCHEMA
    )
    assert (home["classify"]["images"], home["classify"]["package"]) == (
        str(Path.home() / "new"),
        str(Path.home() / "p.zip"),
    )  # `~` is the home folder, as in data_root


# --- snakemake classify ----------------------------------------------------------------------------------


def classify_config(name: str, images: str, package: Path | str, fmt: str = "png") -> list[str]:
    return ["--config", f"classify={{name: {name}, images: {images}, format: {fmt}, package: {package}}}"]


def write_fields(folder: Path, ids: list[str], size: int = 40, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for image_id in ids:
        write_png(folder, image_id, rng.integers(0, 256, (size, size, 4), dtype=np.uint8))
    return folder


def test_snakemake_classify_writes_predictions_and_gallery(tiny, tmp_path):
    """`snakemake classify` with the zipped package: one row per field in Id order, the ensemble's probabilities
    on the shard rows (made at the package's size), the package's labels, and a gallery of the three fields."""
    wf = copy_workflow(tmp_path / "wf")
    write_fields(wf / "new", ["10", "007", "3"])  # Ids that read as numbers, unless read as strings
    run_snakemake(wf, "classify", *classify_config("plate1", "new", tiny.zip))
    out = wf / "results" / "classify" / "plate1"
    table = pd.read_csv(out / "predictions.csv", dtype={"Id": str, "Predicted": str}, keep_default_na=False)
    assert table.shape == (3, 31) and list(table.columns) == COLUMNS
    assert table.Id.tolist() == ["007", "10", "3"]
    # The shard holds the fields resized to the package's size; the csv holds the ensemble's output on it.
    with h5py.File(out / "shards" / "0.h5", "r") as h5:
        assert h5.attrs["image_size"] == SIZE and list(h5[h5n.IDS].asstr()[...]) == table.Id.tolist()
        rows = h5[h5n.IMAGES][...]
    probs = table[list(CLASS_NAMES)].to_numpy()
    assert np.abs(probs - torch_probs(tiny.module, rows)).max() <= 1e-5
    pred = apply(probs, tiny.thresholds, True)
    assert table.Predicted.tolist() == [" ".join(map(str, np.flatnonzero(p))) for p in pred]
    gallery = cv2.imread(str(out / "gallery.png"))
    assert gallery is not None and gallery.shape == (256 + 6 + 5 * 16, 3 * 256, 3)
    # The folder changes and one new field is damaged: the rerun fails, and the earlier predictions (of other
    # inputs) are gone rather than left beside the new shards.
    write_fields(wf / "new", ["11"])
    (wf / "new" / "11_red.png").write_text("not an image\n")
    failed = run_snakemake(wf, "classify", *classify_config("plate1", "new", tiny.zip), check=False)
    assert failed.returncode != 0 and "11_red.png" in failed.stdout + failed.stderr
    assert not (out / "predictions.csv").exists() and not (out / "gallery.png").exists()


def test_snakemake_classify_shards_at_the_packages_shard_size(resized, tmp_path):
    """`snakemake classify` with a package whose model takes another size than its shards: the shard job writes
    the fields at the shard size (as training shards), and predictions.csv holds predict's probabilities."""
    wf = copy_workflow(tmp_path / "wf")
    shutil.copytree(resized.fields, wf / "new")
    run_snakemake(wf, "classify", *classify_config("plate1", "new", resized.folder))
    out = wf / "results" / "classify" / "plate1"
    with h5py.File(out / "shards" / "0.h5", "r") as h5:
        assert h5.attrs["image_size"] == SIZE
    table = pd.read_csv(out / "predictions.csv", dtype={"Id": str}, keep_default_na=False)
    assert table.Id.tolist() == FIELD_IDS
    assert np.abs(table[list(CLASS_NAMES)].to_numpy() - resized.predict_probs).max() <= 1e-5


def empty_folder(wf: Path, tiny: Tiny):
    (wf / "new").mkdir()
    return classify_config("bad", "new", tiny.folder), [r"classify\.images: new: no png channel files"]


def missing_yellow(wf: Path, tiny: Tiny):
    write_fields(wf / "new", ["a", "b"])
    (wf / "new" / "b_yellow.png").unlink()
    return classify_config("bad", "new", tiny.folder), [
        r"classify\.images: new: 1 channel file\(s\) missing.*new/b_yellow\.png"
    ]


def damaged_images(wf: Path, tiny: Tiny):
    """A PNG cut in half and text bytes named as a PNG, in one folder: the shard job names both."""
    write_fields(wf / "new", ["a", "t", "x"])
    cut = wf / "new" / "t_green.png"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    (wf / "new" / "x_red.png").write_text("not an image\n")
    return classify_config("bad", "new", tiny.folder), [
        r"new/t_green\.png: truncated PNG",
        r"new/x_red\.png: not a PNG file",
        r"2 of 3 image\(s\) failed the check; no shard written",
    ]


def unknown_format(wf: Path, tiny: Tiny):
    write_fields(wf / "new", ["a"])
    return classify_config("bad", "new", tiny.folder, fmt="bmp"), [r"classify\.format: 'bmp' is not one of"]


def edited_package(wf: Path, tiny: Tiny):
    folder = copied(tiny, wf / "edited_pkg")
    edit_thresholds(folder)
    write_fields(wf / "new", ["a"])
    return classify_config("bad", "new", folder), [r"edited_pkg: thresholds\.json does not match manifest\.json"]


def no_package(wf: Path, tiny: Tiny):
    write_fields(wf / "new", ["a"])
    return classify_config("bad", "new", wf / "nowhere"), [r"classify\.package: .*nowhere does not exist"]


@pytest.mark.parametrize(
    "make", [empty_folder, missing_yellow, damaged_images, unknown_format, edited_package, no_package]
)
def test_snakemake_classify_bad_input_is_named_and_leaves_no_predictions(tiny, tmp_path, make):
    """Planning errors (images, format, package) and job errors (images, package checksums) fail the run,
    name the file or key, and leave no predictions.csv."""
    wf = copy_workflow(tmp_path / "wf")
    args, messages = make(wf, tiny)
    proc = run_snakemake(wf, "classify", *args, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for message in messages:
        assert re.search(message, log), log[-4000:]
    assert not (wf / "results" / "classify" / "bad" / "predictions.csv").exists()


def test_a_manifest_without_its_file_table_is_named(tiny, tmp_path):
    """A hand-edited manifest.json without `files` (or an entry without its sha256) is a PackageError naming it."""
    for manifest in ({"format": "hpa_classifier/1"}, {"format": "hpa_classifier/1", "files": {"a": {"bytes": 1}}}):
        folder = copied(tiny, tmp_path / f"pkg{len(manifest)}")
        (folder / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(PackageError, match=r"manifest\.json has no `files` mapping"):
            Package(folder)


# --- sources are what they are now (issue 20) -------------------------------------------------------------


def predicted_ids(wf: Path, name: str) -> list[str]:
    table = pd.read_csv(wf / "results/classify" / name / "predictions.csv", dtype={"Id": str}, keep_default_na=False)
    return table.Id.tolist()


def test_the_same_name_on_another_folder_never_reports_the_old_folders_predictions(tiny, tmp_path):
    """plate42 on folder A, then on folder B: B's listing decides the shards, so they rerun. A broken symlink
    in B stops the planning, named (before, Snakemake took A's shard as a source file: "Nothing to be done").
    A file name with braces is a field like any other (before: read as a wildcard)."""
    wf = copy_workflow(tmp_path / "wf")
    write_fields(wf / "a", ["a1", "a2"])
    run_snakemake(wf, "classify", *classify_config("plate42", "a", tiny.zip))
    assert predicted_ids(wf, "plate42") == ["a1", "a2"]
    write_fields(wf / "b", ["b1", "{ctrl}"], seed=1)
    (wf / "b" / "b2_red.png").symlink_to(wf / "b" / "gone.png")
    for color in ("green", "blue", "yellow"):
        shutil.copy(wf / "b" / f"b1_{color}.png", wf / "b" / f"b2_{color}.png")
    broken = run_snakemake(wf, "classify", *classify_config("plate42", "b", tiny.zip), check=False)
    log = broken.stdout + broken.stderr
    assert broken.returncode != 0 and "Nothing to be done" not in log
    assert re.search(r"classify\.images: b: 1 channel file\(s\) cannot be read: .*b/b2_red\.png \(broken", log), log
    (wf / "b" / "b2_red.png").unlink()
    shutil.copy(wf / "b" / "b1_red.png", wf / "b" / "b2_red.png")
    run_snakemake(wf, "classify", *classify_config("plate42", "b", tiny.zip))
    assert predicted_ids(wf, "plate42") == ["b1", "b2", "{ctrl}"]
    # Nothing changed: nothing reruns; back on folder A: A's fields again.
    again = run_snakemake(wf, "classify", *classify_config("plate42", "b", tiny.zip))
    assert "Nothing to be done" in again.stdout + again.stderr
    run_snakemake(wf, "classify", *classify_config("plate42", "a", tiny.zip))
    assert predicted_ids(wf, "plate42") == ["a1", "a2"]


def test_extensions_match_in_any_case_and_dot_files_are_ignored(tiny, tmp_path):
    """`.PNG` beside `.png` (before: only the `.png` Ids, exit 0), a macOS `._` file and a subfolder."""
    wf = copy_workflow(tmp_path / "wf")
    new = write_fields(wf / "new", ["lower", "upper"])
    for color in ("red", "green", "blue", "yellow"):
        (new / f"upper_{color}.png").rename(new / f"upper_{color}.PNG")
    (new / "._lower_red.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (new / "thumbs").mkdir()
    run_snakemake(wf, "classify", *classify_config("mixed", "new", tiny.folder))
    assert predicted_ids(wf, "mixed") == ["lower", "upper"]
    log = (wf / "logs/classify/mixed/shard0.log").read_text()
    assert "new: 2 Ids; ignored 1 dot-file(s), 1 subfolder(s)" in log


def test_a_replaced_package_reruns_whatever_its_mtime_and_is_never_rebuilt(tiny, tmp_path):
    """The package's content decides (its manifest, checked file by file at every planning): one copied with
    an older mtime (`cp -p`) over the first reruns the predictions. A package given inside results/export is
    no input of the workflow's export: a config change does not rebuild (overwrite) it."""
    wf = copy_workflow(tmp_path / "wf")
    write_fields(wf / "new", ["f"])
    pkg = wf / "results/export/hpa_classifier"
    shutil.copytree(tiny.folder, pkg)
    run_snakemake(wf, "classify", *classify_config("p", "new", pkg))
    # Another package (other thresholds, manifest rewritten), copied in with an mtime older than the outputs.
    other = copied(tiny, tmp_path / "other")
    edit_thresholds(other)
    write_manifest(other)
    old = (wf / "results/classify/p/predictions.csv").stat().st_mtime - 3600
    for f in other.iterdir():
        os.utime(f, (old, old))
    shutil.rmtree(pkg)
    shutil.copytree(other, pkg, copy_function=shutil.copy2)  # cp -p: the old mtimes
    planned = run_snakemake(wf, "-n", "classify", *classify_config("p", "new", pkg))
    assert "export" not in plan(planned) and plan(planned)["classify_predict"] == "1", planned.stdout[-2000:]
    run_snakemake(wf, "classify", *classify_config("p", "new", pkg))
    assert (wf / "results/classify/p/predictions.csv").stat().st_mtime > old + 3600
    assert "Nothing to be done" in run_snakemake(wf, "-n", "classify", *classify_config("p", "new", pkg)).stdout
    # A config change that would rebuild the workflow's own export plans no export for a given package.
    changed = run_snakemake(wf, "-n", "classify", *classify_config("p", "new", pkg), "thresholds={shrink: 3}")
    assert "Nothing to be done" in changed.stdout + changed.stderr
    # An edited file under an unchanged manifest is refused at planning, named.
    (pkg / "thresholds.json").write_text((pkg / "thresholds.json").read_text() + " ")
    refused = run_snakemake(wf, "-n", "classify", *classify_config("p", "new", pkg), check=False)
    assert refused.returncode != 0 and "thresholds.json does not match manifest.json" in refused.stdout + refused.stderr
