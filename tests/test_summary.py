"""Gather on hand-made predictions: fold averaging checks, ensemble weights, metrics.json figures."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from hpaflow.summary import Predictions, gather, prior_baseline_f1, save_predictions

SETTINGS = {"thresholds": {"methods": ["global", "per_class", "rate"], "final": "per_class", "shrink": 0,
                           "min_positives": 0, "at_least_one": True},
            "ensemble": {"weights": "fitted", "weight_step": 0.25}}


def model(y, folds, noise, seed):
    rng = np.random.default_rng(seed)
    p = np.clip(y * (1 - noise) + rng.random(y.shape) * noise, 0, 1).astype(np.float32)
    ids = np.array([f"i{k}" for k in range(len(y))])
    return Predictions(ids, p, y, folds, np.array(["t0", "t1"]), p[:2])


def test_gather_with_fitted_weights(tmp_path):
    rng = np.random.default_rng(0)
    y = (rng.random((300, 28)) < 0.1).astype(np.uint8)
    folds = np.arange(300) % 3
    files = {}
    for name, noise, seed in [("good", 0.5, 1), ("noise", 1.0, 2)]:
        files[name] = str(tmp_path / f"{name}.h5")
        save_predictions(model(y, folds, noise, seed), files[name])
    m = gather(files, SETTINGS, str(tmp_path / "ens.h5"), str(tmp_path / "m.json"), str(tmp_path / "t.csv"))
    assert m["ensemble"]["weights"]["good"] > m["ensemble"]["weights"]["noise"]
    assert m["models"]["good"]["f1_cross_fitted"] > m["models"]["noise"]["f1_cross_fitted"]
    assert "f1_cross_fitted_with_weights" in m["ensemble"]
    assert json.loads((tmp_path / "m.json").read_text()) == m
    with h5py.File(tmp_path / "ens.h5") as h5:
        assert h5["thresholds"].shape == (28,) and h5["oof_pred_cross_fitted"].shape == (300, 28)
    assert np.isclose(m["prior_baseline"]["f1"], prior_baseline_f1(y.mean(0), y.mean(0)))


def test_models_must_share_ids(tmp_path):
    y = np.zeros((6, 28), np.uint8)
    a = model(y, np.arange(6) % 2, 0.5, 0)
    b = model(y, np.arange(6) % 2, 0.5, 1)
    b.oof_ids = b.oof_ids[::-1].copy()
    save_predictions(a, tmp_path / "a.h5")
    save_predictions(b, tmp_path / "b.h5")
    with pytest.raises(ValueError, match="model b: its Ids differ from a's"):
        gather({"a": str(tmp_path / "a.h5"), "b": str(tmp_path / "b.h5")}, SETTINGS, str(tmp_path / "e.h5"),
               str(tmp_path / "m.json"), str(tmp_path / "t.csv"))
