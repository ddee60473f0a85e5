"""Thresholds: the exact sweep against brute force, methods, cross-fitting never sees its own fold."""

from __future__ import annotations

import numpy as np
import pytest

from hpaflow.metrics import f1_per_class, macro_f1, macro_f1_at
from hpaflow.thresholds import (
    FINAL_METHODS,
    GRID,
    METHODS,
    ThresholdSettings,
    apply,
    best_global,
    best_per_class,
    choose,
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


# Known answers worked by hand, on inputs where ties, equal-to-threshold scores, rounding and edges matter.


def test_settings_from_config_and_the_final_methods():
    th = {"methods": ["rate"], "final": "best", "shrink": 3.5, "min_positives": 2, "at_least_one": False}
    assert ThresholdSettings.from_config({"thresholds": th}) == ThresholdSettings("best", 3.5, 2, False)
    assert ThresholdSettings.from_config({"thresholds": th}, "rate") == ThresholdSettings("rate", 3.5, 2, False)
    assert FINAL_METHODS == ("best", "global", "per_class", "rate") and METHODS == FINAL_METHODS[1:]
    # The grid: 0.005 to 0.995 in steps of 0.005, each exactly its 3-decimal value.
    assert len(GRID) == 199 and GRID[0] == 0.005 and GRID[1] == 0.01 and GRID[-1] == 0.995 and GRID[79] == 0.4


def test_f1_curve_counts_at_ties_and_edges():
    # Three positives (0.2, 0.4, 0.8) among five scores, two pairs tied. F1 = 2 tp / (predicted + 3).
    y, s = np.array([1, 0, 1, 1, 0]), np.array([0.2, 0.4, 0.4, 0.8, 0.8])
    t = np.array([0.9, 0.1, 0.4, 0.2, 0.8, 0.5, 0.3])
    # 0.9: nothing; 0.1: all 5, tp 3; 0.4: the 0.8s only, tp 1; 0.2: four, tp 2; 0.8 nothing; 0.5 as 0.4; 0.3 as 0.2.
    assert f1_curve(y, s, t).tolist() == pytest.approx([0.0, 6 / 8, 2 / 5, 4 / 7, 0.0, 2 / 5, 4 / 7], abs=1e-15)
    # No positives: 0 everywhere, also below every score (5 predicted, tp 0).
    assert f1_curve(np.zeros(5, int), s, t).tolist() == [0.0] * 7
    # A single score: equal to the threshold is not predicted.
    assert f1_curve(np.array([1]), np.array([0.5]), np.array([0.5, 0.499])).tolist() == [0.0, 1.0]


def test_best_global_known_answers_and_first_of_ties():
    y = np.array([[1, 0], [1, 1], [0, 0], [0, 0]])
    p = np.array([[0.9, 0.2], [0.6, 0.7], [0.3, 0.4], [0.1, 0.1]])
    # Class 0 has F1 1 for t in [0.3, 0.6), class 1 for t in [0.4, 0.7) (0.4 itself not predicted at 0.4).
    # Grid 0.2: F1 (0.8 + 2/3) / 2; 0.3: (1 + 2/3) / 2; 0.5: 1; 0.65: (2/3 + 1) / 2; 0.8: (2/3 + 0) / 2.
    assert best_global(y, p, np.array([0.2, 0.3, 0.5, 0.65, 0.8])) == (0.5, 1.0)
    assert best_global(y, p, np.array([0.2, 0.3, 0.65, 0.8])) == pytest.approx((0.3, 5 / 6))  # 0.3 and 0.65 tie
    assert best_global(y, p, np.array([0.2, 0.5, 0.55, 0.65])) == (0.5, 1.0)  # 0.5 and 0.55 tie: the first
    # The default grid: the first value where both reach 1 is 0.4 (at 0.395 class 1's 0.4 negative passes).
    assert best_global(y, p) == (0.4, 1.0)
    # Below every score: all predicted. Class 0: 2 * 2 / (4 + 2); class 1: 2 * 1 / (4 + 1).
    assert best_global(y, p, np.array([0.05])) == pytest.approx((0.05, (4 / 6 + 2 / 5) / 2), abs=1e-15)


def test_best_per_class_known_answers():
    # Sorted: 0.95 n, 0.9 p, 0.7 p, 0.3 n, 0.1 n; F1 after k: 0, 2/4, 4/5, 4/6, 4/7: cut after 3, midpoint 0.5.
    assert best_per_class(np.array([0, 1, 1, 0, 0]), np.array([0.95, 0.9, 0.7, 0.3, 0.1])) == pytest.approx((0.5, 0.8))
    # Best cut after n - 1 scores: the midpoint, not the last-cut value. F1 2/3, 4/4, 4/5.
    assert best_per_class(np.array([1, 1, 0]), np.array([0.9, 0.5, 0.2])) == pytest.approx((0.35, 1.0))
    # Best cut after the last score: just under the lowest one, exactly 1e-6 under. F1 0, 2/3.
    t, f1 = best_per_class(np.array([0, 1]), np.array([0.9, 0.1]))
    assert t == 0.1 - 1e-6 and f1 == pytest.approx(2 / 3)
    # Equal F1 at cuts 1 and 4 (2/3 = 4/6, positives first and last of four): the first cut wins.
    assert best_per_class(np.array([1, 0, 0, 1]), np.array([0.9, 0.6, 0.4, 0.2])) == pytest.approx((0.75, 2 / 3))
    # Runs of equal scores are never split: cuts after 2 (F1 2/4) or 4 (4/6); cutting inside a run
    # would give 4/5 (both positives first among the ties) but no threshold realises it.
    t, f1 = best_per_class(np.array([1, 0, 1, 0]), np.array([0.8, 0.8, 0.6, 0.6]))
    assert t == 0.6 - 1e-6 and f1 == pytest.approx(2 / 3)
    # One positive among equal scores only: the whole run, F1 2 / (3 + 1).
    assert best_per_class(np.array([0, 1, 0]), np.array([0.3, 0.3, 0.3])) == (0.3 - 1e-6, 0.5)
    # No positives: (1, 0) exactly, whatever the scores; one positive is enough to fit.
    assert best_per_class(np.zeros(3, int), np.array([1.0, 0.5, 0.2])) == (1.0, 0.0)
    assert best_per_class(np.array([0, 0, 1]), np.array([1.0, 0.5, 0.2]))[1] == pytest.approx(2 / 4)


def test_best_per_class_cut_between_neighbouring_float32_scores():
    # 1 and the float32 just below it: their float32 midpoint rounds to 1, which 1 does not pass.
    below = np.nextafter(np.float32(1), np.float32(0))
    s = np.array([1.0, below, 0.5], np.float32)
    t, f1 = best_per_class(np.array([1, 0, 0]), s)
    assert f1 == 1.0 and below < t < 1.0
    assert apply(s[:, None], np.array([t]), False)[:, 0].tolist() == [True, False, False]


def test_rate_thresholds_rounding_edges_and_ties():
    n8 = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])  # eight scores; the columns hold them shuffled
    rng = np.random.default_rng(9)
    priors = np.array([0.0625, 0.3125, 0.1875, 0.05, 0.0, 1.0, 0.8125, 0.875, 0.125])
    p = np.stack([rng.permutation(n8) for _ in priors], 1)
    # prior * 8 = 0.5, 2.5, 1.5, 0.4, 0, 8, 6.5, 7, 1 -> k = 1, 3, 2, 0, 0, 8, 7, 7, 1 (halves round up).
    expected = [0.85, 0.65, 0.75, 1.0, 1.0, 0.2 - 1e-6, 0.25, 0.25, 0.85]
    t = rate_thresholds(p, priors)
    assert t.tolist() == pytest.approx(expected, abs=1e-12)
    assert t[3] == t[4] == 1.0 and t[5] == 0.2 - 1e-6
    assert (p > t).sum(0).tolist() == [1, 3, 2, 0, 0, 8, 7, 7, 1]
    # A training prior of 15 / 22 on 11 rows is 7.5 images (7.4999... in floating point): 8 predicted.
    prior = np.array([1] * 15 + [0] * 7).mean(0, keepdims=True)
    scores = np.linspace(0.05, 0.95, 11)[:, None]
    assert (scores > rate_thresholds(scores, prior)).sum() == 8
    assert rate_thresholds(scores, prior)[0] == pytest.approx((scores[3, 0] + scores[2, 0]) / 2)
    # Ties at the cut: k = 2 falls inside the run of 0.7s, which stays out whole (one predicted, not two);
    # k = 4 cuts after the run. Scores in float32 give float64 midpoints.
    s = np.array([[0.9], [0.7], [0.7], [0.7], [0.2], [0.1], [0.1], [0.1]], np.float32)
    t2 = rate_thresholds(s, np.array([0.25]))
    assert t2.tolist() == [np.float32(0.7)] and (s > t2).sum() == 1
    t4 = rate_thresholds(s, np.array([0.5]))[0]
    assert t4 == (float(np.float32(0.7)) + float(np.float32(0.2))) / 2 and (s > t4).sum() == 4
    # k >= n with ties at the bottom: all predicted; k = n - 1 there: the run of 0.1s stays out.
    assert (s > rate_thresholds(s, np.array([1.0]))).sum() == 8 and (s > rate_thresholds(s, [0.875])).sum() == 5


# Three classes, four rows. Class 0: positives 0.9, 0.8 (per-class and rate cut (0.8 + 0.3) / 2 = 0.55);
# class 1: positive 0.7 (cut (0.7 + 0.2) / 2 = 0.45); class 2: no positive (per-class and rate 1).
# Global: class 0 has F1 1 for t in [0.3, 0.8), class 1 for t in [0.2, 0.7): first grid value 0.3.
FIT_Y = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
FIT_P = np.array([[0.9, 0.7, 0.4], [0.8, 0.2, 0.3], [0.3, 0.15, 0.2], [0.1, 0.1, 0.1]])


@pytest.mark.parametrize("method", ["per_class", "rate"])
def test_fit_shrink_and_min_positives_known_answers(method):
    def fitted(shrink, min_positives, prior=None):
        return fit(FIT_Y, FIT_P, ThresholdSettings(method, shrink, min_positives, True), prior).tolist()

    assert best_global(FIT_Y, FIT_P) == pytest.approx((0.3, 2 / 3))
    assert fitted(0, 0) == pytest.approx([0.55, 0.45, 1.0])
    # Weights n_pos / (n_pos + shrink) = 2/4, 1/3, 0: 0.5 * 0.55 + 0.5 * 0.3; 0.45 / 3 + 0.3 * 2 / 3; 0.3.
    assert fitted(2, 0) == pytest.approx([0.425, 0.35, 0.3])
    # shrink 0.5: weights 0.8, 2/3, 0 (a shrink below 1 still shrinks).
    assert fitted(0.5, 0) == pytest.approx([0.5, 0.4, 0.3])
    # min_positives: exactly that many keep their own value, one fewer takes the global one.
    assert fitted(0, 1) == pytest.approx([0.55, 0.45, 0.3])
    assert fitted(0, 2) == pytest.approx([0.55, 0.3, 0.3])
    assert fitted(0, 3) == pytest.approx([0.3, 0.3, 0.3])
    assert fitted(2, 2) == pytest.approx([0.425, 0.3, 0.3])  # shrunk, then floored


def test_fit_rate_takes_the_prior_and_shrinks_by_the_labels_positives():
    # Prior 0.25, 0.5, 0: k = 1, 2, 0 -> (0.9 + 0.8) / 2, (0.2 + 0.15) / 2, 1; weights 2/4, 1/3, 0 from the labels.
    settings = ThresholdSettings("rate", 0, 0, True)
    prior = np.array([0.25, 0.5, 0.0])
    assert fit(FIT_Y, FIT_P, settings, prior).tolist() == pytest.approx([0.85, 0.175, 1.0])
    shrunk = fit(FIT_Y, FIT_P, ThresholdSettings("rate", 2, 0, True), prior)
    assert shrunk.tolist() == pytest.approx([0.575, 0.175 / 3 + 0.2, 0.3])


def test_fit_global_ignores_shrink_and_min_positives():
    for shrink, min_positives in [(0, 0), (2, 0), (0, 3), (5, 2)]:
        t = fit(FIT_Y, FIT_P, ThresholdSettings("global", shrink, min_positives, True))
        assert t.tolist() == [0.3, 0.3, 0.3]


def test_apply_strict_and_at_least_one_known_answers():
    t = np.array([0.5, 0.25, 0.65])
    p = np.array(
        [
            [0.5, 0.2, 0.5],  # nothing passes (0.5 = its threshold); argmax of a tie: the first class
            [0.3, 0.3, 0.1],  # passes already (class 1): unchanged, though its argmax is class 0
            [0.6, 0.1, 0.7],  # two pass
            [0.2, 0.2, 0.2],  # nothing passes, all equal: class 0
            [0.45, 0.24, 0.6],  # nothing passes: the highest probability (2), not the smallest miss (1)
        ]
    )
    F, T = False, True
    plain = [[F, F, F], [F, T, F], [T, F, T], [F, F, F], [F, F, F]]
    assert apply(p, t, False).tolist() == plain
    assert apply(p, t, True).tolist() == [[T, F, F], [F, T, F], [T, F, T], [T, F, F], [F, F, T]]
    assert apply(p, 0.3, False).tolist() == [[T, F, T], [F, F, F], [T, F, T], [F, F, F], [T, F, T]]
    assert apply(p, 0.9, True).tolist() == [[T, F, F], [T, F, F], [F, F, T], [T, F, F], [F, F, T]]


def test_cross_fit_uses_only_the_other_folds():
    # One class; a fold's threshold is the highest score of the other folds. Fold labels need not be 0..K-1.
    p = np.array([[0.1], [0.4], [0.3], [0.2], [0.6], [0.5]])
    folds = np.array([2, 0, 2, 5, 0, 5])
    # Fold 0 (rows 1, 4) at 0.5 (rows 0, 2, 3, 5): only 0.6 passes; folds 2 and 5 at 0.6: nothing.
    # Fitted on all rows (0.6), or on a fold's own rows, nothing would pass in fold 0 either.
    pred = cross_fit(p, folds, lambda rows: p[rows].max(0), False)
    assert pred[:, 0].tolist() == [False, False, False, False, True, False]
    assert apply(p, p.max(0), False).sum() == 0
    # The lowest score of the other folds: fold 0 at 0.1, fold 2 at 0.2 (row 0's 0.1 fails), fold 5 at 0.1.
    pred = cross_fit(p, folds, lambda rows: p[rows].min(0), False)
    assert pred[:, 0].tolist() == [False, True, True, True, True, True]


# One class, ten rows. Fold 0: the positive scores lowest (0.125); fold 1: the positive scores highest (0.875).
EV10_Y = np.array([[1], [0], [0], [0], [0], [1], [0], [0], [0], [0]])
EV10_P = np.array([[0.125], [0.5], [0.4375], [0.375], [0.25], [0.875], [0.375], [0.3125], [0.25], [0.1875]])
EV10_FOLDS = np.repeat([0, 1], 5)


def test_evaluate_per_class_overfits_where_rate_holds():
    """Per class: fitted on fold 0 it must predict everything (0.125 - 1e-6) to catch its positive, fitted
    on fold 1 it cuts at (0.875 + 0.375) / 2 = 0.625. Cross-fitted: fold 0 predicts nothing (its positive
    missed), fold 1 everything (tp 1, fp 4): F1 2 / (2 + 4 + 1) = 2/7. On all rows: cut after 0.875 at
    (0.875 + 0.5) / 2, F1 2 / (1 + 2).
    Rate, prior 0.2: k = 1 per fold: fitted on fold 0, (0.5 + 0.4375) / 2 lets only fold 1's 0.875 pass;
    fitted on fold 1, 0.625 leaves fold 0 empty: tp 1, fn 1, F1 2/3. On all rows k = 2: 0.46875, the 0.875
    and the 0.5 pass, F1 2 / (2 + 2).
    Global (grid): fitted on fold 0, 0.005 (everything); on fold 1, 0.375 (the first where F1 is 1), which
    lets fold 0's 0.5 and 0.4375 pass: tp 1, fp 6, fn 1, F1 2/9. On all rows 0.5, F1 2/3."""
    figures = {}
    for method in METHODS:
        ev = evaluate(EV10_Y, EV10_P, EV10_FOLDS, ThresholdSettings(method, 0, 0, False), prior=np.array([0.2]))
        figures[method] = (ev["thresholds"][0], ev["f1_in_sample"], ev["f1_cross_fitted"], ev["cross_fitted_pred"])
    t, in_sample, crossed, pred = figures["per_class"]
    assert (t, in_sample, crossed) == pytest.approx((0.6875, 2 / 3, 2 / 7))
    assert pred[:, 0].tolist() == [False] * 5 + [True] * 5
    t, in_sample, crossed, pred = figures["rate"]
    assert (t, in_sample, crossed) == pytest.approx((0.46875, 0.5, 2 / 3))
    assert pred[:, 0].tolist() == [False] * 5 + [True] + [False] * 4
    t, in_sample, crossed, pred = figures["global"]
    assert (t, in_sample, crossed) == pytest.approx((0.5, 2 / 3, 2 / 9))
    assert pred[:, 0].tolist() == [False, True, True, False, False] + [True] * 5


def test_choose_best_first_of_equal_and_named_methods():
    f1 = {"global": 0.2, "per_class": 0.2641, "rate": 0.2704}
    assert choose("best", f1) == (
        "rate",
        "highest cross-fitted out-of-fold macro F1 of global 0.2000, per_class 0.2641, rate 0.2704",
    )
    tied = {"global": 0.3, "per_class": 0.5, "rate": 0.5}
    assert choose("best", tied) == (
        "per_class",
        "highest cross-fitted out-of-fold macro F1 of global 0.3000, per_class 0.5000, rate 0.5000"
        " (the first of equal ones)",
    )
    assert choose("best", {"rate": 0.5, "per_class": 0.5})[0] == "rate"  # the order given, not the name
    assert choose("best", {"global": 0.1}) == ("global", "highest cross-fitted out-of-fold macro F1 of global 0.1000")
    # A named method is taken as it is, even when another scores higher.
    assert choose("per_class", f1) == ("per_class", "thresholds.final names per_class")
    with pytest.raises(ValueError, match=r"^thresholds.final: best needs at least one method in thresholds.methods$"):
        choose("best", {})
