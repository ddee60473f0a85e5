"""Multilabel-stratified folds over every train Id of every train dataset."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from .duplicates import DuplicateSettings, antibodies, external_copies, train_groups
from .labels import CLASS_NAMES, LabelTable

log = logging.getLogger("hpaflow")


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


def describe_group(ids: np.ndarray, antibody_of: np.ndarray | None) -> str:
    """A group's rows named for a message: its antibody when all share one, else its first Id."""
    abs_ = set() if antibody_of is None else set(antibody_of.tolist())
    if len(abs_) == 1 and None not in abs_:
        return f"antibody {abs_.pop()}"
    return f"Id {ids[0]}" if len(ids) == 1 else f"near-duplicates of {ids[0]}"


def check_groups(
    ids: np.ndarray, groups: np.ndarray, antibody_of: np.ndarray | None, n_folds: int, grouped: bool
) -> None:
    """Every fold needs a group of its own: fewer groups than folds leaves a fold with no validation
    images (a train job would fail only much later), so stop here, naming the largest group."""
    names, inv, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    if len(names) >= n_folds:
        return
    rows = np.flatnonzero(inv == int(np.argmax(sizes)))
    largest = describe_group(ids[rows], None if antibody_of is None else antibody_of[rows])
    hint = " or set duplicates.policy: off" if grouped else ""
    plural = {True: "s", False: ""}
    raise ValueError(
        f"n_folds: {n_folds} folds but the {len(ids)} train images form {len(names)} "
        f"group{plural[len(names) != 1]} (largest: {largest}, {len(rows)} image{plural[len(rows) != 1]}); "
        f"a fold would be empty: lower n_folds to at most {len(names)}{hint}"
    )


def missing_classes(labels: np.ndarray, fold: np.ndarray, n_folds: int) -> dict[int, list[int]]:
    """Class -> the folds whose validation rows lack it, for each class with at least n_folds images
    (rows with fold -1 left out): such a class could be in every fold but groups kept it out."""
    used = fold >= 0
    counts = np.stack([labels[fold == k].sum(0) for k in range(n_folds)])  # (folds, classes)
    enough = labels[used].sum(0) >= n_folds
    return {int(c): np.flatnonzero(counts[:, c] == 0).tolist() for c in np.flatnonzero(enough & (counts == 0).any(0))}


def folds_table(
    tables: dict[str, LabelTable],
    n_folds: int,
    seed: int,
    pairs: pd.DataFrame | None = None,
    settings: DuplicateSettings | None = None,
    external: frozenset[str] = frozenset(),
    id_formats: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """`Id, dataset, fold, group` for the train datasets in config order; Ids must be unique across them.

    With near-duplicate pairs (duplicates.csv) and a policy other than off, a group (pairs joined,
    and with group_by_antibody an antibody's fields, read from the Ids of datasets whose `id_formats`
    entry is hpav18; others are plain) never spans two folds; `drop_external` gives fold -1 (left out
    of training and scoring) to external rows that copy a non-external one. Without them every row
    is its own group. Fewer groups than folds is an error; a class kept out of some fold's
    validation by the groups is warned about.
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
    ids = df["Id"].to_numpy()
    grouped = pairs is not None and settings is not None and settings.policy != "off"
    antibody_of = None
    if grouped and settings.group_by_antibody:
        antibody_of = antibodies(ids, df["dataset"].to_numpy(), id_formats or {})
    groups = train_groups(ids, pairs, antibody_of) if grouped else np.arange(len(df))
    keep = ~external_copies(df, pairs, set(external)) if grouped and settings.policy == "drop_external" else None
    fold = np.full(len(df), -1, np.int16)
    rows = np.arange(len(df)) if keep is None else np.flatnonzero(keep)
    check_groups(ids[rows], groups[rows], None if antibody_of is None else antibody_of[rows], n_folds, grouped)
    fold[rows] = assign_folds(labels[rows], n_folds, seed, groups[rows] if grouped else None)
    for c, folds in missing_classes(labels, fold, n_folds).items():
        log.warning(
            "class %d (%s): %d images but none in the validation of fold%s %s (its groups are too few or too large)",
            c,
            CLASS_NAMES[c],
            int(labels[fold >= 0, c].sum()),
            "s" * (len(folds) > 1),
            ", ".join(map(str, folds)),
        )
    df["fold"] = fold
    df["group"] = groups
    return df
