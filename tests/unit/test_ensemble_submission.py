"""Ensemble weights and the submission writer's checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hpaflow.ensemble import fit_weights, simplex_grid, weighted_mean
from hpaflow.submission import SubmissionError, check_submission, make_submission, write_submission


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
