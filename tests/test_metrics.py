"""Macro F1 against scikit-learn; validation BCE."""

from __future__ import annotations

import numpy as np
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
