"""Multilabel-stratified folds over every train Id of every train dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from .duplicates import DuplicateSettings, external_copies, train_groups
from .labels import LabelTable


def assign_folds(labels: np.ndarray, n_folds: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Fold index (0..n_folds-1) per row, stratified on all 28 classes jointly; rows of one group
    (near-duplicates, an antibody) share a fold. Without groups of more than one row: iterative
    stratification, then the swap pass."""
    if len(labels) < n_folds:
        raise ValueError(f"{len(labels)} train images cannot be split into {n_folds} folds")
    if groups is not None and len(np.unique(groups)) < len(groups):
        rng = np.random.default_rng(seed)
        inv = np.unique(groups, return_inverse=True)[1]
        fold = group_folds(labels, groups, n_folds, rng)
        return rebalance(labels, fold, n_folds, rng, movable=np.bincount(inv)[inv] == 1)
    fold = np.full(len(labels), -1, np.int16)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, val) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        fold[val] = k
    assert (fold >= 0).all()
    return rebalance(labels, fold, n_folds, np.random.default_rng(seed))


def group_folds(labels: np.ndarray, groups: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Whole groups to folds, largest first (ties in random order), each to the fold where it lowers
    most the squared deviation from an even split of every class (weighted by 1 / the class's count,
    so rare classes count as much as common ones) and of the fold sizes."""
    y = labels.astype(np.int64)
    names, inv = np.unique(groups, return_inverse=True)
    gy = np.zeros((len(names), y.shape[1]), np.int64)
    np.add.at(gy, inv, y)
    gsize = np.bincount(inv)
    target, target_size = y.sum(0) / n_folds, len(y) / n_folds
    w = 1.0 / np.maximum(y.sum(0), 1)
    counts, sizes = np.zeros((n_folds, y.shape[1])), np.zeros(n_folds)
    fold_of_group = np.zeros(len(names), np.int16)
    for g in np.lexsort((rng.random(len(names)), -gsize)):
        cost = ((counts + gy[g] - target) ** 2 - (counts - target) ** 2) @ w
        cost += ((sizes + gsize[g] - target_size) ** 2 - (sizes - target_size) ** 2) / target_size
        k = int(np.argmin(cost))
        counts[k] += gy[g]
        sizes[k] += gsize[g]
        fold_of_group[g] = k
    return fold_of_group[inv]


def rebalance(
    labels: np.ndarray,
    fold: np.ndarray,
    n_folds: int,
    rng: np.random.Generator,
    max_swaps: int = 10_000,
    candidates: int = 256,
    movable: np.ndarray | None = None,
) -> np.ndarray:
    """Swap pairs of images between folds until each class is within 1 of an even split.

    Iterative stratification is greedy and, on small or dense label sets, can leave a
    class a few images off. A swap keeps fold sizes and is taken only when it lowers the
    summed squared deviation of per-fold class counts from even, so it always stops.
    Only `movable` rows (default all; with groups, those alone in theirs) are swapped.
    """
    y = labels.astype(np.int64)
    fold = fold.copy()
    free = np.ones(len(y), bool) if movable is None else movable
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
        ia = np.flatnonzero((fold == a) & (y[:, c] == 1) & free)
        ib = np.flatnonzero((fold == b) & (y[:, c] == 0) & free)
        # a holds at least 2 images of c (|dev| > 1 needs it), but with uneven folds every image of b
        # may have c (or, with groups, no movable one does): nothing to swap for this class.
        if len(ia) == 0 or len(ib) == 0:
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


def folds_table(
    tables: dict[str, LabelTable],
    n_folds: int,
    seed: int,
    pairs: pd.DataFrame | None = None,
    settings: DuplicateSettings | None = None,
    external: frozenset[str] = frozenset(),
) -> pd.DataFrame:
    """`Id, dataset, fold, group` for the train datasets in config order; Ids must be unique across them.

    With near-duplicate pairs (duplicates.csv) and a policy other than off, a group (pairs joined,
    and an antibody's HPAv18 fields with group_by_antibody) never spans two folds; `drop_external`
    gives fold -1 (left out of training and scoring) to external rows that copy a non-external one.
    Without them every row is its own group.
    """
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
    grouped = pairs is not None and settings is not None and settings.policy != "off"
    groups = train_groups(df["Id"].to_numpy(), pairs, settings.group_by_antibody) if grouped else np.arange(len(df))
    keep = ~external_copies(df, pairs, set(external)) if grouped and settings.policy == "drop_external" else None
    fold = np.full(len(df), -1, np.int16)
    rows = np.arange(len(df)) if keep is None else np.flatnonzero(keep)
    fold[rows] = assign_folds(labels[rows], n_folds, seed, groups[rows] if grouped else None)
    df["fold"] = fold
    df["group"] = groups
    return df
