"""Multilabel-stratified folds over every train Id of every train dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from .labels import LabelTable


def assign_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold index (0..n_folds-1) per row, stratified on all 28 classes jointly."""
    if len(labels) < n_folds:
        raise ValueError(f"{len(labels)} train images cannot be split into {n_folds} folds")
    fold = np.full(len(labels), -1, np.int16)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, val) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        fold[val] = k
    assert (fold >= 0).all()
    return rebalance(labels, fold, n_folds, np.random.default_rng(seed))


def rebalance(
    labels: np.ndarray,
    fold: np.ndarray,
    n_folds: int,
    rng: np.random.Generator,
    max_swaps: int = 10_000,
    candidates: int = 256,
) -> np.ndarray:
    """Swap pairs of images between folds until each class is within 1 of an even split.

    Iterative stratification is greedy and, on small or dense label sets, can leave a
    class a few images off. A swap keeps fold sizes and is taken only when it lowers the
    summed squared deviation of per-fold class counts from even, so it always stops.
    """
    y = labels.astype(np.int64)
    fold = fold.copy()
    even = y.sum(0) / n_folds
    checked = y.sum(0) >= n_folds
    dev = np.stack([y[fold == k].sum(0) for k in range(n_folds)]) - even  # (folds, classes)
    stuck: set[tuple[int, int]] = set()
    for _ in range(max_swaps):
        bad = [(k, c) for k, c in zip(*np.nonzero((np.abs(dev) > 1) & checked)) if (k, c) not in stuck]
        if not bad:
            break
        k, c = max(bad, key=lambda kc: abs(dev[kc]))
        a, b = (k, int(np.argmin(dev[:, c]))) if dev[k, c] > 0 else (int(np.argmax(dev[:, c])), k)
        # Move one image with class c from a (too many) to b, and one without it back.
        ia = np.flatnonzero((fold == a) & (y[:, c] == 1))
        ib = np.flatnonzero((fold == b) & (y[:, c] == 0))
        # a holds at least 2 images of c (|dev| > 1 needs it), but with uneven folds every image of b
        # may have c: nothing to swap for this class.
        if len(ib) == 0:
            stuck.add((k, c))
            continue
        ia = rng.choice(ia, min(len(ia), candidates), replace=False)
        ib = rng.choice(ib, min(len(ib), candidates), replace=False)
        v = y[ia][:, None, :] - y[ib][None, :, :]  # label change of fold a is -v, of fold b +v
        gain = (2 * v * (dev[b] - dev[a]) + 2 * v * v).sum(-1)
        i, j = np.unravel_index(np.argmin(gain), gain.shape)
        if gain[i, j] >= 0:
            stuck.add((k, c))
            continue
        fold[ia[i]], fold[ib[j]] = b, a
        dev[a] -= v[i, j]
        dev[b] += v[i, j]
        stuck.clear()
    return fold


def folds_table(tables: dict[str, LabelTable], n_folds: int, seed: int) -> pd.DataFrame:
    """`Id, dataset, fold` for the train datasets in config order; Ids must be unique across them."""
    frames = [pd.DataFrame({"Id": t.ids, "dataset": name}) for name, t in tables.items()]
    df = pd.concat(frames, ignore_index=True)
    dup = df[df["Id"].duplicated(keep=False)]
    if len(dup):
        first = dup["Id"].iloc[0]
        where = ", ".join(dup.loc[dup["Id"] == first, "dataset"])
        raise ValueError(
            f"Id {first!r} appears in more than one train dataset ({where}); Ids must be unique across train datasets"
        )
    labels = np.concatenate([t.labels for t in tables.values()])
    df["fold"] = assign_folds(labels, n_folds, seed)
    return df
