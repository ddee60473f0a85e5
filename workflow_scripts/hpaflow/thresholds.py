"""Decision thresholds fitted on out-of-fold probabilities, and their honest (cross-fitted) score.

Pure numpy. Methods (config `thresholds.methods`):
  global     one value for all classes, the macro-F1 optimum over a fine grid
  per_class  each class's F1 optimum, by an exact sweep over its sorted scores (O(N log N))
  rate       each class's predicted positive rate matched to its training prior
`thresholds.final: best` takes, of the methods scored, the one with the highest cross-fitted macro F1 (choose).
Per-class values may be shrunk toward the global one (weight n_pos / (n_pos + shrink)), and
classes with fewer than `min_positives` positives take the global value outright.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .metrics import macro_f1

GRID = np.round(np.arange(0.005, 0.996, 0.005), 3)
METHODS = ("global", "per_class", "rate")
FINAL_METHODS = ("best", *METHODS)  # thresholds.final: a method, or best = chosen by cross-fitted macro F1


@dataclass(frozen=True)
class ThresholdSettings:
    """How thresholds are fitted and applied; defaults live in the config schema only (from_config)."""

    method: str
    shrink: float  # pseudo-count of positives pulling per-class values to the global one
    min_positives: int  # below this many positives a class takes the global value
    at_least_one: bool  # no class passes -> predict the argmax

    @classmethod
    def from_config(cls, config: dict, method: str | None = None) -> ThresholdSettings:
        """The config's `thresholds` block with its final method, or `method` with the same options."""
        th = config["thresholds"]
        return cls(method or th["final"], th["shrink"], th["min_positives"], th["at_least_one"])


def f1_curve(y: np.ndarray, s: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """F1 of one class at each threshold (predict s > t), by binary search: O((N + T) log N)."""
    s_sorted = np.sort(s)
    pos_sorted = np.sort(s[y.astype(bool)])
    predicted = len(s) - np.searchsorted(s_sorted, thresholds, side="right")
    tp = len(pos_sorted) - np.searchsorted(pos_sorted, thresholds, side="right")
    denom = predicted + len(pos_sorted)
    return 2 * tp / np.maximum(denom, 1)  # denom 0 means tp 0: F1 0


def best_global(y: np.ndarray, p: np.ndarray, grid: np.ndarray = GRID) -> tuple[float, float]:
    """(t, macro F1) of the best single threshold on the grid."""
    curves = np.stack([f1_curve(y[:, c], p[:, c], grid) for c in range(y.shape[1])])
    mean = curves.mean(0)
    i = int(np.argmax(mean))
    return float(grid[i]), float(mean[i])


def best_per_class(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """Exact F1-optimal threshold of one class: sweep every cut of the scores sorted high to low.

    Cutting after the k highest scores gives tp_k positives among k predicted, so
    F1_k = 2 tp_k / (k + P). The threshold is the midpoint between the k-th and (k+1)-th score;
    cuts inside a run of equal scores are not realisable and are skipped.
    """
    n_pos = int(y.sum())
    if n_pos == 0:
        return 1.0, 0.0  # nothing to find: predict nothing (F1 is 0 either way)
    order = np.argsort(-s)  # any order of equal scores: only cuts between distinct scores count
    # float64: the float32 midpoint of two neighbouring float32 scores rounds onto one of them.
    ss = s[order].astype(np.float64)
    tp = np.cumsum(y[order])
    k = np.arange(1, len(s) + 1)
    f1 = 2 * tp / (k + n_pos)
    valid = np.append(ss[1:] < ss[:-1], True)  # a cut after position k-1 separates distinct scores
    f1 = np.where(valid, f1, -1.0)
    i = int(np.argmax(f1))
    t = (ss[i] + ss[i + 1]) / 2 if i + 1 < len(ss) else ss[i] - 1e-6
    return float(t), float(f1[i])


def rate_thresholds(p: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Per class, the threshold whose predicted positive rate on p matches the prior.

    k = prior * n rounded half up (not Python's half to even): an expected half image is still predicted once,
    and k grows with prior * n without even/odd flips. The cut is the midpoint between the k-th and (k+1)-th
    highest score; when these are equal the whole run of equal scores stays unpredicted (fewer than k).
    """
    n = len(p)
    out = np.empty(p.shape[1])
    for c in range(p.shape[1]):
        # + 1e-9: a prior of counts (15 / 22) times n (11) lands a hair under its half (7.4999...); a value
        # that is not a half lies at least 1 / (2 * rows) from one.
        k = int(np.floor(prior[c] * n + 0.5 + 1e-9))
        s = np.sort(p[:, c].astype(np.float64))[::-1]  # float64 midpoints, as in best_per_class
        out[c] = 1.0 if k <= 0 else (s[k - 1] + s[k]) / 2 if k < n else s[-1] - 1e-6
    return out


def fit(y: np.ndarray, p: np.ndarray, settings: ThresholdSettings, prior: np.ndarray | None = None) -> np.ndarray:
    """Thresholds (28,) fitted on (y, p)."""
    t_global, _ = best_global(y, p)
    if settings.method == "global":
        return np.full(y.shape[1], t_global)
    if settings.method == "per_class":
        t = np.array([best_per_class(y[:, c], p[:, c])[0] for c in range(y.shape[1])])
    elif settings.method == "rate":
        t = rate_thresholds(p, y.mean(0) if prior is None else prior)
    else:
        raise ValueError(f"unknown threshold method {settings.method!r} (one of {', '.join(METHODS)})")
    n_pos = y.sum(0)
    if settings.shrink > 0:
        w = n_pos / (n_pos + settings.shrink)
        t = w * t + (1 - w) * t_global
    return np.where(n_pos < settings.min_positives, t_global, t)


def choose(final: str, f1_cross_fitted: dict[str, float]) -> tuple[str, str]:
    """(method, why) of `thresholds.final`: a named method as it is, or for best the method with the highest
    cross-fitted macro F1 in `f1_cross_fitted` (the first in its order among equal ones)."""
    if final != "best":
        return final, f"thresholds.final names {final}"
    if not f1_cross_fitted:
        raise ValueError("thresholds.final: best needs at least one method in thresholds.methods")
    method = max(f1_cross_fitted, key=f1_cross_fitted.__getitem__)  # max keeps the first of equal keys
    scores = ", ".join(f"{m} {f:.4f}" for m, f in f1_cross_fitted.items())
    tied = list(f1_cross_fitted.values()).count(f1_cross_fitted[method]) > 1
    return method, f"highest cross-fitted out-of-fold macro F1 of {scores}" + (" (the first of equal ones)" * tied)


def apply(p: np.ndarray, t: np.ndarray | float, at_least_one: bool) -> np.ndarray:
    """Binary predictions p > t; with at_least_one, a row where no class passes gets its argmax."""
    pred = p > np.asarray(t)
    if at_least_one:
        empty = ~pred.any(1)
        pred[empty, np.argmax(p[empty], axis=1)] = True
    return pred


def cross_fit(
    p: np.ndarray, folds: np.ndarray, fit_fn: Callable[[np.ndarray], np.ndarray], at_least_one: bool
) -> np.ndarray:
    """Predictions for every row, each fold's rows thresholded by values fitted on the other folds.

    fit_fn(rows) -> thresholds, given the indices of the rows it may use.
    """
    pred = np.zeros(p.shape, bool)
    for k in np.unique(folds):
        held = folds == k
        t = fit_fn(np.flatnonzero(~held))
        pred[held] = apply(p[held], t, at_least_one)
    return pred


def evaluate(
    y: np.ndarray, p: np.ndarray, folds: np.ndarray, settings: ThresholdSettings, prior: np.ndarray | None = None
) -> dict:
    """Thresholds fitted on all rows, their in-sample macro F1, and the cross-fitted macro F1."""
    t = fit(y, p, settings, prior)
    crossed = cross_fit(p, folds, lambda rows: fit(y[rows], p[rows], settings, prior), settings.at_least_one)
    return {
        "thresholds": t,
        "f1_in_sample": macro_f1(y, apply(p, t, settings.at_least_one)),
        "f1_cross_fitted": macro_f1(y, crossed),
        "cross_fitted_pred": crossed,
    }
