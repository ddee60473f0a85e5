"""Gather on hand-made predictions: fold averaging checks, ensemble weights, metrics.json figures."""

from __future__ import annotations

import json
import logging

import h5py
import numpy as np
import pandas as pd
import pytest

from hpaflow import h5names as h5n
from hpaflow import versions
from hpaflow.ensemble import EnsembleSettings, combine_models, fit_weights, run_ensemble, weighted_mean
from hpaflow.labels import CLASS_NAMES
from hpaflow.predict import write_predictions
from hpaflow.summary import (
    Predictions,
    assemble_model,
    headline,
    load_predictions,
    prior_baseline_f1,
    save_predictions,
    score,
    summary_attrs,
)
from hpaflow.thresholds import ThresholdSettings, apply, fit

SETTINGS = {
    "thresholds": {
        "methods": ["global", "per_class", "rate"],
        "final": "per_class",
        "shrink": 0,
        "min_positives": 0,
        "at_least_one": True,
    },
    "ensemble": {"weights": "fitted", "weight_step": 0.25},
}


# Every threshold setting away from its default and `rate` final: each must reach the fits it governs.
TUNED = {
    "thresholds": {
        "methods": ["global", "per_class"],
        "final": "rate",
        "shrink": 5,
        "min_positives": 30,
        "at_least_one": False,
    },
    "ensemble": {"weights": "fitted", "weight_step": 0.5},
}


def model(y, folds, noise, seed, n_test=2):
    rng = np.random.default_rng(seed)
    p = np.clip(y * (1 - noise) + rng.random(y.shape) * noise, 0, 1).astype(np.float32)
    ids = np.array([f"i{k}" for k in range(len(y))])
    return Predictions(ids, p, y, folds, np.array([f"t{k}" for k in range(n_test)], str), p[:n_test])


def fitted_ensemble(tmp_path, settings=SETTINGS, members=(("good", 0.5, 1), ("noise", 1.0, 2)), n_test=2):
    rng = np.random.default_rng(0)
    y = (rng.random((300, 28)) < 0.1).astype(np.uint8)
    folds = np.arange(300) % 3
    files, preds = {}, {}
    for name, noise, seed in members:
        files[name] = str(tmp_path / f"{name}.h5")
        preds[name] = model(y, folds, noise, seed, n_test)
        save_predictions(preds[name], files[name])
    m = run_ensemble(
        files,
        EnsembleSettings.from_config(settings),
        str(tmp_path / "ens.h5"),
        str(tmp_path / "m.json"),
        str(tmp_path / "t.csv"),
    )
    return m, preds, y, folds


def expected_eval(y, p, folds, settings, prior):
    """One method's figures rebuilt from thresholds.fit/apply and scikit-learn's F1: the thresholds fitted
    on all rows, their in-sample macro F1, the cross-fitted macro F1 and predictions (each fold
    thresholded with values fitted on the other folds)."""
    from sklearn.metrics import f1_score

    t = fit(y, p, settings, prior)
    crossed = np.zeros(p.shape, bool)
    for k in np.unique(folds):
        held = folds == k
        crossed[held] = apply(p[held], fit(y[~held], p[~held], settings, prior), settings.at_least_one)
    in_sample = f1_score(y, apply(p, t, settings.at_least_one), average="macro", zero_division=0)
    return t, in_sample, f1_score(y, crossed, average="macro", zero_division=0), crossed


def assert_rounded(figures, exact, decimals):
    """metrics.json's figures are `exact` rounded to `decimals` places (and some need the rounding)."""
    got, exact, scale = np.asarray(list(figures), np.float64), np.asarray(exact, np.float64), 10.0**decimals
    assert np.abs(got - exact).max() <= 0.5 / scale + 1e-12
    assert np.allclose(got * scale, np.round(got * scale), rtol=0, atol=1e-6)
    assert not np.allclose(exact * scale, np.round(exact * scale), rtol=0, atol=1e-6)


def weights_cross_fitted_f1(y, probs, folds, step, settings, prior):
    """Macro F1 with both the ensemble weights and the thresholds of each fold fitted on the other folds."""
    from sklearn.metrics import f1_score

    mixed, pred = np.zeros_like(probs[0]), np.zeros(probs[0].shape, bool)
    for k in np.unique(folds):
        held = folds == k
        mixed[held] = weighted_mean([p[held] for p in probs], fit_weights(y[~held], [p[~held] for p in probs], step))
    for k in np.unique(folds):
        held = folds == k
        pred[held] = apply(mixed[held], fit(y[~held], mixed[~held], settings, prior), settings.at_least_one)
    return f1_score(y, pred, average="macro", zero_division=0)


def test_ensemble_with_fitted_weights(tmp_path):
    m, _, y, _ = fitted_ensemble(tmp_path)
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
    m, preds, _, _ = fitted_ensemble(tmp_path)
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

    m, _, y, folds = fitted_ensemble(tmp_path)
    with h5py.File(tmp_path / "ens.h5") as h5:
        p = h5["oof_probs"][...]
    settings = ThresholdSettings("per_class", 0, 0, True)
    *_, crossed = expected_eval(y, p, folds, settings, None)
    expected = f1_score(y, crossed, average=None, zero_division=0)
    assert list(m["ensemble"]["per_class_f1"]) == list(CLASS_NAMES)
    assert_rounded(m["ensemble"]["per_class_f1"].values(), expected, 4)
    in_sample = f1_score(y, apply(p, fit(y, p, settings), True), average=None, zero_division=0)
    assert np.abs(in_sample - expected).max() > 0.01  # the in-sample figures would not pass


def test_ensemble_weights_of_a_fold_are_fitted_without_it():
    """Folds 0 and 1 favour model a, fold 2 model b: each fold's rows must be weighted as the other two
    folds together say, on the step's grid; all rows, one other fold, or the default step say otherwise."""
    rng = np.random.default_rng(5)
    y = (rng.random((500, 28)) < 0.15).astype(np.uint8)
    folds = np.r_[np.zeros(100, int), np.ones(250, int), np.full(150, 2)]
    good = np.clip(y * 0.55 + rng.random(y.shape) * 0.45, 0, 1)
    fair = np.clip(y * 0.3 + rng.random(y.shape) * 0.7, 0, 1)
    pa = np.where(folds[:, None] < 2, good, fair).astype(np.float32)
    pb = np.where(folds[:, None] == 2, good, fair).astype(np.float32)
    ids = np.array([f"i{k}" for k in range(500)])
    models = {n: Predictions(ids, p, y, folds, np.array(["t"]), p[:1]) for n, p in [("a", pa), ("b", pb)]}
    _, w, crossed = combine_models(models, "fitted", 0.25)
    assert w.tolist() == [0.5, 0.5]  # fit_weights on all rows with step 0.25 (step 0.1 gives [0.6, 0.4])
    w_of, w_only = {}, {}
    for k in (0, 1, 2):
        held = folds == k
        w_of[k] = fit_weights(y[~held], [pa[~held], pb[~held]], 0.25)
        w_only[k] = fit_weights(y[held], [pa[held], pb[held]], 0.25)
        assert np.allclose(crossed[held], weighted_mean([pa[held], pb[held]], w_of[k]), atol=1e-6)
    assert w_of[2].tolist() == [1, 0] and w_only[2].tolist() == [0, 1]
    assert fit_weights(y[folds != 2], [pa[folds != 2], pb[folds != 2]], 0.1).tolist() == [0.8, 0.2]
    assert not np.allclose(w_of[2], w) and not np.allclose(w_of[0], w_only[2])  # a leak, or one fold alone


def test_models_must_share_ids(tmp_path):
    y = np.zeros((6, 28), np.uint8)
    a = model(y, np.arange(6) % 2, 0.5, 0)
    b = model(y, np.arange(6) % 2, 0.5, 1)
    b.oof_ids = b.oof_ids[::-1].copy()
    save_predictions(a, tmp_path / "a.h5")
    save_predictions(b, tmp_path / "b.h5")
    with pytest.raises(ValueError, match="model b: its Ids differ from a's"):
        run_ensemble(
            {"a": str(tmp_path / "a.h5"), "b": str(tmp_path / "b.h5")},
            EnsembleSettings.from_config(SETTINGS),
            str(tmp_path / "e.h5"),
            str(tmp_path / "m.json"),
            str(tmp_path / "t.csv"),
        )


def fold_files(tmp_path, n_folds=2, test_ids=("t0", "t1", "t2"), id_format="i{}"):
    """Predictions of one model x each fold as predict writes them, with known values (no test part
    where test_ids is None)."""
    rng = np.random.default_rng(7)
    ids = np.array([id_format.format(k) for k in range(10)])
    folds = np.arange(10) % n_folds
    probs = rng.random((10, 28)).astype(np.float32)
    labels = (rng.random((10, 28)) < 0.3).astype(np.uint8)
    test = rng.random((n_folds, len(test_ids or ()), 28)).astype(np.float32)
    pd.DataFrame({"Id": ids[::-1], "dataset": "d", "fold": folds[::-1]}).to_csv(tmp_path / "folds.csv", index=False)
    files = []
    for k in range(n_folds):
        held = folds == k
        files.append(str(tmp_path / f"fold{k}.h5"))
        parts = {"oof": {"ids": ids[held], "probs": probs[held], "labels": labels[held]}}
        if test_ids is not None:
            parts["test"] = {"ids": np.array(test_ids), "probs": test[k]}
        write_predictions(files[-1], parts, {"fold": k})
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
    assert (p.oof_probs.dtype, p.labels.dtype, p.folds.dtype, p.test_probs.dtype) == (
        np.float32,
        np.uint8,
        np.int64,
        np.float32,
    )


def test_assemble_model_reads_ids_that_look_like_numbers_and_no_test_part(tmp_path):
    """Ids such as "007" stay strings (read as numbers they would match no fold file); without test
    images the model has no test rows, and its summary file says so."""
    files, ids, folds, probs, labels, _ = fold_files(tmp_path, test_ids=None, id_format="{:03d}")
    p = assemble_model(files, str(tmp_path / "folds.csv"))
    assert p.oof_ids.tolist() == ["009", "008", "007", "006", "005", "004", "003", "002", "001", "000"]
    assert np.array_equal(p.oof_probs, probs[::-1]) and np.array_equal(p.labels, labels[::-1])
    assert (p.oof_probs.dtype, p.labels.dtype) == (np.float32, np.uint8)
    assert p.test_ids.dtype.kind == "U" and p.test_ids.shape == (0,)
    assert p.test_probs.dtype == np.float32 and p.test_probs.shape == (0, 28)
    save_predictions(p, tmp_path / "m.h5", {"model": "m"})
    q = load_predictions(tmp_path / "m.h5")
    assert q.oof_ids.tolist() == p.oof_ids.tolist() and np.array_equal(q.oof_probs, p.oof_probs)
    assert q.test_ids.tolist() == [] and q.test_probs.shape == (0, 28) and q.test_probs.dtype == np.float32


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


def test_the_predict_jobs_environments_reach_metrics_json_through_the_summaries(tmp_path):
    """Predictions stamped by their jobs -> a summary carrying their one environment (2 jobs), none of its own ->
    metrics.json's software_versions: train and predict (2 jobs), ensemble (this job). A summary from before the
    stamps (model old) adds nothing and still reads."""
    files, *_ = fold_files(tmp_path)
    attrs = summary_attrs("m", files)
    here = versions.environment_versions()
    assert attrs["model"] == "m" and h5n.SOFTWARE_VERSIONS not in attrs
    assert versions.read_stamp(attrs, h5n.SOFTWARE_VERSIONS_INPUTS) == [{**here, "jobs": 2}]
    p = assemble_model(files, str(tmp_path / "folds.csv"))
    save_predictions(p, tmp_path / "m.h5", attrs)
    save_predictions(p, tmp_path / "old.h5", {"model": "old"})
    out = [str(tmp_path / name) for name in ("e.h5", "metrics.json", "t.csv")]
    settings = EnsembleSettings.from_config({**SETTINGS, "ensemble": {"weights": "equal", "weight_step": 0.25}})
    m = run_ensemble({"m": str(tmp_path / "m.h5"), "old": str(tmp_path / "old.h5")}, settings, *out)
    expected = {"train and predict": [{**here, "jobs": 2}], "ensemble": [{**here, "jobs": 1}]}
    assert m["software_versions"] == expected
    assert json.loads((tmp_path / "metrics.json").read_text())["software_versions"] == expected


def test_metrics_json_figures_are_the_known_answers(tmp_path):
    """Every figure of metrics.json recomputed from the saved inputs: thresholds.fit/apply for the
    fits, scikit-learn for the F1s, label counts / 300 for the rates (rounded as documented)."""
    from sklearn.metrics import f1_score

    m, preds, y, folds = fitted_ensemble(tmp_path)
    prior = y.mean(0)
    assert (m["n_train"], m["n_test"]) == (300, 2)
    assert list(m["training_frequency"]) == list(CLASS_NAMES)
    assert_rounded(m["training_frequency"].values(), y.sum(0) / 300, 5)
    assert m["prior_baseline"]["what"] == "each class predicted at random at its training rate (expected macro F1)"
    good, noise = preds["good"].oof_probs.astype(np.float64), preds["noise"].oof_probs
    w = m["ensemble"]["weights"]
    assert list(w) == ["good", "noise"]
    ens = load_predictions(tmp_path / "ens.h5")
    assert np.allclose(ens.oof_probs, w["good"] * good + w["noise"] * noise, atol=1e-6)
    final = {}
    for name, probs in [("good", good), ("noise", noise), ("ensemble", ens.oof_probs)]:
        got = m["ensemble"] if name == "ensemble" else m["models"][name]
        assert got["final_method"] == "per_class"
        assert got["f1_at_0.5"] == pytest.approx(f1_score(y, probs > 0.5, average="macro", zero_division=0), abs=1e-12)
        assert list(got["true_frequency"]) == list(CLASS_NAMES)
        assert_rounded(got["true_frequency"].values(), y.sum(0) / 300, 5)
        assert list(got["thresholds"]) == ["global", "per_class", "rate"]
        for method, fig in got["thresholds"].items():
            t, in_sample, crossed_f1, crossed = expected_eval(
                y, probs, folds, ThresholdSettings(method, 0.0, 0, True), prior
            )
            assert set(fig) == {"f1_cross_fitted", "f1_in_sample", "values"}
            assert fig["f1_in_sample"] == pytest.approx(in_sample, abs=1e-12)
            assert fig["f1_cross_fitted"] == pytest.approx(crossed_f1, abs=1e-12)
            if method == "global":
                assert fig["values"] == [float(t[0])] * 28  # a grid value, 3 decimals
            else:
                assert_rounded(fig["values"], t, 4)
            if method == "per_class":
                final[name] = crossed_f1
                assert got["f1_cross_fitted"] == pytest.approx(crossed_f1, abs=1e-12)
                assert list(got["predicted_frequency"]) == list(CLASS_NAMES)
                assert_rounded(got["predicted_frequency"].values(), crossed.sum(0) / 300, 5)
    assert m["ensemble"]["members_mean_f1_cross_fitted"] == pytest.approx(
        (final["good"] + final["noise"]) / 2, abs=1e-12
    )
    with_weights = weights_cross_fitted_f1(
        y,
        [preds["good"].oof_probs, preds["noise"].oof_probs],
        folds,
        0.25,
        ThresholdSettings("per_class", 0.0, 0, True),
        prior,
    )
    assert m["ensemble"]["f1_cross_fitted_with_weights"] == pytest.approx(with_weights, abs=1e-12)


def test_ensemble_output_files(tmp_path):
    """thresholds.csv: class, name, threshold (the per-class fit on the ensemble's out-of-fold rows);
    the ensemble HDF5 names its final method; metrics.json is indented for people to read."""
    m, _, y, _ = fitted_ensemble(tmp_path)
    text = (tmp_path / "m.json").read_text()
    assert text.startswith('{\n "n_train": 300,\n "n_test": 2,\n "training_frequency": {\n  "Nucleoplasm": ')
    with h5py.File(tmp_path / "ens.h5") as h5:
        assert h5.attrs["final_method"] == "per_class"
        saved, p = h5["thresholds"][...], h5["oof_probs"][...]
    expected = fit(y, p, ThresholdSettings("per_class", 0, 0, True))
    assert np.array_equal(saved, expected)
    table = pd.read_csv(tmp_path / "t.csv")
    assert table.columns.tolist() == ["class", "name", "threshold"]
    assert table["class"].tolist() == list(range(28)) and table["name"].tolist() == list(CLASS_NAMES)
    assert np.allclose(table["threshold"], expected, rtol=0, atol=1e-12)


def test_every_threshold_setting_reaches_the_fits(tmp_path):
    """shrink, min_positives, at_least_one, the rate method's prior and the weight step, all away from
    their defaults: each figure is what thresholds.fit/apply give with exactly these settings."""
    m, preds, y, folds = fitted_ensemble(tmp_path, TUNED, (("a", 0.6, 1), ("b", 0.6, 2)), n_test=3)
    prior = y.mean(0)
    a, b = preds["a"].oof_probs, preds["b"].oof_probs
    assert m["ensemble"]["weights"] == {"a": 0.5, "b": 0.5}
    ens = load_predictions(tmp_path / "ens.h5")
    assert np.allclose(ens.oof_probs, (a.astype(np.float64) + b) / 2, atol=1e-6)
    assert np.allclose(ens.test_probs, (a[:3].astype(np.float64) + b[:3]) / 2, atol=1e-6)
    for name, probs in [("a", a), ("b", b), ("ensemble", ens.oof_probs)]:
        got = m["ensemble"] if name == "ensemble" else m["models"][name]
        assert list(got["thresholds"]) == ["global", "per_class", "rate"] and got["final_method"] == "rate"
        for method, fig in got["thresholds"].items():
            t, in_sample, crossed_f1, crossed = expected_eval(
                y, probs, folds, ThresholdSettings(method, 5, 30, False), prior
            )
            assert fig["f1_in_sample"] == pytest.approx(in_sample, abs=1e-12)
            assert fig["f1_cross_fitted"] == pytest.approx(crossed_f1, abs=1e-12)
            assert np.abs(np.array(fig["values"]) - t).max() <= 5e-5
        assert got["f1_cross_fitted"] == pytest.approx(crossed_f1, abs=1e-12)  # rate's, the last
    final = ThresholdSettings("rate", 5, 30, False)
    with h5py.File(tmp_path / "ens.h5") as h5:
        assert h5.attrs["final_method"] == "rate"
        assert np.array_equal(h5["thresholds"][...], fit(y, ens.oof_probs, final, prior))
        assert np.array_equal(h5["oof_pred_cross_fitted"][...], crossed)
    with_weights = weights_cross_fitted_f1(y, [a, b], folds, 0.5, final, prior)
    assert m["ensemble"]["f1_cross_fitted_with_weights"] == pytest.approx(with_weights, abs=1e-12)
    # Each setting changes the answer here, so none can go missing unseen.
    assert (crossed.sum(1) == 0).any()  # at_least_one off: some rows predict nothing
    t = fit(y, ens.oof_probs, final, prior)
    for other in (ThresholdSettings("rate", 0, 30, False), ThresholdSettings("rate", 5, 0, False)):
        assert not np.allclose(fit(y, ens.oof_probs, other, prior), t)
    # The rate to match is the training prior of all train Ids, not the rate of the folds fitted on.
    assert expected_eval(y, a, folds, final, None)[2] != pytest.approx(expected_eval(y, a, folds, final, prior)[2])
    assert weights_cross_fitted_f1(y, [a, b], folds, 0.5, final, None) != pytest.approx(with_weights)
    assert weights_cross_fitted_f1(y, [a, b], folds, 0.1, final, prior) != pytest.approx(with_weights)


def test_equal_weights_without_test_images(tmp_path):
    equal = {**SETTINGS, "ensemble": {"weights": "equal", "weight_step": 0.25}}
    m, preds, *_ = fitted_ensemble(tmp_path, equal, (("a", 0.5, 1), ("b", 0.7, 2), ("c", 1.0, 3)), n_test=0)
    assert m["ensemble"]["weights"] == {"a": 0.3333, "b": 0.3333, "c": 0.3333}
    assert "f1_cross_fitted_with_weights" not in m["ensemble"]  # no weights fitted, nothing to cross-fit
    assert m["n_test"] == 0
    ens = load_predictions(tmp_path / "ens.h5")
    assert np.allclose(ens.oof_probs, sum(p.oof_probs.astype(np.float64) for p in preds.values()) / 3, atol=1e-6)
    assert ens.test_ids.tolist() == [] and ens.test_probs.shape == (0, 28)
    with h5py.File(tmp_path / "ens.h5") as h5:
        assert np.allclose(h5.attrs["weights"], [1 / 3] * 3, rtol=0, atol=1e-15)


def test_ensemble_logs_each_model_and_the_ensemble(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="hpaflow"):
        m, *_ = fitted_ensemble(tmp_path)
    messages = [r.getMessage() for r in caplog.records if r.name == "hpaflow"]
    figures = [(n, m["models"][n]["f1_at_0.5"], m["models"][n]["f1_cross_fitted"]) for n in ("good", "noise")]
    e = m["ensemble"]
    assert messages == [
        f"{n}: out-of-fold macro F1 {at:.4f} at 0.5, {cf:.4f} cross-fitted (per_class)" for n, at, cf in figures
    ] + [
        f"ensemble: out-of-fold macro F1 {e['f1_cross_fitted']:.4f} cross-fitted (members' mean "
        f"{e['members_mean_f1_cross_fitted']:.4f}; prior-only baseline {m['prior_baseline']['f1']:.4f})"
    ]


def test_headline(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(
        json.dumps(
            {
                "ensemble": {"f1_cross_fitted": 0.51234, "final_method": "per_class", "f1_at_0.5": 0.4},
                "prior_baseline": {"f1": 0.0731},
            }
        )
    )
    assert headline(path) == (
        "ensemble out-of-fold macro F1: 0.5123 (cross-fitted per_class thresholds; "
        "0.4000 at 0.5; prior-only baseline 0.0731)"
    )


# Per fold (rows k, k+3, k+6 form fold k) the count of positives of classes 0-3; every other class has none.
FOLD_COUNTS = {0: (3, 1, 2), 1: (1, 2, 3), 2: (0, 2, 1), 3: (0, 0, 3)}


def spread_ensemble(tmp_path, leaks=None):
    """run_ensemble on 9 train fields in 3 folds with the class counts per fold of FOLD_COUNTS."""
    folds = np.arange(9) % 3
    y = np.zeros((9, 28), np.uint8)
    for c, per_fold in FOLD_COUNTS.items():
        for k, n in enumerate(per_fold):
            y[np.flatnonzero(folds == k)[:n], c] = 1
    files = {}
    for name, seed in (("a", 1), ("b", 2)):
        files[name] = str(tmp_path / f"{name}.h5")
        save_predictions(model(y, folds, 0.5, seed), files[name])
    return run_ensemble(
        files,
        EnsembleSettings.from_config(SETTINGS),
        str(tmp_path / "ens.h5"),
        str(tmp_path / "m.json"),
        str(tmp_path / "t.csv"),
        leaks,
    )


def test_metrics_json_gives_the_fold_spread_of_each_class(tmp_path):
    """`folds`: per class the most minus the fewest positives any fold holds, over all folds present
    (fold 2 decides class 1 and 3, no fold is empty of class 0 or 1), and the largest of them."""
    m = spread_ensemble(tmp_path)
    expected = {name: 0 for name in CLASS_NAMES}
    expected.update({CLASS_NAMES[0]: 2, CLASS_NAMES[1]: 2, CLASS_NAMES[2]: 2, CLASS_NAMES[3]: 3})
    assert m["folds"] == {"class_spread_max": 3, "class_spread": expected}
    assert list(m["folds"]["class_spread"]) == list(CLASS_NAMES)
    assert json.loads((tmp_path / "m.json").read_text())["folds"] == m["folds"]


def test_metrics_json_carries_the_leak_report_only_when_given(tmp_path):
    """`duplicates` is the leak report exactly as given (duplicates.leak_report); without one the key is
    absent, not null."""
    leaks = {
        "policy": "group",
        "max_distance": 12,
        "channels": ["red", "green", "blue", "yellow"],
        "train_train_pairs": 4,
        "train_train_groups": 2,
        "train_test_pairs": 1,
        "label_conflicts": 1,
        "pairs_split_across_folds": 0,
        "dropped_external": 0,
        "fold_groups_with_several_fields": 2,
        "largest_fold_group": 3,
    }
    m = spread_ensemble(tmp_path, dict(leaks))
    on_disk = json.loads((tmp_path / "m.json").read_text())
    assert m["duplicates"] == leaks and on_disk["duplicates"] == leaks
    assert set(on_disk) == {
        "n_train",
        "n_test",
        "training_frequency",
        "prior_baseline",
        "models",
        "folds",
        "duplicates",
        "ensemble",
        "software_versions",
    }
    m = spread_ensemble(tmp_path)
    on_disk = json.loads((tmp_path / "m.json").read_text())
    assert "duplicates" not in m and "duplicates" not in on_disk
    assert set(on_disk) == {
        *("n_train", "n_test", "training_frequency", "prior_baseline", "models", "folds", "ensemble"),
        "software_versions",
    }


def test_an_unknown_weighting_is_an_error_naming_the_key():
    y = np.zeros((6, 28), np.uint8)
    models = {name: model(y, np.arange(6) % 2, 0.5, seed) for name, seed in (("a", 0), ("b", 1))}
    with pytest.raises(ValueError, match=r"^ensemble\.weights: 'mean' is not one of equal, fitted$"):
        combine_models(models, "mean", 0.25)


def test_prediction_files_carry_their_format_and_another_is_refused(tmp_path):
    """predict writes format_version; model_summary meets another format and stops with the file and the
    rerun, instead of reading it as if it were current."""
    from hpaflow.h5names import FormatError
    from hpaflow.predict import write_predictions
    from hpaflow.summary import assemble_model

    (tmp_path / "folds.csv").write_text("Id,dataset,fold,group\na,d,0,a\nb,d,1,b\n")
    files = []
    for fold, image_id in enumerate("ab"):
        part = {"ids": [image_id], "probs": np.full((1, 28), 0.25 * (fold + 1), np.float32)}
        part["labels"] = np.zeros((1, 28), np.uint8)
        files.append(str(tmp_path / f"fold{fold}.h5"))
        write_predictions(files[-1], {"oof": part}, {"model": "m", "fold": fold})
    with h5py.File(files[0], "r") as h5:
        assert h5.attrs["format_version"] == 1
    p = assemble_model(files, str(tmp_path / "folds.csv"))
    assert p.oof_ids.tolist() == ["a", "b"] and p.oof_probs[:, 0].tolist() == [0.25, 0.5]
    with h5py.File(files[1], "a") as h5:
        del h5.attrs["format_version"]
    with pytest.raises(FormatError, match=r"fold1\.h5: a predictions file of no format version; .* --forcerun predict"):
        assemble_model(files, str(tmp_path / "folds.csv"))


def test_labels_per_image_are_rounded_to_four_places():
    """1 label in 3 fields: 0.3333 true; every global threshold (grid 0.005-0.995) passes 1.0 and not 0.0, so
    the fields predict 2, 1, 1 labels: 1.3333."""
    probs = np.zeros((3, 28), np.float32)
    probs[:, 0] = 1.0
    probs[0, 1] = 1.0
    labels = np.zeros((3, 28), np.uint8)
    labels[0, 0] = 1
    p = Predictions(np.array(["a", "b", "c"]), probs, labels, np.array([0, 1, 1]), np.array([]), np.zeros((0, 28)))
    out, _ = score(p, ["global"], ThresholdSettings("global", 0.0, 0, True), labels.mean(0))
    assert out["labels_per_image"] == {"true": 0.3333, "predicted": {"global": 1.3333}}
