"""Multilabel-stratified folds: balance per class, determinism, Id checks."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from conftest import SHARED, needs_shared
from hpaflow.demo import sample_label_sets
from hpaflow.duplicates import PAIR_COLUMNS, DuplicateSettings
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
    a, b = table([f"a{i}" for i in range(30)]), table([f"b{i}" for i in range(20)], 1)
    df = folds_table({"a": a, "b": b}, 3, 5)
    assert list(df.columns) == ["Id", "dataset", "fold", "group"]
    assert df["group"].tolist() == list(range(50))  # without duplicates every row is its own group
    assert df.index.tolist() == list(range(50))  # one fresh row index, not each dataset's own
    assert df["Id"].tolist() == list(a.ids + b.ids)
    assert df["dataset"].tolist() == ["a"] * 30 + ["b"] * 20
    # The folds are those of all the labels together, in config order, with the given seed.
    assert np.array_equal(df["fold"], assign_folds(np.concatenate([a.labels, b.labels]), 3, 5))


def test_id_in_two_datasets_is_an_error():
    with pytest.raises(ValueError, match=r"Id 'x1' appears in more than one train dataset \(a, b\)"):
        folds_table({"a": table(["x0", "x1"]), "b": table(["x1", "x2"])}, 2, 0)


def test_duplicate_message_names_the_first_duplicated_id_and_all_its_datasets():
    # x0 and x1 are both duplicated; x0 comes first (dataset a) and is in a and c.
    tables = {"a": table(["x0", "x1", "x2"]), "b": table(["x1", "x3"]), "c": table(["x4", "x0"])}
    message = "Id 'x0' appears in more than one train dataset (a, c); Ids must be unique across train datasets"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        folds_table(tables, 2, 0)


def test_too_few_images():
    with pytest.raises(ValueError, match="3 train images cannot be split into 5 folds"):
        assign_folds(np.zeros((3, 28), np.uint8), 5, 0)


def test_exactly_n_folds_images_one_per_fold_as_int16():
    fold = assign_folds(np.eye(3, 28, dtype=np.uint8), 3, 0)
    assert sorted(fold.tolist()) == [0, 1, 2] and fold.dtype == np.int16


@pytest.mark.parametrize("label_seed", [1, 2, 3])
def test_same_seed_same_folds_where_rebalance_swaps(label_seed):
    # On these label sets the stratifier leaves classes off and rebalance's swaps depend on its
    # random draws (different generator seeds give different folds), so the seed must reach them.
    y = encode(sample_label_sets(100, np.random.default_rng(label_seed)))
    assert np.array_equal(assign_folds(y, 5, seed=2), assign_folds(y, 5, seed=2))
    assert_balanced(y, assign_folds(y, 5, seed=2), 5)


def multi_hot(sets):
    y = np.zeros((len(sets), 28), np.uint8)
    for r, s in enumerate(sets):
        y[r, list(s)] = 1
    return y


def ssd(y, fold, n_folds):
    """Summed squared deviation of per-fold class counts from an even split, times n_folds² (exact)."""
    y = y.astype(np.int64)
    return int(sum(((n_folds * y[fold == k].sum(0) - y.sum(0)) ** 2).sum() for k in range(n_folds)))


def swapped(fold, i, j):
    out = fold.copy()
    out[i], out[j] = fold[j], fold[i]
    return out


def best_swap_ssd(y, fold, n_folds, a, b, c):
    """Lowest summed squared deviation after moving one image with class c from fold a to b and one without it back."""
    with_c = np.flatnonzero((fold == a) & (y[:, c] == 1))
    without_c = np.flatnonzero((fold == b) & (y[:, c] == 0))
    return min(ssd(y, swapped(fold, i, j), n_folds) for i in with_c for j in without_c)


def test_balanced_enough_split_is_left_alone():
    # 3 folds. Class 0: per-fold counts 2, 1, 0 (even 1: within 1, though a swap would lower the
    # squared deviation); class 1: 2, 0, 0 but only 2 images, fewer than folds, so not checked.
    y = multi_hot([{0, 1}, {0}, {1}, {0}, set(), set(), set(), set(), set()])
    fold = np.repeat([0, 1, 2], 3)
    assert ssd(y, swapped(fold, 1, 6), 3) < ssd(y, fold, 3)
    assert np.array_equal(rebalance(y, fold, 3, np.random.default_rng(0)), fold)


def test_class_with_exactly_n_folds_images_is_balanced():
    # 3 images of class 0, all in fold 0: 3 >= 3 folds, so it is checked and must end one off at most.
    y = multi_hot([{0}] * 3 + [set()] * 6)
    fold = np.repeat([0, 1, 2], 3)
    out = rebalance(y, fold, 3, np.random.default_rng(0))
    counts = [int(y[out == k, 0].sum()) for k in range(3)]
    assert max(abs(n - 1) for n in counts) <= 1 and sorted(counts) == [0, 1, 2]
    assert np.array_equal(np.bincount(out), [3, 3, 3])


def test_first_swap_fixes_the_worst_class():
    # 2 folds of 7. Class 0: 4 and 0 (2 off even); class 1: 3 and 0 (1.5 off). One swap allowed:
    # it moves a class-0 image to fold 1 (and an empty one back), leaving class 1 as it was.
    y = multi_hot([{0}] * 4 + [{1}] * 3 + [set()] * 7)
    fold = np.repeat([0, 1], 7)
    out = rebalance(y, fold, 2, np.random.default_rng(0), max_swaps=1)
    assert [int(y[out == k, 0].sum()) for k in range(2)] == [3, 1]
    assert [int(y[out == k, 1].sum()) for k in range(2)] == [3, 0]


def random_instances():
    """Small dense random label sets in equal-sized random folds (ties, zero-gain and stuck swaps abound)."""
    rng = np.random.default_rng(11)
    for _ in range(40):
        n_folds = int(rng.integers(2, 5))
        n = n_folds * int(rng.integers(3, 8))
        y = np.zeros((n, 28), np.uint8)
        y[:, :5] = rng.random((n, 5)) < rng.uniform(0.2, 0.7, 5)
        yield y, rng.permutation(np.arange(n) % n_folds), n_folds, int(rng.integers(100))


def test_every_swap_is_a_steepest_descent_and_the_end_is_balanced_or_stuck():
    """Stepping max_swaps through every iteration: each change is one swap between two folds that
    strictly lowers the summed squared deviation, and no other swap for a class it fixes lowers it
    more (all candidates are tried on sets this small). At the end, every checked class is within
    1 of even, or no swap with the most opposite fold helps it."""
    for y, start, n_folds, seed in random_instances():
        final = rebalance(y, start, n_folds, np.random.default_rng(seed))
        before = start
        for s in range(1, 400):
            if np.array_equal(before, final):
                break
            after = rebalance(y, start, n_folds, np.random.default_rng(seed), max_swaps=s)
            moved = np.flatnonzero(after != before)
            if len(moved):
                assert len(moved) == 2
                i, j = moved
                assert after[i] == before[j] and after[j] == before[i] != before[j]
                assert ssd(y, after, n_folds) < ssd(y, before, n_folds)
                # Either image may be the one that carries the class the swap fixes.
                assert any(
                    ssd(y, after, n_folds) == best_swap_ssd(y, before, n_folds, before[i], before[j], c)
                    for i, j in [(i, j), (j, i)]
                    for c in np.flatnonzero((y[i] == 1) & (y[j] == 0))
                )
            before = after
        assert np.array_equal(before, final), "did not reach the end state one swap at a time"
        assert np.array_equal(np.bincount(final, minlength=n_folds), np.bincount(start, minlength=n_folds))
        total = y.sum(0).astype(np.int64)
        dev = np.stack([n_folds * y[final == k].sum(0) - total for k in range(n_folds)])  # n_folds x deviation
        for k, c in zip(*np.nonzero((np.abs(dev) > n_folds) & (total >= n_folds))):
            a, b = (k, int(np.argmin(dev[:, c]))) if dev[k, c] > 0 else (int(np.argmax(dev[:, c])), k)
            assert best_swap_ssd(y, final, n_folds, a, b, c) >= ssd(y, final, n_folds), (k, c)


def fold_counts(y, fold, n_folds, c):
    return [int(y[fold == k, c].sum()) for k in range(n_folds)]


def test_a_stuck_class_does_not_block_the_next_one():
    # 3 folds of 3. Per-fold counts: class 0 [3, 1, 3] (even 7/3), class 1 [0, 1, 2] (even 1),
    # class 2 [1, 1, 3] (even 5/3); class 3 has 2 images (unchecked). Worst are fold 1 of class 0
    # and fold 2 of class 2 (4/3 off each); class 0 comes first, but each of its swaps (an image with
    # class 0 from fold 0 for one without it from fold 1) leaves the squared deviation as it is
    # (gain 0): not taken. Class 2 is next: the best swap moves {0,1,2} from fold 2 to fold 0 and {0} back.
    y = multi_hot([{0}, {1, 3}, {0, 2}, {0, 1, 2}, {2}, {0}, {0}, {0, 1, 2}, {0, 2, 3}])
    fold = np.array([1, 1, 2, 2, 1, 0, 0, 2, 0])
    assert [fold_counts(y, fold, 3, c) for c in range(4)] == [[3, 1, 3], [0, 1, 2], [1, 1, 3], [1, 1, 0]]
    # The first iteration only gives class 0 up (no zero-gain swap is made) ...
    assert np.array_equal(rebalance(y, fold, 3, np.random.default_rng(0), max_swaps=1), fold)
    # ... the second swaps for class 2; then class 0 is stuck again (its swaps still gain 0) and it ends.
    for max_swaps in [2, 10_000]:
        out = rebalance(y, fold, 3, np.random.default_rng(0), max_swaps=max_swaps)
        assert [fold_counts(y, out, 3, c) for c in range(4)] == [[3, 1, 3], [1, 1, 1], [2, 1, 2], [1, 1, 0]]


class RecordingRng:
    """Stands in for the generator: records each candidate draw (pool size, sample size, replace)."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.draws = []

    def choice(self, a, size, replace=True):  # Generator.choice's default: with replacement
        self.draws.append((len(a), size, replace))
        return self.rng.choice(a, size, replace=replace)


def test_swap_candidates_are_at_most_256_per_side_drawn_without_replacement():
    # 2 folds of 300: class 0 in 290 images of fold 0 and 270 of fold 1 (10 off even):
    # 290 candidates to move out of fold 0 (more than 256), 30 without it in fold 1.
    y = np.zeros((600, 28), np.uint8)
    y[:290, 0] = 1
    y[300:570, 0] = 1
    fold = np.repeat([0, 1], 300)
    rng = RecordingRng(0)
    out = rebalance(y, fold, 2, rng)
    assert fold_counts(y, out, 2, 0) == [281, 279]  # each swap moves one: 9 of them bring it within 1
    assert [(pool, size) for pool, size, _ in rng.draws[:2]] == [(290, 256), (30, 30)]
    assert all(size == min(pool, 256) and not replace for pool, size, replace in rng.draws)


def test_uneven_folds_with_nothing_to_swap_are_left_as_they_are():
    """Fold 1 holds no image without class 0, so no swap can move class 0: rebalance stops without one."""
    y = np.zeros((6, 28), np.uint8)
    y[:, 0] = 1
    fold = np.array([0, 0, 0, 0, 0, 1])
    assert rebalance(y, fold, 2, np.random.default_rng(0)).tolist() == fold.tolist()


def test_a_class_with_nothing_to_swap_does_not_stop_the_next_one():
    """Fold 0 holds 6 images, fold 1 two, all of class 0: class 0 (first of the worst) cannot be
    swapped (fold 1 has no image without it) and is skipped; class 1 (4 images, all in fold 0) then
    gets one swap: counts 3 and 1, fold sizes and class 0 unchanged."""
    y = np.zeros((8, 28), np.uint8)
    y[:, 0] = 1
    y[:4, 1] = 1
    fold = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    out = rebalance(y, fold, 2, np.random.default_rng(0))
    assert [int((out == k).sum()) for k in (0, 1)] == [6, 2]
    assert [int(y[out == k, 1].sum()) for k in (0, 1)] == [3, 1]
    assert [int(y[out == k, 0].sum()) for k in (0, 1)] == [6, 2]


# --- folds that can be trained: groups, empty folds, classes kept out of a fold ---------------------------

GROUP = DuplicateSettings(12, ["red", "green", "blue", "yellow"], True, "group")  # the schema's defaults
NO_PAIRS = pd.DataFrame(columns=PAIR_COLUMNS)


def chain(ids):
    """Train-train pairs joining ids[0]-ids[1]-...: one near-duplicate group."""
    rows = [(a, "lab", b, "lab", *[0] * 4, "train-train", True) for a, b in zip(ids, ids[1:])]
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def test_lab_ids_that_look_like_hpav18_are_not_one_antibody():
    """The issue's case: a lab's 40 fields `7_1_A1_{1..40}` (plain Ids, the default) are 40 groups, not
    antibody 7, and fill 5 folds of about 8; the same Ids declared hpav18 are one antibody, an error."""
    ids = [f"7_1_A1_{k}" for k in range(1, 41)]
    df = folds_table({"lab": table(ids)}, 5, 0, NO_PAIRS, GROUP)
    assert df["group"].tolist() == list(range(40))
    sizes = np.bincount(df["fold"], minlength=5)
    assert len(sizes) == 5 and sizes.min() >= 7 and sizes.max() <= 9, sizes
    assert df.equals(folds_table({"lab": table(ids)}, 5, 0, NO_PAIRS, GROUP, id_formats={"lab": "plain"}))
    with pytest.raises(ValueError, match=r"form 1 group \(largest: antibody 7, 40 images\)"):
        folds_table({"lab": table(ids)}, 5, 0, NO_PAIRS, GROUP, id_formats={"lab": "hpav18"})


def test_fewer_antibodies_than_folds_fails_naming_n_folds_the_groups_and_the_largest():
    ids = [f"123_1_A1_{k}" for k in range(30)] + [f"{a}_2_B{a}_1{k}" for a in (7, 8) for k in range(5)]
    message = (
        "n_folds: 5 folds but the 40 train images form 3 groups (largest: antibody 123, 30 images); "
        "a fold would be empty: lower n_folds to at most 3 or set duplicates.policy: off"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        folds_table({"hpav18": table(ids)}, 5, 0, NO_PAIRS, GROUP, id_formats={"hpav18": "hpav18"})
    # 3 folds: one antibody each.
    df = folds_table({"hpav18": table(ids)}, 3, 0, NO_PAIRS, GROUP, id_formats={"hpav18": "hpav18"})
    assert sorted(np.bincount(df["fold"]).tolist()) == [5, 5, 30]


def test_identical_images_are_one_group_and_fail_before_any_fold():
    ids = [f"x{k:02d}" for k in range(40)]
    message = "5 folds but the 40 train images form 1 group (largest: near-duplicates of x00, 40 images)"
    with pytest.raises(ValueError, match=re.escape(message)):
        folds_table({"lab": table(ids)}, 5, 0, chain(ids), GROUP)
    # drop_external: only the kept rows count (x00-x09 copied by external e0-e9: 10 groups left, not 20).
    pairs = pd.DataFrame(
        [(f"x{k:02d}", "lab", f"e{k}", "ext", *[0] * 4, "train-train", True) for k in range(10)], columns=PAIR_COLUMNS
    )
    tables = {"lab": table(ids[:10]), "ext": table([f"e{k}" for k in range(10)], 1)}
    drop = DuplicateSettings(12, GROUP.channels, True, "drop_external")
    message = "11 folds but the 10 train images form 10 groups (largest: Id x00, 1 image)"
    with pytest.raises(ValueError, match=re.escape(message)):
        folds_table(tables, 11, 0, pairs, drop, frozenset({"ext"}))


def test_too_few_images_without_groups_names_the_groups_too():
    message = (
        "n_folds: 5 folds but the 3 train images form 3 groups (largest: Id a0, 1 image); "
        "a fold would be empty: lower n_folds to at most 3"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        folds_table({"a": table(["a0", "a1", "a2"])}, 5, 0)


def test_a_class_kept_out_of_folds_by_its_groups_is_warned_about_per_class(caplog):
    """Rods & rings (27) on the 6 fields of antibody 9 only, Cytoplasmic bodies (26) on 4 of them (fewer
    than n_folds: no warning), Nucleoplasm (0) on 10 of 44 single fields that all have Nuclear bodies (5)
    (in every fold): one warning, naming class 27 and the 4 folds that lack it."""
    ids = [f"9_1_A1_{k}" for k in range(6)] + [f"{100 + k}_1_A1_1" for k in range(44)]
    y = np.zeros((50, 28), np.uint8)
    y[:6, 27] = 1
    y[:4, 26] = 1
    y[6:16, 0] = 1
    y[6:, 5] = 1
    with caplog.at_level("WARNING", logger="hpaflow"):
        df = folds_table({"h": LabelTable("x.csv", tuple(ids), y)}, 5, 0, NO_PAIRS, GROUP, id_formats={"h": "hpav18"})
    k = int(df["fold"][0])
    assert (df["fold"][:6] == k).all()
    others = ", ".join(str(f) for f in range(5) if f != k)
    assert [r.getMessage() for r in caplog.records] == [
        f"class 27 (Rods & rings): 6 images but none in the validation of folds {others} "
        "(its groups are too few or too large)"
    ]
    # Without groups the class reaches every fold: no warning.
    caplog.clear()
    with caplog.at_level("WARNING", logger="hpaflow"):
        folds_table({"h": LabelTable("x.csv", tuple(ids), y)}, 5, 0, NO_PAIRS, GROUP)
    assert caplog.records == []


def test_the_largest_group_is_named_wherever_it_sorts():
    """The largest group comes second here (antibody 7 sorts and appears first): it is the one named."""
    ids = [f"7_2_B7_1{k}" for k in range(5)] + [f"123_1_A1_{k}" for k in range(30)] + [f"8_2_B8_1{k}" for k in range(4)]
    message = "form 3 groups (largest: antibody 123, 30 images)"
    with pytest.raises(ValueError, match=re.escape(message)):
        folds_table({"hpav18": table(ids)}, 4, 0, NO_PAIRS, GROUP, id_formats={"hpav18": "hpav18"})


@pytest.mark.parametrize("n_folds", [2, 3])
def test_a_class_with_exactly_n_folds_images_in_one_group_is_warned_about(caplog, n_folds):
    """Class 27 on exactly n_folds fields, all of one antibody: it could be in every fold but is in one.
    The warning names the other folds, "fold" for one, "folds" for several."""
    ids = [f"9_1_A1_{k}" for k in range(n_folds)] + [f"{100 + k}_1_A1_1" for k in range(30)]
    y = np.zeros((len(ids), 28), np.uint8)
    y[:n_folds, 27] = 1
    y[n_folds:, 5] = 1
    with caplog.at_level("WARNING", logger="hpaflow"):
        df = folds_table(
            {"h": LabelTable("x.csv", tuple(ids), y)}, n_folds, 0, NO_PAIRS, GROUP, id_formats={"h": "hpav18"}
        )
    k = int(df["fold"][0])
    others = [f for f in range(n_folds) if f != k]
    word = "fold" if len(others) == 1 else "folds"
    assert [r.getMessage() for r in caplog.records] == [
        f"class 27 (Rods & rings): {n_folds} images but none in the validation of {word} "
        f"{', '.join(map(str, others))} (its groups are too few or too large)"
    ]
