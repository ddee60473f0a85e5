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


def test_weighted_mean():
    a, b = np.zeros((2, 3)), np.ones((2, 3))
    assert np.allclose(weighted_mean([a, b]), 0.5)
    assert np.allclose(weighted_mean([a, b], np.array([3, 1])), 0.25)


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


@pytest.mark.parametrize("ids,message", [
    (["s1", "s2"], r"1 Id\(s\) of the sample submission have no prediction, e.g. 's3'"),
    (["s1", "s2", "s2"], r"Id 's2' is predicted 2 times"),
    (["s1", "s2", "s3", "x"], r"not in the sample submission, e.g. 'x'"),
])
def test_submission_rejects_missing_repeated_or_foreign_ids(ids, message):
    with pytest.raises(SubmissionError, match=message):
        make_submission(SAMPLE, np.array(ids), np.zeros((len(ids), 28), bool))


@pytest.mark.parametrize("rows,message", [
    ([["s1", "0"], ["s2", "28"], ["s3", ""]], r"row 3 \(Id s2\): labels '28' are not class indices"),
    ([["s1", "3 1"], ["s2", ""], ["s3", ""]], r"row 2 \(Id s1\): labels '3 1' are not sorted"),
    ([["s1", "1 1"], ["s2", ""], ["s3", ""]], r"row 2 \(Id s1\): labels '1 1' are not sorted and unique"),
    ([["s1", "0"], ["s2", "4 7 7"], ["s3", ""]], r"row 3 \(Id s2\): labels '4 7 7' are not sorted and unique"),
    ([["s2", "1"], ["s1", ""], ["s3", ""]], "not those of the sample submission in its order"),
])
def test_check_rejects_bad_rows(tmp_path, rows, message):
    df = pd.DataFrame(rows, columns=["Id", "Predicted"])
    with pytest.raises(SubmissionError, match=message):
        write_submission(df, SAMPLE, tmp_path / "sub.csv")
    assert not (tmp_path / "sub.csv").exists()
