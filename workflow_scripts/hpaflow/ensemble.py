"""Ensembling model probabilities: a weighted mean, with weights optionally fitted on out-of-fold data."""

from __future__ import annotations

import itertools

import numpy as np

from .thresholds import best_global


def weighted_mean(probs: list[np.ndarray], weights: np.ndarray | None = None) -> np.ndarray:
    w = np.full(len(probs), 1 / len(probs)) if weights is None else np.asarray(weights, np.float64)
    return np.tensordot(w / w.sum(), np.stack(probs), axes=1).astype(np.float32)


def simplex_grid(n: int, step: float) -> np.ndarray:
    """All weight vectors of n non-negative multiples of `step` summing to 1."""
    k = int(round(1 / step))
    pts = [c for c in itertools.product(range(k + 1), repeat=n - 1) if sum(c) <= k]
    return np.array([list(c) + [k - sum(c)] for c in pts], np.float64) / k


def fit_weights(y: np.ndarray, probs: list[np.ndarray], step: float = 0.1) -> np.ndarray:
    """Weights on the simplex grid that maximise macro F1 at the best global threshold.

    A global threshold keeps the search cheap and the objective smooth enough; per-class
    thresholds are fitted afterwards on the weighted ensemble.
    """
    if len(probs) == 1:
        return np.ones(1)
    grid = simplex_grid(len(probs), step)
    scores = [best_global(y, weighted_mean(probs, w))[1] for w in grid]
    best = grid[int(np.argmax(scores))]
    return best
