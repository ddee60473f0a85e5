"""Ensemble weights and the submission writer's checks."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from hpaflow.ensemble import EnsembleSettings, fit_weights, run_ensemble, simplex_grid, weighted_mean
from hpaflow.plots import threshold_choice_text
from hpaflow.submission import SubmissionError, check_submission, make_submission, write_submission
from hpaflow.summary import Predictions, save_predictions


def test_simplex_grid():
    g = simplex_grid(3, 0.5)
    assert np.allclose(g.sum(1), 1) and len(g) == 6 and (g >= 0).all()
    assert g.dtype == np.float64
    assert g.tolist() == [[0, 0, 1], [0, 0.5, 0.5], [0, 1, 0], [0.5, 0, 0.5], [0.5, 0.5, 0], [1, 0, 0]]
    assert simplex_grid(2, 0.25).tolist() == [[0, 1], [0.25, 0.75], [0.5, 0.5], [0.75, 0.25], [1, 0]]
    assert simplex_grid(1, 0.1).tolist() == [[1.0]]


def test_weighted_mean():
    a, b = np.zeros((2, 3)), np.ones((2, 3))
    assert np.allclose(weighted_mean([a, b], [1, 1]), 0.5)
    assert np.allclose(weighted_mean([a, b], np.array([3, 1])), 0.25)


def test_weighted_mean_is_float32_whatever_the_inputs():
    a, b = np.zeros((2, 3)), np.ones((2, 3))
    out = weighted_mean([a, b], [1, 2])
    assert out.dtype == np.float32 and (out == np.float32(2 / 3)).all()
    # Weights are normalised in float64 even when given in half precision (where 2/3 is 0.6665).
    out = weighted_mean([a, b], np.array([1, 2], np.float16))
    assert out.dtype == np.float32 and (out == np.float32(2 / 3)).all()


def test_a_single_model_takes_all_the_weight():
    y = np.array([[1, 0], [0, 1]])
    w = fit_weights(y, [np.array([[0.9, 0.2], [0.3, 0.6]])], 0.1)
    assert w.shape == (1,) and w.tolist() == [1.0]


def test_fitted_weights_prefer_the_informative_model():
    rng = np.random.default_rng(0)
    y = (rng.random((400, 4)) < 0.3).astype(int)
    good = np.clip(y * 0.6 + rng.random((400, 4)) * 0.4, 0, 1)
    noise = rng.random((400, 4))
    w = fit_weights(y, [noise, good], step=0.25)
    assert w[1] > w[0]


SAMPLE = ["s1", "s2", "s3"]


def test_submission_keeps_sample_order_and_sorts_labels():
    pred = np.zeros((3, 28), bool)
    pred[0, [25, 0]] = True
    pred[1, 27] = True
    pred[2, [3, 1, 2]] = True
    df = make_submission(SAMPLE, np.array(["s3", "s1", "s2"]), pred)
    assert df["Id"].tolist() == SAMPLE
    assert df["Predicted"].tolist() == ["27", "1 2 3", "0 25"]  # s1 = row 1, s2 = row 2, s3 = row 0
    check_submission(df, SAMPLE)


@pytest.mark.parametrize(
    "ids,message",
    [
        (["s1", "s2"], r"1 Id\(s\) of the sample submission have no prediction, e.g. 's3'"),
        (["s1", "s2", "s2"], r"Id 's2' is predicted 2 times"),
        (["s1", "s2", "s3", "x"], r"not in the sample submission, e.g. 'x'"),
    ],
)
def test_submission_rejects_missing_repeated_or_foreign_ids(ids, message):
    with pytest.raises(SubmissionError, match=message):
        make_submission(SAMPLE, np.array(ids), np.zeros((len(ids), 28), bool))


@pytest.mark.parametrize(
    "rows,message",
    [
        ([["s1", "0"], ["s2", "28"], ["s3", ""]], r"row 3 \(Id s2\): labels '28' are not class indices"),
        ([["s1", "3 1"], ["s2", ""], ["s3", ""]], r"row 2 \(Id s1\): labels '3 1' are not sorted"),
        ([["s1", "1 1"], ["s2", ""], ["s3", ""]], r"row 2 \(Id s1\): labels '1 1' are not sorted and unique"),
        ([["s1", "0"], ["s2", "4 7 7"], ["s3", ""]], r"row 3 \(Id s2\): labels '4 7 7' are not sorted and unique"),
        ([["s2", "1"], ["s1", ""], ["s3", ""]], "^Ids are not those of the sample submission in its order$"),
    ],
)
def test_check_rejects_bad_rows(tmp_path, rows, message):
    df = pd.DataFrame(rows, columns=["Id", "Predicted"])
    with pytest.raises(SubmissionError, match=message):
        write_submission(df, SAMPLE, tmp_path / "sub.csv")
    assert not (tmp_path / "sub.csv").exists()


def test_written_submission_reads_back_as_written(tmp_path):
    pred = np.zeros((3, 28), bool)
    pred[0, 27] = True
    pred[1, [1, 2, 3]] = True  # s3 predicts nothing: an empty field
    df = make_submission(SAMPLE, np.array(SAMPLE), pred)
    write_submission(df, SAMPLE, tmp_path / "sub.csv")
    assert (tmp_path / "sub.csv").read_text() == "Id,Predicted\ns1,27\ns2,1 2 3\ns3,\n"
    # pandas reads the empty field as NaN: still a valid (empty) prediction.
    back = pd.read_csv(tmp_path / "sub.csv")
    assert back["Predicted"].isna().tolist() == [False, False, True]
    check_submission(back, SAMPLE)


def test_check_rejects_wrong_columns():
    df = pd.DataFrame({"Id": SAMPLE, "Label": ["", "", ""]})
    with pytest.raises(SubmissionError, match=r"^columns are \['Id', 'Label'\], expected \['Id', 'Predicted'\]$"):
        check_submission(df, SAMPLE)


def test_check_rejects_a_non_numeric_label():
    df = pd.DataFrame({"Id": SAMPLE, "Predicted": ["1", "x", ""]})
    with pytest.raises(SubmissionError, match=r"^row 3 \(Id s2\): labels 'x' are not class indices in 0-27$"):
        check_submission(df, SAMPLE)


def test_predictions_of_the_wrong_shape():
    with pytest.raises(SubmissionError, match=r"^predictions have shape \(3, 27\), expected \(3, 28\)$"):
        make_submission(SAMPLE, np.array(SAMPLE), np.zeros((3, 27), bool))


def one_class_member(path) -> str:
    """One model, ten rows, two folds; only class 0 has labels and scores (dyadic: exact in float32).
    Fold 0's positive scores lowest (0.125), fold 1's highest (0.875); the other 27 classes are 0 throughout.
    Worked by hand (thresholds fitted on the other fold, at_least_one off; macro F1 over 28 classes):
      per_class: fold 0 must predict everything to catch its positive (0.125 - 1e-6), fold 1 cuts at
        0.625: fold 0 predicts nothing, fold 1 everything: F1 2 / (2 + 4 + 1) = 2/7; 5 labels in 10 rows.
        In-sample (all rows, cut (0.875 + 0.5) / 2): 2/3, the best in-sample figure.
      rate (prior 0.2, k = 1 per fold): fold 0's cut (0.5 + 0.4375) / 2 passes only fold 1's 0.875, fold 1's
        0.625 passes nothing in fold 0: F1 2/3; 1 label. All rows, k = 2: 0.46875 (0.875 and 0.5 pass).
      global (grid): fold 0's 0.005 passes all of fold 1, fold 1's 0.375 passes fold 0's 0.5 and 0.4375:
        F1 2 / (2 + 6 + 1) = 2/9; 7 labels."""
    scores = [0.125, 0.5, 0.4375, 0.375, 0.25, 0.875, 0.375, 0.3125, 0.25, 0.1875]
    probs = np.zeros((10, 28), np.float32)
    probs[:, 0] = scores
    labels = np.zeros((10, 28), np.uint8)
    labels[[0, 5], 0] = 1
    ids = np.array([f"i{k}" for k in range(10)])
    pred = Predictions(ids, probs, labels, np.repeat([0, 1], 5), np.array(["t0"]), probs[:1])
    save_predictions(pred, path)
    return str(path)


def ensemble_of_one(tmp_path, methods: list[str], final: str) -> dict:
    config = {
        "thresholds": {"methods": methods, "final": final, "shrink": 0, "min_positives": 0, "at_least_one": False},
        "ensemble": {"weights": "equal", "weight_step": 0.1},
    }
    files = {"m": one_class_member(tmp_path / "m.h5")}
    out = [str(tmp_path / f) for f in ("ens.h5", "metrics.json", "thresholds.csv")]
    return run_ensemble(files, EnsembleSettings.from_config(config), *out)


def test_final_best_takes_the_highest_cross_fitted_method(tmp_path):
    """per_class looks best in-sample and overfits; rate wins cross-fitted and makes the submission."""
    m = ensemble_of_one(tmp_path, ["global", "per_class", "rate"], "best")
    assert json.loads((tmp_path / "metrics.json").read_text()) == m
    for block in (m["models"]["m"], m["ensemble"]):
        th = block["thresholds"]
        assert list(th) == ["global", "per_class", "rate"]
        crossed = {k: v["f1_cross_fitted"] for k, v in th.items()}
        assert crossed == pytest.approx({"global": 2 / 9 / 28, "per_class": 2 / 7 / 28, "rate": 2 / 3 / 28})
        in_sample = {k: v["f1_in_sample"] for k, v in th.items()}
        assert in_sample == pytest.approx({"global": 2 / 3 / 28, "per_class": 2 / 3 / 28, "rate": 0.5 / 28})
        assert block["final_method"] == "rate" and block["f1_cross_fitted"] == pytest.approx(2 / 3 / 28)
        assert block["threshold_choice"] == {
            "final": "best",
            "method": "rate",
            "why": "highest cross-fitted out-of-fold macro F1 of global 0.0079, per_class 0.0102, rate 0.0238",
        }
        assert block["labels_per_image"] == {"true": 0.2, "predicted": {"global": 0.7, "per_class": 0.5, "rate": 0.1}}
        assert block["predicted_frequency"]["Nucleoplasm"] == 0.1 and block["true_frequency"]["Nucleoplasm"] == 0.2
    # The submission's thresholds are rate's, fitted on all rows: 0.46875 for class 0, 1 (prior 0) for the rest.
    assert pd.read_csv(tmp_path / "thresholds.csv")["threshold"].tolist() == [0.46875] + [1.0] * 27
    with h5py.File(tmp_path / "ens.h5") as h5:
        assert h5.attrs["final_method"] == "rate"
        assert h5["oof_pred_cross_fitted"][:, 0].tolist() == [False] * 5 + [True] + [False] * 4
    assert threshold_choice_text(m["ensemble"]["threshold_choice"], m["ensemble"]["labels_per_image"]) == (
        "Thresholds of the submission: ``rate`` (thresholds.final ``best``: highest cross-fitted out-of-fold macro "
        "F1 of global 0.0079, per_class 0.0102, rate 0.0238). Labels per image, ensemble out-of-fold with "
        "cross-fitted thresholds: global 0.70, per_class 0.50, rate 0.10; the training labels have 0.20."
    )


def test_a_named_final_method_is_scored_and_kept(tmp_path):
    # rate is not among the methods: it is scored too and taken as named.
    m = ensemble_of_one(tmp_path, ["global", "per_class"], "rate")
    assert list(m["ensemble"]["thresholds"]) == ["global", "per_class", "rate"]
    assert m["ensemble"]["threshold_choice"] == {
        "final": "rate",
        "method": "rate",
        "why": "thresholds.final names rate",
    }
    # per_class named: kept although rate scores higher; its all-rows cut (0.875 + 0.5) / 2 goes in the table.
    m = ensemble_of_one(tmp_path, ["global", "per_class", "rate"], "per_class")
    assert m["ensemble"]["final_method"] == "per_class" and m["ensemble"]["f1_cross_fitted"] == pytest.approx(
        2 / 7 / 28
    )
    assert pd.read_csv(tmp_path / "thresholds.csv")["threshold"].tolist() == [0.6875] + [1.0] * 27
    with pytest.raises(ValueError, match=r"^thresholds.final: best needs at least one method in thresholds.methods$"):
        ensemble_of_one(tmp_path, [], "best")


def test_ensemble_settings_score_a_named_final_method_but_not_best():
    def methods(listed, final):
        th = {"methods": listed, "final": final, "shrink": 0, "min_positives": 0, "at_least_one": True}
        return EnsembleSettings.from_config({"thresholds": th, "ensemble": {"weights": "equal", "weight_step": 0.1}})

    assert methods(["rate", "global"], "best").methods == ["rate", "global"]
    assert methods(["rate", "global"], "best").final.method == "best"
    assert methods(["rate"], "per_class").methods == ["rate", "per_class"]
    assert methods(["rate", "global"], "global").methods == ["rate", "global"]
