"""Macro F1 against scikit-learn; validation BCE."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from hpaflow.metrics import bce_from_probs, f1_per_class, macro_f1


def test_macro_f1_equals_sklearn_on_random_cases():
    rng = np.random.default_rng(0)
    for case in range(200):
        n = int(rng.integers(1, 60))
        t = (rng.random((n, 28)) < rng.random(28) * 0.3).astype(int)
        p = (rng.random((n, 28)) < rng.random(28) * 0.3).astype(int)
        if case % 5 == 0:
            t[:, : case % 28] = 0  # classes with no positives at all
            p[:, : case % 7] = 0
        expected = f1_score(t, p, average="macro", zero_division=0)
        assert np.isclose(macro_f1(t, p), expected), case
        assert np.allclose(f1_per_class(t, p), f1_score(t, p, average=None, zero_division=0))


def test_bce_from_probs():
    assert np.isclose(bce_from_probs(np.array([[1, 0]]), np.array([[0.8, 0.1]])), -(np.log(0.8) + np.log(0.9)) / 2)


def test_bce_clips_certain_probabilities_to_eps_on_both_sides():
    # Confidently wrong at 0 and at 1: each costs -log(1e-7) instead of infinity; right at 0 and 1:
    # each costs -log(1 - 1e-7) (so a little over 0).
    wrong = bce_from_probs(np.array([[1, 0]]), np.array([[0.0, 1.0]]))
    assert wrong == pytest.approx(-np.log(1e-7), rel=1e-8)
    right = bce_from_probs(np.array([[0, 1]]), np.array([[0.0, 1.0]]))
    assert right == pytest.approx(1e-7, rel=1e-6)
    assert bce_from_probs(np.array([[1]]), np.array([[0.0]]), eps=1e-3) == pytest.approx(-np.log(1e-3), rel=1e-8)


def test_bce_of_float32_probabilities_is_computed_in_float64():
    # 1 - 1e-7 is not a float32: clipped in float32 the bound would be 1 - 1.19e-7 (a cost of 1.19e-7).
    assert bce_from_probs(np.array([[1]]), np.array([[1.0]], np.float32)) == pytest.approx(1e-7, rel=1e-6)


def test_f1_per_class_known_answers():
    # Columns: no true and no predicted positive (0), a missed positive (0), a false positive (0),
    # one hit, one miss (2 * 1 / (2 + 1)), all hit (1).
    y = np.array([[0, 1, 0, 1, 1], [0, 0, 0, 1, 1]])
    pred = np.array([[0, 0, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert f1_per_class(y, pred).tolist() == [0.0, 0.0, 0.0, pytest.approx(2 / 3), 1.0]
    assert macro_f1(y, pred) == pytest.approx((2 / 3 + 1) / 5)
