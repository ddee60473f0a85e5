"""Thresholds: the exact sweep against brute force, methods, cross-fitting never sees its own fold."""

from __future__ import annotations

import numpy as np
import pytest

from hpaflow.metrics import f1_per_class, macro_f1, macro_f1_at
from hpaflow.thresholds import (
    ThresholdSettings,
    apply,
    best_global,
    best_per_class,
    cross_fit,
    evaluate,
    f1_curve,
    fit,
    rate_thresholds,
)


def brute_force_best(y, s):
    """F1 at every distinct cut of the scores, by direct counting."""
    u = np.unique(s)
    cands = np.concatenate([[u[0] - 1], (u[1:] + u[:-1]) / 2, [u[-1] + 1]])
    return max(f1_per_class(y[:, None], (s > t)[:, None])[0] for t in cands)


def test_per_class_sweep_equals_brute_force():
    rng = np.random.default_rng(0)
    for case in range(300):
        n = int(rng.integers(1, 25))
        y = (rng.random(n) < rng.random()).astype(int)
        s = np.round(rng.random(n), int(rng.integers(1, 3)))  # rounding makes ties
        t, f1 = best_per_class(y, s)
        assert np.isclose(f1, brute_force_best(y, s)), case
        # The returned threshold realises that F1.
        assert np.isclose(f1_per_class(y[:, None], (s > t)[:, None])[0], f1), case


def test_f1_curve_matches_direct_count():
    rng = np.random.default_rng(1)
    y = (rng.random(200) < 0.2).astype(int)
    s = rng.random(200)
    grid = np.linspace(0, 1, 21)
    direct = [f1_per_class(y[:, None], (s > t)[:, None])[0] for t in grid]
    assert np.allclose(f1_curve(y, s, grid), direct)


def test_global_threshold_is_the_macro_optimum_on_the_grid():
    rng = np.random.default_rng(2)
    y = (rng.random((300, 5)) < 0.3).astype(int)
    p = np.clip(y * 0.3 + rng.random((300, 5)) * 0.6, 0, 1)
    t, f1 = best_global(y, p, np.array([0.1, 0.3, 0.5, 0.7]))
    direct = {tt: macro_f1(y, p > tt) for tt in [0.1, 0.3, 0.5, 0.7]}
    assert t == max(direct, key=direct.get) and np.isclose(f1, max(direct.values()))


def test_best_global_finds_the_separating_value():
    y = np.array([[1, 0], [0, 1], [0, 0], [1, 1]])
    probs = np.array([[0.8, 0.3], [0.2, 0.7], [0.3, 0.25], [0.9, 0.6]])
    t, f1 = best_global(y, probs)
    assert f1 == 1.0 and 0.3 <= t < 0.6


def test_rate_thresholds_match_the_prior():
    p = np.random.default_rng(3).random((1000, 3))
    t = rate_thresholds(p, np.array([0.1, 0.5, 0.0]))
    assert np.allclose((p > t).mean(0), [0.1, 0.5, 0.0])


def test_shrinkage_and_floor():
    rng = np.random.default_rng(4)
    y = np.zeros((400, 3), int)
    y[:200, 0] = 1
    y[:3, 1] = 1  # a rare class
    y[:40, 2] = 1
    p = np.clip(y * 0.5 + rng.random((400, 3)) * 0.5, 0, 1)
    t_global, _ = best_global(y, p)
    raw = fit(y, p, ThresholdSettings("per_class"))
    floored = fit(y, p, ThresholdSettings("per_class", min_positives=5))
    assert floored[1] == t_global and floored[0] == raw[0] and floored[2] == raw[2]
    shrunk = fit(y, p, ThresholdSettings("per_class", shrink=40))
    w = y.sum(0) / (y.sum(0) + 40)
    assert np.allclose(shrunk, w * raw + (1 - w) * t_global)


def test_at_least_one_argmax_fallback():
    p = np.array([[0.1, 0.3, 0.2], [0.9, 0.1, 0.6]])
    assert apply(p, 0.5, at_least_one=False).tolist() == [[False, False, False], [True, False, True]]
    assert apply(p, 0.5).tolist() == [[False, True, False], [True, False, True]]


def test_cross_fitting_never_fits_on_the_held_out_fold():
    rng = np.random.default_rng(5)
    y = (rng.random((90, 28)) < 0.2).astype(int)
    p = rng.random((90, 28))
    folds = np.repeat([0, 1, 2], 30)
    seen = []

    def fit_fn(rows):
        seen.append(set(rows.tolist()))
        return np.full(28, 0.5)

    cross_fit(y, p, folds, fit_fn)
    assert len(seen) == 3
    for k, rows in enumerate(seen):
        held = set(np.flatnonzero(folds == k).tolist())
        assert rows.isdisjoint(held) and rows | held == set(range(90))


def test_cross_fitted_score_is_honest_on_noise():
    """On pure noise, in-sample fitting looks better than chance; cross-fitting does not."""
    rng = np.random.default_rng(6)
    y = (rng.random((400, 28)) < 0.05).astype(int)
    p = rng.random((400, 28))
    ev = evaluate(y, p, np.arange(400) % 4, ThresholdSettings("per_class", at_least_one=False))
    assert ev["f1_in_sample"] > ev["f1_cross_fitted"] + 0.02


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown threshold method"):
        fit(np.zeros((4, 2)), np.zeros((4, 2)), ThresholdSettings("magic"))


def test_a_score_equal_to_its_threshold_is_not_predicted():
    p = np.array([[0.5, 0.2], [0.7, 0.5]])
    assert apply(p, np.array([0.5, 0.5]), at_least_one=False).tolist() == [[False, False], [True, False]]
    # ... and with at_least_one the empty first row takes its argmax, the second row stays as it is.
    assert apply(p, np.array([0.5, 0.5])).tolist() == [[True, False], [True, False]]
    assert macro_f1_at(np.array([[1, 0], [1, 0]]), p, 0.5) == pytest.approx(np.mean([2 / 3, 0.0]))


def test_per_class_sweep_known_answers():
    # No positives: threshold 1 (predict nothing), F1 0.
    assert best_per_class(np.zeros(4, int), np.array([0.1, 0.9, 0.5, 0.3])) == (1.0, 0.0)
    # Best cut after the two highest: the midpoint between the 2nd and 3rd score.
    t, f1 = best_per_class(np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.3, 0.1]))
    assert t == pytest.approx(0.55) and f1 == 1.0
    # Every image positive: the cut falls below the lowest score, just under it.
    t, f1 = best_per_class(np.array([1, 1, 1]), np.array([0.7, 0.2, 0.4]))
    assert t == pytest.approx(0.2 - 1e-6, abs=1e-9) and f1 == 1.0
    # A tie that straddles the classes cannot be cut inside: positives 0.6 (x2, one negative among them).
    t, f1 = best_per_class(np.array([1, 0, 1, 0]), np.array([0.6, 0.6, 0.9, 0.1]))
    assert f1 == pytest.approx(max(2 * 1 / (1 + 2), 2 * 2 / (3 + 2))) and t == pytest.approx(0.35)
    # Scores that are equal keep their order of appearance (stable sort) in float32 too.
    t32, _ = best_per_class(np.array([1, 0, 0]), np.array([0.5, 0.5, 0.2], np.float32))
    assert t32 == pytest.approx(0.35)


def test_rate_threshold_known_answers():
    p = np.array([[0.9, 0.1], [0.7, 0.2], [0.4, 0.3], [0.2, 0.4]])
    t = rate_thresholds(p, np.array([0.5, 0.0]))
    assert t[0] == pytest.approx(0.55) and t[1] == 1.0  # two of four above; none at all
    t = rate_thresholds(p, np.array([1.0, 0.25]))
    assert t[0] == pytest.approx(0.2 - 1e-6, abs=1e-9) and t[1] == pytest.approx(0.35)
    # fit() takes the training prior when given one, else the labels' own rate.
    y = np.array([[1, 0], [0, 0], [0, 0], [0, 0]])
    assert fit(y, p, ThresholdSettings("rate"))[0] == pytest.approx(0.8)
    assert fit(y, p, ThresholdSettings("rate"), prior=np.array([0.5, 0.0]))[0] == pytest.approx(0.55)


def test_floor_and_shrink_boundaries():
    rng = np.random.default_rng(8)
    y = np.zeros((60, 2), int)
    y[:5, 0] = 1
    y[:20, 1] = 1
    p = np.clip(y * 0.5 + rng.random((60, 2)) * 0.5, 0, 1)
    t_global, _ = best_global(y, p)
    raw = fit(y, p, ThresholdSettings("per_class"))
    # Exactly min_positives positives keep their own value; one fewer takes the global one.
    assert fit(y, p, ThresholdSettings("per_class", min_positives=5))[0] == raw[0]
    assert fit(y, p, ThresholdSettings("per_class", min_positives=6))[0] == t_global
    # shrink 0 leaves the per-class values as they are (also for a class without positives).
    y[:, 0] = 0
    assert np.array_equal(fit(y, p, ThresholdSettings("per_class", shrink=0)),
                          fit(y, p, ThresholdSettings("per_class")))
    shrunk = fit(y, p, ThresholdSettings("per_class", shrink=0.5))
    assert shrunk[0] == pytest.approx(t_global)  # no positives: all weight on the global value


def test_f1_curve_edges():
    y, s = np.array([1, 0, 1]), np.array([0.2, 0.5, 0.8])
    # At a threshold equal to a score that score is not predicted (s > t); above everything F1 is 0.
    assert f1_curve(y, s, np.array([0.5, 0.8, 1.0, 0.1])).tolist() == pytest.approx([2 / 3, 0.0, 0.0, 0.8])
    assert f1_curve(np.zeros(3, int), s, np.array([0.9])).tolist() == [0.0]
