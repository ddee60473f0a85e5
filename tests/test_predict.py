"""Prediction on tiled shards: tiles aggregate to one row per image; TTA views saved on request."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from hpaflow.data import ShardRows
from hpaflow.models import build_model
from hpaflow.predict import LeakError, predict_rows, run_predict
from hpaflow.shards import ShardSpec, write_shard
from hpaflow.transforms import MEAN, STD

PREDICT = dict(views=[0, 3, 6], tta_combine="max", tile_combine="mean", save_views=True, batch_size=3,
               device_name="cpu", threads=1)


def tiled_shards(tmp_path):
    rng = np.random.default_rng(0)
    ids = ["a", "b", "c", "d"]
    for i in ids:
        for c in ["red", "green", "blue", "yellow"]:
            cv2.imwrite(str(tmp_path / f"{i}_{c}.png"), rng.integers(0, 256, (32, 32), dtype=np.uint8))
    spec = dict(dataset="ds", fmt="png", images_dir=str(tmp_path), image_size=32, tiling="grid", tile_size=16)
    labels = np.eye(28, dtype=np.uint8)[[1, 2, 3, 4]]
    write_shard(tmp_path / "train.h5", ShardSpec(role="train", **spec), ids, labels)
    write_shard(tmp_path / "test.h5", ShardSpec(role="test", **spec), ids[:2], None)
    (tmp_path / "folds.csv").write_text("Id,dataset,fold\na,ds,0\nb,ds,1\nc,ds,1\nd,ds,0\n")
    return labels


def checkpoint(path, **extra):
    torch.manual_seed(0)
    model = build_model("resnet18", 3)
    cfg = {"name": "m", "backbone": "resnet18", "color_mode": "gyb", "image_size": 16}
    torch.save({"model": model.state_dict(), "config": cfg, **extra}, path)
    return str(path)


def predict(tmp_path, best, fold):
    out = tmp_path / "pred.h5"
    run_predict(best, [str(tmp_path / "train.h5")], [str(tmp_path / "test.h5")], str(tmp_path / "folds.csv"),
                fold, str(out), **PREDICT)
    return out


def test_run_predict_aggregates_tiles_and_keeps_views(tmp_path):
    labels = tiled_shards(tmp_path)
    out = predict(tmp_path, checkpoint(tmp_path / "best.pt", train_ids=["a", "d"]), 1)
    with h5py.File(out) as h5:
        assert h5["oof/ids"].asstr()[...].tolist() == ["b", "c"]  # fold 1, one row per image (4 tiles each)
        assert np.array_equal(h5["oof/labels"][...], labels[[1, 2]])
        views, probs = h5["oof/views"][...], h5["oof/probs"][...]
        assert views.shape == (3, 2, 28) and np.allclose(probs, views.max(0))
        assert h5["test/ids"].asstr()[...].tolist() == ["a", "b"] and "labels" not in h5["test"]
        # b is in both: the same image gives the same probabilities.
        assert np.allclose(h5["test/probs"][1], probs[0], atol=1e-6)
        assert h5.attrs["views"].tolist() == [0, 3, 6] and h5.attrs["tta_combine"] == "max"


@pytest.mark.parametrize("fold,trained_on,leaked", [
    (1, ["a", "b", "d"], "1 Id(s) that fold 1 now holds out (b)"),
    (0, ["a", "b", "c", "d"], "2 Id(s) that fold 0 now holds out (a, d)"),
])
def test_out_of_fold_rows_the_model_was_trained_on_are_refused(tmp_path, fold, trained_on, leaked):
    tiled_shards(tmp_path)
    best = checkpoint(tmp_path / "best.pt", train_ids=trained_on)
    with pytest.raises(LeakError, match=re.escape(f"{best} was trained on {leaked}")):
        predict(tmp_path, best, fold)
    assert not (tmp_path / "pred.h5").exists()


def test_checkpoint_without_training_ids_is_refused(tmp_path):
    tiled_shards(tmp_path)
    with pytest.raises(LeakError, match="records no training Ids"):
        predict(tmp_path, checkpoint(tmp_path / "best.pt"), 1)


def test_damaged_checkpoint_is_named(tmp_path):
    tiled_shards(tmp_path)
    best = tmp_path / "best.pt"
    whole = Path(checkpoint(tmp_path / "ok.pt", train_ids=["a", "d"])).read_bytes()
    best.write_bytes(whole[:5000])  # cut short
    with pytest.raises(ValueError, match=re.escape(f"{best}: cannot be read as a checkpoint")):
        predict(tmp_path, str(best), 1)


class PixelModel(torch.nn.Module):
    """Logit of class k = input channel 0 at row 0, column k: the output follows the image's orientation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, :28]


def by_hand(green: np.ndarray, view: int) -> np.ndarray:
    """What PixelModel gives for one view of a uint8 green plane (gyb channel 0 is G), computed in numpy."""
    oriented = np.rot90(green[:, ::-1] if view >= 4 else green, view % 4)  # flip left-right, then rotate
    x = (oriented[0, :28].astype(np.float64) / 255 - MEAN[0]) / STD[0]
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
    spec = ShardSpec(dataset="ds", fmt="png", images_dir=str(tmp_path), role="test", image_size=56,
                     tiling="grid", tile_size=28)
    write_shard(tmp_path / "s.h5", spec, ids, None)
    views = [0, 1, 2, 3, 4, 5, 6, 7]
    got_ids, probs, per_view = predict_rows(PixelModel(), {"image_size": 28, "color_mode": "gyb"},
                                            ShardRows.from_files([tmp_path / "s.h5"]), torch.device("cpu"), views,
                                            tta_combine, tile_combine, batch_size=3, workers=0)
    assert got_ids.tolist() == ids
    reduce = {"mean": np.mean, "max": np.max}
    for n, i in enumerate(ids):
        tiles = [green[i][y:y + 28, x:x + 28] for y in (0, 28) for x in (0, 28)]
        expected_views = np.stack([reduce[tile_combine]([by_hand(t, v) for t in tiles], axis=0) for v in views])
        assert np.allclose(per_view[:, n], expected_views, atol=1e-6)
        assert np.allclose(probs[n], reduce[tta_combine](expected_views, axis=0), atol=1e-6)
    # The views and tiles differ, so a shortcut (one view, one tile rule) cannot match by chance.
    assert np.abs(per_view[1] - per_view[0]).max() > 0.05
