"""The synthetic demo set: real label statistics, one visible pattern per class, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd

from conftest import SHARED, needs_shared
from hpaflow.demo import (
    PATTERNS,
    DemoSpec,
    count_label_sets,
    load_label_sets,
    make_demo,
    make_field,
    render,
    sample_label_sets,
)
from hpaflow.io import read_rgby
from hpaflow.labels import NUM_CLASSES, encode


@needs_shared
def test_embedded_label_sets_are_the_competitions():
    sets, counts = load_label_sets()
    embedded = {" ".join(map(str, s)): int(c) for s, c in zip(sets, counts)}
    assert embedded == count_label_sets(SHARED / "hpa" / "train.csv")
    assert sum(embedded.values()) == 31072


def test_sampled_frequencies_follow_the_prior():
    sets, counts = load_label_sets()
    real = (encode(sets) * counts[:, None]).sum(0) / counts.sum()
    drawn = encode(sample_label_sets(40000, np.random.default_rng(0))).mean(0)
    assert np.allclose(drawn, real, atol=0.01)
    assert real[0] > 0.4 and real[27] < 0.001  # Nucleoplasm common, Rods & rings rare
    flat = encode(sample_label_sets(40000, np.random.default_rng(0), prior_power=0.0)).mean(0)
    assert flat[27] > 5 * real[27]


def test_every_pattern_is_drawn_and_distinct():
    f = make_field(128, np.random.default_rng(3))
    images = {}
    for k, fn in PATTERNS.items():
        img = fn(make_field(128, np.random.default_rng(3)))
        assert img.shape == (128, 128) and img.max() > 0, f"class {k} draws nothing"
        images[k] = img / img.max()
    assert f.n_cells >= 1
    for a in range(NUM_CLASSES):
        for b in range(a + 1, NUM_CLASSES):
            assert not np.allclose(images[a], images[b]), (a, b)


def test_label_independent_channels_and_green_signal():
    rng_seed = 5
    empty = render([], 128, np.random.default_rng(rng_seed))
    nucleoli = render([2], 128, np.random.default_rng(rng_seed))
    cytosol = render([25], 128, np.random.default_rng(rng_seed))
    assert nucleoli[:, :, 1].mean() > empty[:, :, 1].mean() + 1
    assert cytosol[:, :, 1].mean() > nucleoli[:, :, 1].mean()
    # Blue nuclei sit where the nucleoli pattern is (green inside nuclei).
    g, b = nucleoli[:, :, 1].astype(float), nucleoli[:, :, 2].astype(float)
    assert b[g > 100].mean() > 2 * b.mean()


def test_make_demo_layout_and_determinism(tmp_path):
    spec = DemoSpec(
        seed=1,
        n_train=6,
        n_test=3,
        n_tiff=2,
        n_jpg=2,
        size=64,
        tiff_size=96,
        jpg_size=80,
        prior_power=1.0,
        dup_external=1,
        dup_conflicts=0,
        dup_test=1,
        antibody_fields=1,
    )
    t1 = make_demo(tmp_path / "a", spec)
    make_demo(tmp_path / "b", spec)
    a, b = tmp_path / "a", tmp_path / "b"
    names = ["train.csv", "train_tiff.csv", "hpav18.csv", "sample_submission.csv", "test_labels.csv"]
    for name in [*names, "duplicates_truth.csv"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    train = pd.read_csv(a / "train.csv")
    assert list(train.columns) == ["Id", "Target"] and len(train) == 6
    sub = pd.read_csv(a / "sample_submission.csv")
    assert list(sub.columns) == ["Id", "Predicted"]
    assert sub["Id"].tolist() == pd.read_csv(a / "test_labels.csv")["Id"].tolist() == t1["test"]["Id"].tolist()
    i = train["Id"][0]
    assert np.array_equal(read_rgby(a / "train", i, "png"), read_rgby(b / "train", i, "png"))
    assert read_rgby(a / "train", i, "png").shape == (64, 64, 4)
    tiff_ids = pd.read_csv(a / "train_tiff.csv")["Id"]
    assert read_rgby(a / "train_tiff", tiff_ids[0], "tiff").shape == (96, 96, 4)  # from uint16
    assert read_rgby(a / "train_tiff", tiff_ids[1], "tiff").shape == (96, 96, 4)  # from uint8
    jpg_ids = pd.read_csv(a / "hpav18.csv")["Id"]
    assert jpg_ids.str.fullmatch(r"\d+_\d+_[A-H]\d+_\d").all()
    assert read_rgby(a / "hpav18", jpg_ids[0], "jpg").shape == (80, 80, 4)
