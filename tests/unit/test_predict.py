"""Prediction on tiled shards: tiles aggregate to one row per image; crops x TTA views, saved on request."""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import replace
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from conftest import write_noise_pngs
from hpaflow import versions
from hpaflow.data import ShardRows
from hpaflow.h5names import CHECKPOINT_FORMAT, FormatError
from hpaflow.models import build_model
from hpaflow.predict import (
    LeakError,
    PredictSettings,
    aggregate_tiles,
    check_no_leak,
    load_checkpoint,
    load_model,
    model_crops,
    predict_probs,
    predict_rows,
    run_predict,
    write_predictions,
)
from hpaflow.shards import ShardSpec, write_shard
from hpaflow.transforms import CHANNELS, MEAN, STD

PREDICT = PredictSettings(
    views=[0, 3, 6],
    tta_combine="max",
    tile_combine="mean",
    save_views=True,
    batch_size=3,
    device="cpu",
    threads=1,
    crops=0,
    crop_placement="fixed",
    seed=0,
)


def tiled_shards(tmp_path):
    rng = np.random.default_rng(0)
    ids = ["a", "b", "c", "d"]
    write_noise_pngs(tmp_path, ids, rng)
    spec = dict(dataset="ds", fmt="png", images_dir=str(tmp_path), image_size=32, tiling="grid", tile_size=16)
    labels = np.eye(28, dtype=np.uint8)[[1, 2, 3, 4]]
    write_shard(tmp_path / "train.h5", ShardSpec(role="train", **spec), ids, labels)
    write_shard(tmp_path / "test.h5", ShardSpec(role="test", **spec), ids[:2], None)
    (tmp_path / "folds.csv").write_text("Id,dataset,fold\na,ds,0\nb,ds,1\nc,ds,1\nd,ds,0\n")
    return labels


def model_config(color_mode="gyb", **changes) -> dict:
    """A checkpoint's config as training writes it (the keys predict reads)."""
    cfg = {"name": "m", "backbone": "resnet18", "color_mode": color_mode, "image_size": 16, "crop_size": None}
    return cfg | {"normalize": "imagenet", "head": "linear", "head_hidden": 512, "dropout": 0.5} | changes


def checkpoint(path, color_mode="gyb", crop_size=None, **extra):
    torch.manual_seed(0)
    model = build_model("resnet18", CHANNELS[color_mode])
    cfg = model_config(color_mode, crop_size=crop_size)
    torch.save({"format_version": CHECKPOINT_FORMAT, "model": model.state_dict(), "config": cfg, **extra}, path)
    return str(path)


def predict(tmp_path, best, fold):
    out = tmp_path / "pred.h5"
    run_predict(
        best,
        [str(tmp_path / "train.h5")],
        [str(tmp_path / "test.h5")],
        str(tmp_path / "folds.csv"),
        fold,
        str(out),
        PREDICT,
    )
    return out


def test_run_predict_aggregates_tiles_and_keeps_views(tmp_path, caplog):
    labels = tiled_shards(tmp_path)
    torch.set_num_threads(3)
    with caplog.at_level(logging.INFO, logger="hpaflow"):
        out = predict(tmp_path, checkpoint(tmp_path / "best.pt", train_ids=["a", "d"]), 1)
    assert torch.get_num_threads() == 1  # threads=1: the job uses the one core it was given
    # The job log says what was scored and how: rows are tiles (4 per image).
    assert "oof: 8 rows, TTA views [0, 3, 6] (max), tiles mean" in caplog.messages
    assert "test: 8 rows, TTA views [0, 3, 6] (max), tiles mean" in caplog.messages
    with h5py.File(out) as h5:
        assert h5["oof/ids"].asstr()[...].tolist() == ["b", "c"]  # fold 1, one row per image (4 tiles each)
        assert np.array_equal(h5["oof/labels"][...], labels[[1, 2]])
        views, probs = h5["oof/views"][...], h5["oof/probs"][...]
        assert views.shape == (3, 2, 28) and np.allclose(probs, views.max(0))
        assert h5["test/ids"].asstr()[...].tolist() == ["a", "b"] and "labels" not in h5["test"]
        # b is in both: the same image gives the same probabilities.
        assert np.allclose(h5["test/probs"][1], probs[0], atol=1e-6)
        assert h5.attrs["views"].tolist() == [0, 3, 6] and h5.attrs["tta_combine"] == "max"
        assert h5.attrs["model"] == "m" and h5.attrs["fold"] == 1 and h5.attrs["tile_combine"] == "mean"


def test_predictions_carry_the_train_jobs_environment_from_the_checkpoint(tmp_path):
    """What trained the model (best.pt's software_versions, another env here) and what predicted (this one) both
    reach the report through the predictions; a checkpoint from before the stamps adds only the predict job's."""
    tiled_shards(tmp_path)
    other = {"python": "3.11.0", "platform": "Linux-x86_64", "packages": {"torch": "2.13.0"}}
    out = predict(tmp_path, checkpoint(tmp_path / "best.pt", train_ids=["a", "d"], software_versions=other), 1)
    assert versions.recorded([out]) == [versions.environment_versions(), other]
    out = predict(tmp_path, checkpoint(tmp_path / "old.pt", train_ids=["a", "d"]), 1)
    assert versions.recorded([out]) == [versions.environment_versions()]


def test_without_test_shards_only_out_of_fold_rows_are_written_and_views_only_on_request(tmp_path):
    labels = tiled_shards(tmp_path)
    out = tmp_path / "pred.h5"
    run_predict(
        checkpoint(tmp_path / "best.pt", train_ids=["b", "c"]),
        [str(tmp_path / "train.h5")],
        [],
        str(tmp_path / "folds.csv"),
        0,
        str(out),
        replace(PREDICT, save_views=False, tta_combine="mean", tile_combine="max"),
    )
    with h5py.File(out) as h5:
        assert list(h5) == ["oof"]
        assert sorted(h5["oof"]) == ["ids", "labels", "probs"]  # no views
        assert h5["oof/ids"].asstr()[...].tolist() == ["a", "d"]
        assert np.array_equal(h5["oof/labels"][...], labels[[0, 3]])
        assert h5["oof/probs"].shape == (2, 28) and h5["oof/probs"].dtype == np.float32
        assert h5.attrs["fold"] == 0 and h5.attrs["tta_combine"] == "mean" and h5.attrs["tile_combine"] == "max"


@pytest.mark.parametrize(
    "fold,trained_on,leaked",
    [
        (1, ["a", "b", "d"], "1 Id(s) that fold 1 now holds out (b)"),
        (0, ["a", "b", "c", "d"], "2 Id(s) that fold 0 now holds out (a, d)"),
    ],
)
def test_out_of_fold_rows_the_model_was_trained_on_are_refused(tmp_path, fold, trained_on, leaked):
    tiled_shards(tmp_path)
    best = checkpoint(tmp_path / "best.pt", train_ids=trained_on)
    with pytest.raises(LeakError, match=re.escape(f"{best} was trained on {leaked}")):
        predict(tmp_path, best, fold)
    assert not (tmp_path / "pred.h5").exists()


@pytest.mark.parametrize("version", [None, CHECKPOINT_FORMAT - 1, CHECKPOINT_FORMAT + 1])
def test_checkpoint_of_another_format_is_refused_with_what_to_rerun(tmp_path, version):
    """A checkpoint of another format (one before format versions recorded no training Ids, so its
    out-of-fold predictions could not be checked for leaks) stops predict, named, with no output."""
    tiled_shards(tmp_path)
    best = checkpoint(tmp_path / "best.pt", train_ids=["a"], format_version=version)
    found = "no format version" if version is None else f"format {version}"
    with pytest.raises(
        FormatError,
        match="^"
        + re.escape(
            f"{best}: a checkpoint file of {found}; this workflow reads format {CHECKPOINT_FORMAT}: delete it and "
            "rerun its train "
            "job (snakemake --forcerun train)"
        )
        + "$",
    ):
        predict(tmp_path, best, 1)
    assert not (tmp_path / "pred.h5").exists()


LEAK_ADVICE = (
    "refusing to write them as out-of-fold predictions. The folds or the data changed after this model "
    "was trained; rerun its train job (snakemake does when folds.csv or the shards are newer)"
)


@pytest.mark.parametrize(
    "n_leaked,shown",
    [
        (10, "i00, i01, i02, i03, i04, i05, i06, i07, i08, i09"),  # ten: all shown
        (11, "i00, i01, i02, i03, i04, i05, i06, i07, i08, i09, ..."),  # more: the first ten, then an ellipsis
    ],
)
def test_leak_message_counts_images_and_shows_at_most_ten(n_leaked, shown):
    names = [f"i{k:02d}" for k in range(12)]
    held_out = np.repeat(names[::-1] + ["new"], 4)  # 4 tiles per image: Ids are counted, not tiles
    trained = names[:n_leaked] + ["other"]
    with pytest.raises(
        LeakError,
        match="^"
        + re.escape(f"run/best.pt was trained on {n_leaked} Id(s) that fold 2 now holds out ({shown}): {LEAK_ADVICE}")
        + "$",
    ):
        check_no_leak({"train_ids": trained}, "run/best.pt", held_out, 2)
    check_no_leak({"train_ids": names}, "run/best.pt", np.repeat(["new", "x"], 4), 2)  # no overlap: passes


def test_damaged_checkpoint_is_named(tmp_path):
    tiled_shards(tmp_path)
    best = tmp_path / "best.pt"
    whole = Path(checkpoint(tmp_path / "ok.pt", train_ids=["a", "d"])).read_bytes()
    best.write_bytes(whole[:5000])  # cut short
    with pytest.raises(
        ValueError,
        match=re.escape(f"{best}: cannot be read as a checkpoint (")
        + ".*"
        + re.escape("); delete it and rerun its train job")
        + "$",
    ):
        predict(tmp_path, str(best), 1)


def test_missing_checkpoint_is_named_with_the_error(tmp_path):
    best = tmp_path / "best.pt"
    with pytest.raises(
        ValueError,
        match="^"
        + re.escape(f"{best}: cannot be read as a checkpoint (FileNotFoundError: ")
        + ".*"
        + re.escape("); delete it and rerun its train job")
        + "$",
    ):
        load_checkpoint(best)


@pytest.mark.parametrize(
    "content,missing",
    [
        ({"config": {}, "train_ids": []}, "model"),
        ({"model": {}}, "config"),
        ({"train_ids": ["a"]}, "config, model"),
    ],
)
def test_file_that_is_not_a_model_checkpoint_says_what_it_lacks(tmp_path, content, missing):
    best = tmp_path / "best.pt"
    torch.save(content, best)
    with pytest.raises(ValueError, match="^" + re.escape(f"{best}: not a model checkpoint (no {missing})") + "$"):
        load_checkpoint(best)


def trained_model(color_mode="gyb"):
    """The model that checkpoint() writes, built again here."""
    torch.manual_seed(0)
    return build_model("resnet18", CHANNELS[color_mode]).eval()


def test_checkpoint_written_on_a_gpu_loads_on_a_cpu(tmp_path, monkeypatch):
    """Training runs on a GPU; prediction may run on a machine without one: the weights come to the CPU."""
    with monkeypatch.context() as m:  # tensors tagged as on a GPU, as torch.save writes them there
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        best = checkpoint(tmp_path / "best.pt", train_ids=["a"])
    state = load_checkpoint(best)
    expected = trained_model().state_dict()
    assert state["model"].keys() == expected.keys()
    for k, v in state["model"].items():
        assert v.device.type == "cpu" and torch.equal(v, expected[k]), k
    assert state["train_ids"] == ["a"] and state["config"]["name"] == "m"


def test_load_model_restores_the_trained_weights_for_four_channels(tmp_path):
    state = load_checkpoint(checkpoint(tmp_path / "best.pt", color_mode="rgby", train_ids=["a"]))
    model, cfg = load_model(state, torch.device("cpu"))
    assert cfg == state["config"]
    x = torch.rand(2, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model.eval()(x), trained_model("rgby")(x))
    # channels_last is a GPU speed-up: on the CPU the weights keep their ordinary layout.
    assert all(p.is_contiguous() for p in model.parameters())


def test_load_model_puts_the_model_on_the_device(tmp_path):
    state = load_checkpoint(checkpoint(tmp_path / "best.pt", train_ids=["a"]))
    model, _ = load_model(state, torch.device("meta"))
    assert {p.device.type for p in model.parameters()} == {"meta"}


class PixelModel(torch.nn.Module):
    """Logit of class k = input channel 0 at row 0, column k: the output follows the image's orientation.
    Records the size of each batch it is given."""

    def __init__(self):
        super().__init__()
        self.batch_sizes = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(len(x))
        return x[:, 0, 0, :28]


def by_hand(green: np.ndarray, view: int, normalize: str = "imagenet") -> np.ndarray:
    """What PixelModel gives for one view of a uint8 green plane (gyb channel 0 is G), computed in numpy:
    imagenet = (g - MEAN) / STD; per_image = (g - the plane's mean) / (its population std + 1/255)."""
    g = green.astype(np.float64) / 255
    oriented = np.rot90(g[:, ::-1] if view >= 4 else g, view % 4)  # flip left-right, then rotate
    if normalize == "imagenet":
        x = (oriented[0, :28] - MEAN[0]) / STD[0]
    else:
        x = (oriented[0, :28] - g.mean()) / (g.std() + 1 / 255)
    return 1 / (1 + np.exp(-x))


@pytest.mark.parametrize("tta_combine,tile_combine", [("mean", "mean"), ("max", "mean"), ("mean", "max")])
def test_each_tta_view_and_tile_known_answer(tmp_path, tta_combine, tile_combine):
    """Every view of every tile scored as computed by hand, then tiles and views combined as configured."""
    rng = np.random.default_rng(3)
    ids = ["p", "q"]
    green = {}
    for i in ids:
        for c in ["red", "green", "blue", "yellow"]:
            plane = rng.integers(0, 256, (56, 56), dtype=np.uint8)
            cv2.imwrite(str(tmp_path / f"{i}_{c}.png"), plane)
            if c == "green":
                green[i] = plane
    spec = ShardSpec(
        dataset="ds", fmt="png", images_dir=str(tmp_path), role="test", image_size=56, tiling="grid", tile_size=28
    )
    write_shard(tmp_path / "s.h5", spec, ids, None)
    views = [0, 1, 2, 3, 4, 5, 6, 7]
    model = PixelModel()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about on the CPU (e.g. no pinned memory asked for)
        got_ids, probs, per_view = predict_rows(
            model,
            model_config(image_size=28),
            ShardRows.from_files([tmp_path / "s.h5"]),
            torch.device("cpu"),
            views,
            tta_combine,
            tile_combine,
            batch_size=3,
            workers=0,
        )
    assert got_ids.tolist() == ids
    assert model.batch_sizes == [3] * 8 + [3] * 8 + [2] * 8  # 8 tiles in batches of 3, each batch in 8 views
    reduce = {"mean": np.mean, "max": np.max}
    for n, i in enumerate(ids):
        tiles = [green[i][y : y + 28, x : x + 28] for y in (0, 28) for x in (0, 28)]
        expected_views = np.stack([reduce[tile_combine]([by_hand(t, v) for t in tiles], axis=0) for v in views])
        assert np.allclose(per_view[:, n], expected_views, atol=1e-6)
        assert np.allclose(probs[n], reduce[tta_combine](expected_views, axis=0), atol=1e-6)
    # The views and tiles differ, so a shortcut (one view, one tile rule) cannot match by chance.
    assert np.abs(per_view[1] - per_view[0]).max() > 0.05


def test_aggregate_tiles_known_answer():
    """Tiles of one Id, wherever they lie, become one row, in order of first appearance; any leading axes
    (views) are kept and the result is float32."""
    ids = np.array(["c", "a", "c", "b", "a", "c"])
    p = np.array([[0.1, 0.9], [0.4, 0.2], [0.3, 0.5], [0.7, 0.6], [0.8, 0.0], [0.2, 0.4]])  # float64
    probs = np.stack([p, 1 - p])  # (2 views, 6 tiles, 2 classes)
    got_ids, mean = aggregate_tiles(ids, probs, "mean")
    assert got_ids.tolist() == ["c", "a", "b"] and mean.dtype == np.float32
    assert np.allclose(mean, [[[0.2, 0.6], [0.6, 0.1], [0.7, 0.6]], [[0.8, 0.4], [0.4, 0.9], [0.3, 0.4]]], atol=1e-7)
    got_ids, top = aggregate_tiles(ids, probs, "max")
    assert got_ids.tolist() == ["c", "a", "b"] and top.dtype == np.float32
    assert np.allclose(top, [[[0.3, 0.9], [0.8, 0.2], [0.7, 0.6]], [[0.9, 0.6], [0.6, 1.0], [0.3, 0.4]]], atol=1e-7)
    with pytest.raises(ValueError, match=re.escape("unknown combine 'median' (mean or max)")):
        aggregate_tiles(ids, probs, "median")


def test_an_image_aggregates_the_same_whatever_other_images_share_its_shard():
    """Bit for bit: an image's tiles are combined the same way alone or among many other images (so the
    same image in two folds' runs, or in oof and test, gets identical probabilities)."""
    rng = np.random.default_rng(5)
    names = [f"im{k:02d}" for k in range(40)]
    ids = rng.permutation(np.repeat(names, 4))  # 4 tiles each, interleaved
    probs = rng.random((2, len(ids), 28), dtype=np.float32)
    got_ids, together = aggregate_tiles(ids, probs, "mean")
    assert sorted(got_ids) == names
    for n, name in enumerate(got_ids):
        mine = ids == name
        alone_id, alone = aggregate_tiles(ids[mine], probs[:, mine], "mean")
        assert alone_id.tolist() == [name]
        assert np.array_equal(together[:, n], alone[:, 0]), name


def test_write_predictions_stores_float32_probabilities_and_only_the_parts_given(tmp_path):
    probs = np.array([[0.25, 0.5], [1 / 3, 0.75]])  # float64
    labels = np.array([[1, 0], [0, 1]], np.uint8)
    write_predictions(
        tmp_path / "p.h5",
        {
            "oof": {"ids": np.array(["x", "y"]), "probs": probs, "labels": labels, "views": None},
            "test": {"ids": [], "probs": np.zeros((0, 2))},  # a part may be empty
        },
        {"model": "m", "fold": 3},
    )
    with h5py.File(tmp_path / "p.h5") as h5:
        assert list(h5) == ["oof", "test"] and sorted(h5["oof"]) == ["ids", "labels", "probs"]
        assert h5["oof/ids"].asstr()[...].tolist() == ["x", "y"]
        assert h5["oof/probs"].dtype == np.float32 and np.array_equal(h5["oof/probs"][...], probs.astype(np.float32))
        assert np.array_equal(h5["oof/labels"][...], labels)
        assert sorted(h5["test"]) == ["ids", "probs"] and h5["test/ids"].shape == (0,)
        assert h5["test/probs"].shape == (0, 2)
        assert h5.attrs["model"] == "m" and h5.attrs["fold"] == 3
        assert versions.read_stamp(h5.attrs) == versions.environment_versions()  # the predict job's environment
    assert [f.name for f in tmp_path.iterdir()] == ["p.h5"]  # written whole, no temporary left behind


def whole_image_shard(tmp_path, ids, side, seed) -> dict[str, np.ndarray]:
    """A test shard of whole side px images (random PNG planes); returns each image's green plane."""
    rng = np.random.default_rng(seed)
    green = {}
    for i in ids:
        for c in ["red", "green", "blue", "yellow"]:
            plane = rng.integers(0, 256, (side, side), dtype=np.uint8)
            cv2.imwrite(str(tmp_path / f"{i}_{c}.png"), plane)
            if c == "green":
                green[i] = plane
    spec = ShardSpec(dataset="ds", fmt="png", images_dir=str(tmp_path), role="test", image_size=side)
    write_shard(tmp_path / "s.h5", spec, ids, None)
    return green


@pytest.mark.parametrize("normalize,tta_combine", [("imagenet", "max"), ("per_image", "mean"), ("per_image", "max")])
def test_each_crop_in_each_view_known_answer(tmp_path, normalize, tta_combine):
    """4 fixed crops of 28 px in 40 px images (the corners: offsets 0 and 12): each crop normalised on its own
    (per_image: the crop's statistics, not the image's) and scored in each view, all combined; stored
    crop-major."""
    ids = ["p", "q", "r"]
    green = whole_image_shard(tmp_path, ids, 40, seed=4)
    cfg = model_config(image_size=40, crop_size=28, normalize=normalize)
    offsets = model_crops(cfg, 4, "fixed", seed=0)
    assert offsets.tolist() == [[0, 0], [0, 12], [12, 0], [12, 12]]
    views = [0, 5]
    model = PixelModel()
    got_ids, probs, per_view = predict_rows(
        model,
        cfg,
        ShardRows.from_files([tmp_path / "s.h5"]),
        torch.device("cpu"),
        views,
        tta_combine,
        "mean",
        batch_size=2,
        workers=0,
        offsets=offsets,
    )
    assert got_ids.tolist() == ids and per_view.shape == (8, 3, 28)
    assert model.batch_sizes == [2] * 8 + [1] * 8  # each batch: 4 crops x 2 views
    reduce = {"mean": np.mean, "max": np.max}[tta_combine]
    for n, i in enumerate(ids):
        expected = np.stack(
            [by_hand(green[i][y : y + 28, x : x + 28], v, normalize) for y, x in offsets for v in views]
        )
        np.testing.assert_allclose(per_view[:, n], expected, atol=2e-6)
        np.testing.assert_allclose(probs[n], reduce(expected, axis=0), atol=2e-6)
    # The crops differ, so scoring one crop (or the whole image) cannot match by chance.
    assert np.abs(per_view[2] - per_view[0]).max() > 0.05


def test_rows_of_a_compressed_shard_are_scored_as_by_hand(tmp_path):
    """A blosc_lz4 shard (planes of rows repeated 8 times: its chunks really are compressed) is read and scored
    in each view as computed by hand from the source planes."""
    rng = np.random.default_rng(6)
    ids, green = ["p", "q"], {}
    for i in ids:
        for c in ["red", "green", "blue", "yellow"]:
            plane = np.repeat(rng.integers(0, 256, (5, 40), dtype=np.uint8), 8, axis=0)
            cv2.imwrite(str(tmp_path / f"{i}_{c}.png"), plane)
            if c == "green":
                green[i] = plane
    spec = ShardSpec(
        dataset="ds", fmt="png", images_dir=str(tmp_path), role="test", image_size=40, compression="blosc_lz4"
    )
    write_shard(tmp_path / "s.h5", spec, ids, None)
    with h5py.File(tmp_path / "s.h5") as h5:
        assert h5["images"].id.get_storage_size() < 2 * 40 * 40 * 4 / 2
    views = [0, 5]
    _, probs, per_view = predict_rows(
        PixelModel(),
        model_config(image_size=40),
        ShardRows.from_files([tmp_path / "s.h5"]),
        torch.device("cpu"),
        views,
        "mean",
        "mean",
        batch_size=2,
        workers=0,
    )
    for n, i in enumerate(ids):
        expected = np.stack([by_hand(green[i], v) for v in views])
        np.testing.assert_allclose(per_view[:, n], expected, atol=1e-6)
        np.testing.assert_allclose(probs[n], expected.mean(0), atol=1e-6)
    assert np.abs(per_view[1] - per_view[0]).max() > 0.05  # the views differ: one view for all cannot match


def test_model_crops_only_for_models_with_a_crop_size():
    cfg = model_config(image_size=10, crop_size=4)
    assert model_crops(cfg, 4, "fixed", 0).tolist() == [[0, 0], [0, 6], [6, 0], [6, 6]]
    assert model_crops(cfg, 1, "fixed", 0).tolist() == [[3, 3]]
    assert model_crops(cfg, 0, "fixed", 0) is None  # crops 0: the whole image
    assert model_crops(model_config(image_size=10), 4, "fixed", 0) is None  # no crop_size: the whole image
    with pytest.raises(ValueError, match="crop offsets and crop_size go together"):
        predict_probs(PixelModel(), [], torch.device("cpu"), "gyb", offsets=np.zeros((1, 2), np.int64))


@pytest.mark.parametrize("crop_size,n_crops", [(8, 4), (None, 0)])
def test_run_predict_scores_crops_of_models_with_a_crop_size(tmp_path, crop_size, n_crops):
    """predict.crops 4 on 16 px tiles: a model with crop_size 8 scores the 4 corners in each of 3 views (12 entries
    saved, combined by max); one without crop_size scores the whole tile in each view."""
    tiled_shards(tmp_path)
    best = checkpoint(tmp_path / "best.pt", crop_size=crop_size, train_ids=["a", "d"])
    out = tmp_path / "pred.h5"
    settings = replace(PREDICT, crops=4)
    run_predict(best, [str(tmp_path / "train.h5")], [], str(tmp_path / "folds.csv"), 1, str(out), settings)
    with h5py.File(out) as h5:
        views, probs = h5["oof/views"][...], h5["oof/probs"][...]
        assert views.shape == (3 * max(n_crops, 1), 2, 28) and np.allclose(probs, views.max(0))
        assert h5.attrs["crops"] == n_crops
        expected = [[0, 0], [0, 8], [8, 0], [8, 8]] if n_crops else np.zeros((0, 2))
        assert np.array_equal(h5.attrs["crop_offsets"], expected)
