"""Macro F1 and per-class F1, vectorised numpy (equal to scikit-learn's, zero_division=0)."""

from __future__ import annotations

import numpy as np


def f1_per_class(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """F1 of each column; 0 where a class has no true and no predicted positive (zero_division=0)."""
    t = y_true.astype(bool)
    p = y_pred.astype(bool)
    tp = (t & p).sum(0)
    denom = t.sum(0) + p.sum(0)
    return 2 * tp / np.maximum(denom, 1)  # denom 0 means tp 0: F1 0


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(f1_per_class(y_true, y_pred).mean())


def macro_f1_at(y_true: np.ndarray, probs: np.ndarray, thresholds) -> float:
    """Macro F1 of probs > thresholds (a scalar or one value per class)."""
    return macro_f1(y_true, probs > np.asarray(thresholds))


def bce_from_probs(y_true: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities (the validation loss, whatever the training loss)."""
    p = np.clip(probs.astype(np.float64), eps, 1 - eps)
    return float(-(y_true * np.log(p) + (1 - y_true) * np.log1p(-p)).mean())
