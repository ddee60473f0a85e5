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
    raw = fit(y, p, ThresholdSettings("per_class", 0.0, 0, True))
    floored = fit(y, p, ThresholdSettings("per_class", 0.0, 5, True))
    assert floored[1] == t_global and floored[0] == raw[0] and floored[2] == raw[2]
    shrunk = fit(y, p, ThresholdSettings("per_class", 40, 0, True))
    w = y.sum(0) / (y.sum(0) + 40)
    assert np.allclose(shrunk, w * raw + (1 - w) * t_global)


def test_at_least_one_argmax_fallback():
    p = np.array([[0.1, 0.3, 0.2], [0.9, 0.1, 0.6]])
    assert apply(p, 0.5, at_least_one=False).tolist() == [[False, False, False], [True, False, True]]
    assert apply(p, 0.5, True).tolist() == [[False, True, False], [True, False, True]]


def test_cross_fitting_never_fits_on_the_held_out_fold():
    rng = np.random.default_rng(5)
    p = rng.random((90, 28))
    folds = np.repeat([0, 1, 2], 30)
    seen = []

    def fit_fn(rows):
        seen.append(set(rows.tolist()))
        return np.full(28, 0.5)

    cross_fit(p, folds, fit_fn, True)
    assert len(seen) == 3
    for k, rows in enumerate(seen):
        held = set(np.flatnonzero(folds == k).tolist())
        assert rows.isdisjoint(held) and rows | held == set(range(90))


def test_cross_fitted_score_is_honest_on_noise():
    """On pure noise, in-sample fitting looks better than chance; cross-fitting does not."""
    rng = np.random.default_rng(6)
    y = (rng.random((400, 28)) < 0.05).astype(int)
    p = rng.random((400, 28))
    ev = evaluate(y, p, np.arange(400) % 4, ThresholdSettings("per_class", 0.0, 0, False))
    assert ev["f1_in_sample"] > ev["f1_cross_fitted"] + 0.02


def test_unknown_method():
    with pytest.raises(ValueError, match=r"^unknown threshold method 'magic' \(one of global, per_class, rate\)$"):
        fit(np.zeros((4, 2)), np.zeros((4, 2)), ThresholdSettings("magic", 0.0, 0, True))


def test_a_score_equal_to_its_threshold_is_not_predicted():
    p = np.array([[0.5, 0.2], [0.7, 0.5]])
    assert apply(p, np.array([0.5, 0.5]), at_least_one=False).tolist() == [[False, False], [True, False]]
    # ... and with at_least_one the empty first row takes its argmax, the second row stays as it is.
    assert apply(p, np.array([0.5, 0.5]), True).tolist() == [[True, False], [True, False]]
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
    # Equal scores (a positive first, as given, or a negative first) cut only around their run, in float32 too.
    t32, _ = best_per_class(np.array([1, 0, 0]), np.array([0.5, 0.5, 0.2], np.float32))
    assert t32 == pytest.approx(0.35)
    assert best_per_class(np.array([0, 1, 0]), np.array([0.5, 0.5, 0.2], np.float32)) == pytest.approx((0.35, 2 / 3))


def test_rate_threshold_known_answers():
    p = np.array([[0.9, 0.1], [0.7, 0.2], [0.4, 0.3], [0.2, 0.4]])
    t = rate_thresholds(p, np.array([0.5, 0.0]))
    assert t[0] == pytest.approx(0.55) and t[1] == 1.0  # two of four above; none at all
    t = rate_thresholds(p, np.array([1.0, 0.25]))
    assert t[0] == pytest.approx(0.2 - 1e-6, abs=1e-9) and t[1] == pytest.approx(0.35)
    # fit() takes the training prior when given one, else the labels' own rate.
    y = np.array([[1, 0], [0, 0], [0, 0], [0, 0]])
    assert fit(y, p, ThresholdSettings("rate", 0.0, 0, True))[0] == pytest.approx(0.8)
    assert fit(y, p, ThresholdSettings("rate", 0.0, 0, True), prior=np.array([0.5, 0.0]))[0] == pytest.approx(0.55)


def test_floor_and_shrink_boundaries():
    rng = np.random.default_rng(8)
    y = np.zeros((60, 2), int)
    y[:5, 0] = 1
    y[:20, 1] = 1
    p = np.clip(y * 0.5 + rng.random((60, 2)) * 0.5, 0, 1)
    t_global, _ = best_global(y, p)
    raw = fit(y, p, ThresholdSettings("per_class", 0.0, 0, True))
    # Exactly min_positives positives keep their own value; one fewer takes the global one.
    assert fit(y, p, ThresholdSettings("per_class", 0.0, 5, True))[0] == raw[0]
    assert fit(y, p, ThresholdSettings("per_class", 0.0, 6, True))[0] == t_global
    # shrink 0 leaves the per-class values as they are (also for a class without positives).
    y[:, 0] = 0
    assert np.array_equal(
        fit(y, p, ThresholdSettings("per_class", 0, 0, True)), fit(y, p, ThresholdSettings("per_class", 0.0, 0, True))
    )
    shrunk = fit(y, p, ThresholdSettings("per_class", 0.5, 0, True))
    assert shrunk[0] == pytest.approx(t_global)  # no positives: all weight on the global value


def test_f1_curve_edges():
    y, s = np.array([1, 0, 1]), np.array([0.2, 0.5, 0.8])
    # At a threshold equal to a score that score is not predicted (s > t); above everything F1 is 0.
    assert f1_curve(y, s, np.array([0.5, 0.8, 1.0, 0.1])).tolist() == pytest.approx([2 / 3, 0.0, 0.0, 0.8])
    assert f1_curve(np.zeros(3, int), s, np.array([0.9])).tolist() == [0.0]


def test_f1_is_zero_without_true_or_predicted_positives():
    # Columns: nothing anywhere (0/0), one true positive missed, one false positive, one hit of two.
    y = np.array([[0, 1, 0, 1], [0, 0, 0, 1]])
    pred = np.array([[0, 0, 1, 1], [0, 0, 0, 0]])
    assert f1_per_class(y, pred).tolist() == [0.0, 0.0, 0.0, pytest.approx(2 / 3)]
    assert f1_curve(np.array([0, 0]), np.array([0.3, 0.6]), np.array([0.9, 0.5, 0.1])).tolist() == [0.0, 0.0, 0.0]
    assert f1_curve(np.array([1, 0]), np.array([0.3, 0.6]), np.array([0.9, 0.5])).tolist() == [0.0, 0.0]


def test_cross_fit_keeps_empty_rows_without_at_least_one():
    p = np.array([[0.2, 0.4], [0.9, 0.1], [0.3, 0.1], [0.1, 0.8]])
    folds = np.array([0, 0, 1, 1])
    pred = cross_fit(p, folds, lambda rows: np.array([0.5, 0.5]), False)
    assert pred.dtype == bool
    assert pred.tolist() == [[False, False], [True, False], [False, False], [False, True]]
    pred = cross_fit(p, folds, lambda rows: np.array([0.5, 0.5]), True)
    assert pred.tolist() == [[False, True], [True, False], [True, False], [False, True]]


# One class, scores 0.9 0.7 0.4 0.2, only the first positive, folds {0, 1} and {2, 3}.
EV_Y = np.array([[1], [0], [0], [0]])
EV_P = np.array([[0.9], [0.7], [0.4], [0.2]])
EV_FOLDS = np.array([0, 0, 1, 1])


def test_evaluate_rate_with_a_prior_without_at_least_one():
    # Prior 0.5: predict the top half. All rows: t = (0.7 + 0.4) / 2, rows 0 and 1 predicted
    # (F1 = 2 * 1 / (1 + 2)). Fold 0 held out: fitted on 0.4, 0.2, t = 0.3, so 0.9 and 0.7 pass;
    # fold 1 held out: fitted on 0.9, 0.7, t = 0.8, so 0.4 and 0.2 do not, and stay empty.
    ev = evaluate(EV_Y, EV_P, EV_FOLDS, ThresholdSettings("rate", 0.0, 0, False), prior=np.array([0.5]))
    assert ev["thresholds"].tolist() == pytest.approx([0.55])
    assert ev["cross_fitted_pred"].dtype == bool
    assert ev["cross_fitted_pred"][:, 0].tolist() == [True, True, False, False]
    assert ev["f1_in_sample"] == pytest.approx(2 / 3) and ev["f1_cross_fitted"] == pytest.approx(2 / 3)


def test_evaluate_rate_with_a_prior_and_at_least_one():
    # As above, but an empty row takes its argmax, the one class: every row is predicted (F1 2 / (1 + 4)).
    ev = evaluate(EV_Y, EV_P, EV_FOLDS, ThresholdSettings("rate", 0.0, 0, True), prior=np.array([0.5]))
    assert ev["thresholds"].tolist() == pytest.approx([0.55])
    assert ev["cross_fitted_pred"][:, 0].tolist() == [True] * 4
    assert ev["f1_in_sample"] == pytest.approx(0.4) and ev["f1_cross_fitted"] == pytest.approx(0.4)


def test_evaluate_rate_without_a_prior_uses_each_fit_s_own_labels():
    # All rows: rate 1/4, t = (0.9 + 0.7) / 2, only row 0 predicted (F1 1). Fold 0 held out: rows 2, 3
    # have no positive, t = 1, nothing passes; fold 1 held out: rate 1/2, t = 0.8, nothing passes.
    ev = evaluate(EV_Y, EV_P, EV_FOLDS, ThresholdSettings("rate", 0.0, 0, False))
    assert ev["thresholds"].tolist() == pytest.approx([0.8])
    assert not ev["cross_fitted_pred"].any()
    assert ev["f1_in_sample"] == 1.0 and ev["f1_cross_fitted"] == 0.0
