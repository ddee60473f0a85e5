"""Multilabel-stratified folds: balance per class, determinism, Id checks."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED, needs_shared
from hpaflow.demo import sample_label_sets
from hpaflow.folds import assign_folds, folds_table, rebalance
from hpaflow.labels import LabelTable, encode, read_labels


def assert_balanced(labels: np.ndarray, fold: np.ndarray, n_folds: int):
    """Per-fold class counts within 1 of even for every class with >= n_folds examples."""
    total = labels.sum(0)
    for k in range(n_folds):
        counts = labels[fold == k].sum(0).astype(float)
        for c in np.flatnonzero(total >= n_folds):
            assert abs(counts[c] - total[c] / n_folds) <= 1.0, (k, c, counts[c], total[c] / n_folds)


@needs_shared
def test_real_competition_labels_are_stratified():
    t = read_labels(str(SHARED / "hpa" / "train.csv"), True)
    fold = assign_folds(t.labels, 5, seed=0)
    assert sorted(np.unique(fold)) == [0, 1, 2, 3, 4]
    assert_balanced(t.labels, fold, 5)
    sizes = np.bincount(fold)
    assert sizes.max() - sizes.min() < 0.02 * len(fold)


@pytest.mark.parametrize("n,n_folds", [(60, 3), (100, 5), (384, 2), (384, 5), (2000, 5)])
def test_demo_sized_labels_stratified(n, n_folds):
    for seed in range(4):
        y = encode(sample_label_sets(n, np.random.default_rng(seed)))
        assert_balanced(y, assign_folds(y, n_folds, seed), n_folds)


def test_deterministic_by_seed():
    y = encode(sample_label_sets(300, np.random.default_rng(0)))
    a = assign_folds(y, 3, seed=7)
    assert np.array_equal(a, assign_folds(y, 3, seed=7))
    assert not np.array_equal(a, assign_folds(y, 3, seed=8))


def test_rebalance_repairs_a_random_split_and_keeps_fold_sizes():
    y = encode(sample_label_sets(500, np.random.default_rng(3)))
    bad = np.random.default_rng(3).permutation(np.arange(500) % 5)
    total = y.sum(0)
    assert max(np.abs(y[bad == k].sum(0) - total / 5).max() for k in range(5)) > 3
    good = rebalance(y, bad, 5, np.random.default_rng(0))
    assert np.array_equal(np.bincount(good), np.bincount(bad))
    assert_balanced(y, good, 5)


def table(ids, seed=0):
    y = np.random.default_rng(seed).integers(0, 2, (len(ids), 28)).astype(np.uint8)
    return LabelTable("x.csv", tuple(ids), y)


def test_table_spans_datasets():
    df = folds_table({"a": table([f"a{i}" for i in range(10)]), "b": table([f"b{i}" for i in range(6)], 1)}, 2, 0)
    assert list(df.columns) == ["Id", "dataset", "fold"]
    assert df["dataset"].tolist() == ["a"] * 10 + ["b"] * 6
    assert set(df["fold"]) == {0, 1}


def test_id_in_two_datasets_is_an_error():
    with pytest.raises(ValueError, match=r"Id 'x1' appears in more than one train dataset \(a, b\)"):
        folds_table({"a": table(["x0", "x1"]), "b": table(["x1", "x2"])}, 2, 0)


def test_too_few_images():
    with pytest.raises(ValueError, match="3 train images cannot be split into 5 folds"):
        assign_folds(np.zeros((3, 28), np.uint8), 5, 0)
