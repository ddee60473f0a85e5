"""Gather on hand-made predictions: fold averaging checks, ensemble weights, metrics.json figures."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from hpaflow.ensemble import fit_weights, weighted_mean
from hpaflow.predict import write_predictions
from hpaflow.summary import (
    Predictions,
    assemble_model,
    ensemble,
    gather,
    headline,
    prior_baseline_f1,
    save_predictions,
)
from hpaflow.thresholds import ThresholdSettings, apply, fit

SETTINGS = {"thresholds": {"methods": ["global", "per_class", "rate"], "final": "per_class", "shrink": 0,
                           "min_positives": 0, "at_least_one": True},
            "ensemble": {"weights": "fitted", "weight_step": 0.25}}


def model(y, folds, noise, seed):
    rng = np.random.default_rng(seed)
    p = np.clip(y * (1 - noise) + rng.random(y.shape) * noise, 0, 1).astype(np.float32)
    ids = np.array([f"i{k}" for k in range(len(y))])
    return Predictions(ids, p, y, folds, np.array(["t0", "t1"]), p[:2])


def fitted_gather(tmp_path):
    rng = np.random.default_rng(0)
    y = (rng.random((300, 28)) < 0.1).astype(np.uint8)
    folds = np.arange(300) % 3
    files, preds = {}, {}
    for name, noise, seed in [("good", 0.5, 1), ("noise", 1.0, 2)]:
        files[name] = str(tmp_path / f"{name}.h5")
        preds[name] = model(y, folds, noise, seed)
        save_predictions(preds[name], files[name])
    m = gather(files, SETTINGS, str(tmp_path / "ens.h5"), str(tmp_path / "m.json"), str(tmp_path / "t.csv"))
    return m, preds, y, folds


def test_gather_with_fitted_weights(tmp_path):
    m, _, y, _ = fitted_gather(tmp_path)
    assert m["ensemble"]["weights"]["good"] > m["ensemble"]["weights"]["noise"]
    assert m["models"]["good"]["f1_cross_fitted"] > m["models"]["noise"]["f1_cross_fitted"]
    assert "f1_cross_fitted_with_weights" in m["ensemble"]
    assert json.loads((tmp_path / "m.json").read_text()) == m
    with h5py.File(tmp_path / "ens.h5") as h5:
        assert h5["thresholds"].shape == (28,) and h5["oof_pred_cross_fitted"].shape == (300, 28)
    # Each class predicted at random at its training rate q, scored against rate q: F1 = 2qq/(q+q) = q.
    assert np.isclose(m["prior_baseline"]["f1"], y.mean(0).mean(), atol=1e-12)


def test_prior_baseline_known_values():
    # precision q, recall p: F1 = 2pq / (p + q); a class absent from both scores 0.
    assert np.isclose(prior_baseline_f1(np.array([0.5, 0.0]), np.array([0.25, 0.0])), (2 * 0.5 * 0.25 / 0.75) / 2)
    assert np.isclose(prior_baseline_f1(np.array([0.1, 0.3]), np.array([0.1, 0.3])), 0.2)


def test_fitted_weights_make_the_test_probabilities(tmp_path):
    m, preds, _, _ = fitted_gather(tmp_path)
    with h5py.File(tmp_path / "ens.h5") as h5:
        w, test = h5.attrs["weights"], h5["test_probs"][...]
    assert np.isclose(w.sum(), 1) and w[0] > w[1]  # not the equal mean, so that one cannot pass for it
    expected = w[0] * preds["good"].test_probs.astype(np.float64) + w[1] * preds["noise"].test_probs
    assert np.allclose(test, expected, atol=1e-6)
    assert list(m["ensemble"]["weights"].values()) == pytest.approx(w.tolist(), abs=1e-4)


def test_per_class_f1_is_cross_fitted(tmp_path):
    """metrics.json's per-class F1 recomputed from the saved out-of-fold probabilities: each fold
    thresholded with per-class values fitted on the other folds, scored with sklearn."""
    from sklearn.metrics import f1_score

    m, _, y, folds = fitted_gather(tmp_path)
    with h5py.File(tmp_path / "ens.h5") as h5:
        p = h5["oof_probs"][...]
    settings = ThresholdSettings("per_class", 0, 0, True)
    crossed = np.zeros(p.shape, bool)
    for k in range(3):
        t = fit(y[folds != k], p[folds != k], settings)
        crossed[folds == k] = apply(p[folds == k], t, True)
    expected = f1_score(y, crossed, average=None, zero_division=0)
    assert np.allclose(list(m["ensemble"]["per_class_f1"].values()), expected, atol=1e-4)
    in_sample = f1_score(y, apply(p, fit(y, p, settings), True), average=None, zero_division=0)
    assert np.abs(in_sample - expected).max() > 0.01  # the in-sample figures would not pass


def test_ensemble_weights_of_a_fold_are_fitted_without_it():
    """Fold 0 favours model a, fold 1 (the larger) model b: each fold's rows must be weighted as the
    other fold alone says, which differs from what all rows together say."""
    rng = np.random.default_rng(5)
    y = (rng.random((400, 28)) < 0.15).astype(np.uint8)
    folds = np.r_[np.zeros(100, int), np.ones(300, int)]
    good = np.clip(y * 0.55 + rng.random(y.shape) * 0.45, 0, 1)
    poor = rng.random(y.shape)
    pa = np.where(folds[:, None] == 0, good, poor).astype(np.float32)
    pb = np.where(folds[:, None] == 1, good, poor).astype(np.float32)
    ids = np.array([f"i{k}" for k in range(400)])
    models = {n: Predictions(ids, p, y, folds, np.array(["t"]), p[:1]) for n, p in [("a", pa), ("b", pb)]}
    _, _, crossed = ensemble(models, "fitted", 0.1)
    for k in (0, 1):
        held = folds == k
        w_other = fit_weights(y[~held], [pa[~held], pb[~held]], 0.1)
        w_all = fit_weights(y, [pa, pb], 0.1)
        assert not np.allclose(w_other, w_all)  # a leak would show
        assert np.allclose(crossed[held], weighted_mean([pa[held], pb[held]], w_other), atol=1e-6)


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


def fold_files(tmp_path, n_folds=2, test_ids=("t0", "t1", "t2")):
    """Predictions of one model x each fold as predict writes them, with known values."""
    rng = np.random.default_rng(7)
    ids = np.array([f"i{k}" for k in range(10)])
    folds = np.arange(10) % n_folds
    probs = rng.random((10, 28)).astype(np.float32)
    labels = (rng.random((10, 28)) < 0.3).astype(np.uint8)
    test = rng.random((n_folds, len(test_ids), 28)).astype(np.float32)
    pd.DataFrame({"Id": ids[::-1], "dataset": "d", "fold": folds[::-1]}).to_csv(tmp_path / "folds.csv", index=False)
    files = []
    for k in range(n_folds):
        held = folds == k
        files.append(str(tmp_path / f"fold{k}.h5"))
        write_predictions(files[-1], {"oof": {"ids": ids[held], "probs": probs[held], "labels": labels[held]},
                                      "test": {"ids": np.array(test_ids), "probs": test[k]}}, {"fold": k})
    return files, ids, folds, probs, labels, test


def test_assemble_model_orders_oof_rows_and_averages_test_folds(tmp_path):
    files, ids, folds, probs, labels, test = fold_files(tmp_path)
    p = assemble_model(files, str(tmp_path / "folds.csv"))
    order = np.arange(10)[::-1]  # the folds table lists the Ids backwards
    assert p.oof_ids.tolist() == ids[order].tolist()
    assert np.array_equal(p.oof_probs, probs[order]) and np.array_equal(p.labels, labels[order])
    assert p.folds.tolist() == folds[order].tolist()
    assert p.test_ids.tolist() == ["t0", "t1", "t2"]
    assert np.allclose(p.test_probs, (test[0] + test[1]) / 2, atol=1e-7)


def test_assemble_model_checks_its_inputs(tmp_path):
    files, *_ = fold_files(tmp_path)
    with pytest.raises(ValueError, match=r"no out-of-fold prediction for 5 train Id\(s\), e.g. 'i9'"):
        assemble_model(files[:1], str(tmp_path / "folds.csv"))
    table = pd.read_csv(tmp_path / "folds.csv")
    table.loc[table["Id"] == "i0", "fold"] = 1
    table.to_csv(tmp_path / "moved.csv", index=False)
    with pytest.raises(ValueError, match=r"fold0\.h5: out-of-fold Ids are not those of fold 0 in .*moved\.csv"):
        assemble_model(files, str(tmp_path / "moved.csv"))
    other = tmp_path / "other"
    other.mkdir()
    files_b, *_ = fold_files(other, test_ids=("t0", "t2", "t1"))
    with pytest.raises(ValueError, match=r"fold1\.h5: test Ids differ from the other folds' files"):
        assemble_model([files[0], files_b[1]], str(tmp_path / "folds.csv"))


def test_headline(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"ensemble": {"f1_cross_fitted": 0.51234, "final_method": "per_class",
                                             "f1_at_0.5": 0.4}, "prior_baseline": {"f1": 0.0731}}))
    assert headline(path) == ("ensemble out-of-fold macro F1: 0.5123 (cross-fitted per_class thresholds; "
                              "0.4000 at 0.5; prior-only baseline 0.0731)")
