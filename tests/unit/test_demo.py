"""The synthetic demo set: real label statistics, one visible pattern per class, antibody looks and siblings,
determinism."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import SHARED, needs_shared
from hpaflow.demo import (
    PATTERNS,
    DemoSpec,
    Look,
    antibody_groups,
    antibody_look,
    count_label_sets,
    draw_look,
    field_look,
    green_plane,
    load_label_sets,
    make_demo,
    make_field,
    render,
    sample_label_sets,
    siblings,
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
        siblings=0,
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


# --- antibody looks and test siblings -------------------------------------------------------------------------

# HPAv18: fields 0, 1 are planted copies (groups 0, 1); fields 2..9 come 3 an antibody: groups 2, 2, 2, 3, 3, 3, 4, 4.
# Test: fields 0, 1 are planted copies; siblings are fields 2..6 of groups 2, 3, 4, 2, 3; field 7 is its own antibody.
SIB = DemoSpec(
    seed=4,
    n_train=8,
    n_test=8,
    n_tiff=2,
    n_jpg=10,
    size=64,
    tiff_size=64,
    jpg_size=96,
    prior_power=0.0,  # flat: the antibodies' label sets differ
    dup_external=2,
    dup_conflicts=1,
    dup_test=2,
    antibody_fields=3,
    siblings=5,
)


def plain_look(**changes) -> Look:
    """A look with unit gains, no background, texture or puncta: one parameter at a time is changed."""
    base = Look((1.0,) * NUM_CLASSES, 1.0, 0.0, 0.0, 2.0, 0.0, 1.0, 0.5)
    return dataclasses.replace(base, **changes)


def test_siblings_and_looks_follow_the_antibody_groups():
    assert antibody_groups(SIB) == [2, 3, 4]
    assert siblings(SIB) == {2: 2, 3: 3, 4: 4, 5: 2, 6: 3}
    assert siblings(dataclasses.replace(SIB, siblings=0)) == {}
    assert siblings(dataclasses.replace(SIB, siblings=50)) == {k: [2, 3, 4][(k - 2) % 3] for k in range(2, 8)}
    # An antibody's look comes from its own generator: the same whenever it is asked for.
    assert antibody_look(SIB, 3) == draw_look(np.random.default_rng([SIB.seed, 1000, 3])) == antibody_look(SIB, 3)
    assert len({antibody_look(SIB, g) for g in range(2, 5)}) == 3
    hp = {k: field_look(SIB, "hpav18", k) for k in range(SIB.n_jpg)}
    assert hp[0] is None and hp[1] is None  # planted copies: the train field's own look
    assert hp[2] == hp[3] == hp[4] == antibody_look(SIB, 2) and hp[5] == hp[7] == antibody_look(SIB, 3)
    assert hp[8] == hp[9] == antibody_look(SIB, 4) != hp[7]
    assert field_look(SIB, "test", 5) == hp[2] and field_look(SIB, "test", 6) == hp[5]
    assert [field_look(SIB, "test", k) for k in (0, 1, 7)] == [None] * 3
    assert [field_look(SIB, s, 0) for s in ("train", "train_tiff")] == [None] * 2
    with pytest.raises(ValueError, match="siblings=2 needs HPAv18 fields"):
        siblings(dataclasses.replace(SIB, n_jpg=2, siblings=2))
    with pytest.raises(ValueError, match="28"):
        plain_look(gains=(1.0,) * 3)


@pytest.fixture(scope="module")
def sib_sets(tmp_path_factory):
    """The SIB set with siblings, twice, and without."""
    root = tmp_path_factory.mktemp("sib")
    for name, spec in [("a", SIB), ("b", SIB), ("none", dataclasses.replace(SIB, siblings=0))]:
        make_demo(root / name, spec)
    return root


def files(d) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_siblings_change_only_the_sibling_test_fields(sib_sets):
    a, b, none = files(sib_sets / "a"), files(sib_sets / "b"), files(sib_sets / "none")
    assert a == b  # deterministic
    test = pd.read_csv(sib_sets / "a" / "test_labels.csv")
    sib_ids = test["Id"][2:7].tolist()
    assert set(a) == set(none)
    differ = {name for name in a if a[name] != none[name]}
    sib_files = {f"test/{i}_{c}.png" for i in sib_ids for c in ("red", "green", "blue", "yellow")}
    assert differ - sib_files == {"test_labels.csv", "siblings_truth.csv"}
    assert {f"test/{i}_green.png" for i in sib_ids} <= differ  # a sibling draws its antibody's protein
    no_sib = pd.read_csv(sib_sets / "none" / "test_labels.csv")
    assert no_sib["Id"].tolist() == test["Id"].tolist()
    keep = ~test["Id"].isin(sib_ids)
    assert no_sib["Target"][keep].tolist() == test["Target"][keep].tolist()
    assert (sib_sets / "none" / "siblings_truth.csv").read_text() == "Id,antibody,Target,hpav18_ids\n"


def test_siblings_truth_names_the_antibody_its_label_set_and_fields(sib_sets):
    root = sib_sets / "a"
    truth = pd.read_csv(root / "siblings_truth.csv", dtype={"Target": str})
    test = pd.read_csv(root / "test_labels.csv", dtype={"Target": str}).set_index("Id")["Target"]
    hp = pd.read_csv(root / "hpav18.csv", dtype={"Target": str})
    assert list(truth.columns) == ["Id", "antibody", "Target", "hpav18_ids"]
    assert truth["Id"].tolist() == test.index[2:7].tolist()
    assert truth["antibody"].tolist() == [1014, 1021, 1028, 1014, 1021]  # 1000 + 7 * group
    for row in truth.itertuples():
        members = hp[hp["Id"].str.split("_").str[0] == str(row.antibody)]
        assert row.hpav18_ids.split() == members["Id"].tolist()
        assert len(members) == (2 if row.antibody == 1028 else 3)
        assert set(members["Target"]) == {row.Target} and test[row.Id] == row.Target
    assert truth["Target"].nunique() == 3  # the flat prior gave the three antibodies other label sets


def test_sibling_and_antibody_fields_are_drawn_in_the_antibody_look(sib_sets):
    """Each image is re-drawn from its own generator and its antibody's look, and matches the file; the
    same field in another antibody's look (or its own) does not."""
    root = sib_sets / "a"
    test = pd.read_csv(root / "test_labels.csv", dtype={"Target": str})
    hp = pd.read_csv(root / "hpav18.csv", dtype={"Target": str})

    def redraw(split_no, k, target, side, look):
        # Drawn at the acquisition size (SIB.size), stored at the source's side.
        drawn = render(
            [int(t) for t in target.split()], SIB.size, np.random.default_rng([SIB.seed, split_no, 1, k]), look
        )
        return drawn if side == SIB.size else cv2.resize(drawn, (side, side), interpolation=cv2.INTER_LINEAR)

    for k, group in siblings(SIB).items():
        image = read_rgby(root / "test", test["Id"][k], "png")
        assert np.array_equal(image, redraw(1, k, test["Target"][k], SIB.size, antibody_look(SIB, group)))
        other = antibody_look(SIB, 2 + (group - 1) % 3)
        assert not np.array_equal(image, redraw(1, k, test["Target"][k], SIB.size, other))
    looks = [antibody_look(SIB, g) for g in (2, 3, 4)] + [None]
    for k in range(2, SIB.n_jpg):  # JPEG: the green plane is nearest to the one drawn in its antibody's look
        image = read_rgby(root / "hpav18", hp["Id"][k], "jpg")[:, :, 1].astype(float)
        errors = [np.abs(image - redraw(3, k, hp["Target"][k], SIB.jpg_size, look)[:, :, 1]).mean() for look in looks]
        assert np.argmin(errors) == (k - 2) // 3, (k, errors)
    k = 7  # not a sibling: its own look
    assert np.array_equal(read_rgby(root / "test", test["Id"][k], "png"), redraw(1, k, test["Target"][k], 64, None))


def test_look_known_answers():
    seed = 11
    field = make_field(128, np.random.default_rng(seed))
    cyto = cv2.erode(field.cyto().astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    nuc = cv2.erode(field.nuc().astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    nucleoli = render([2], 128, np.random.default_rng(seed), plain_look())[:, :, 1].astype(float)
    # Off-target background: the cytoplasm (no nucleoli there) gets 200 * background counts over read noise
    # (normal(4, 2) truncated to uint8: 3.5 on average).
    assert abs(nucleoli[cyto].mean() - 3.5) < 0.3
    stained = render([2], 128, np.random.default_rng(seed), plain_look(background=0.1))[:, :, 1].astype(float)
    assert abs(stained[cyto].mean() - 23.5) < 1.0
    # The overall gain scales the signal (above read noise) in proportion.
    full, half = (
        render([0], 128, np.random.default_rng(seed), plain_look(green_gain=g))[:, :, 1][nuc].mean() - 3.5
        for g in (1.0, 0.5)
    )
    assert abs(half / full - 0.5) < 0.02
    # A class's gain is its pattern's peak (the nucleoli blobs are solid discs).
    gains = tuple(0.3 if k == 2 else 1.0 for k in range(NUM_CLASSES))
    peak = green_plane(make_field(128, np.random.default_rng(seed)), [2], plain_look(gains=gains)).max()
    assert abs(peak - 0.3) < 0.01


def test_texture_and_puncta_modulate_only_the_stained_area():
    seed = 12

    def plane(**changes):
        return green_plane(make_field(128, np.random.default_rng(seed)), [0], plain_look(**changes))

    plain = plane()
    ratio = plane(texture_amp=0.4)[plain > 0.05] / plain[plain > 0.05]
    assert ratio.min() >= 0.6 - 1e-4 and ratio.max() <= 1.4 + 1e-4 and ratio.std() > 0.05  # x (1 -+ amp)
    added = plane(puncta_density=0.1, puncta_radius=1.0, puncta_level=0.5) - plain
    assert added.min() > -1e-6 and added.max() > 0.3  # bright puncta, nothing taken away
    # Only where the nucleoplasm stain is (blur reach aside): the granular variant adds no location.
    near_nuclei = cv2.dilate(make_field(128, np.random.default_rng(seed)).nuc().astype(np.uint8), np.ones((5, 5)))
    assert added[near_nuclei == 0].max() < 1e-6


def green_features(image: np.ndarray) -> np.ndarray:
    g = cv2.resize(image[:, :, 1], (64, 64), interpolation=cv2.INTER_AREA).astype(float)
    return np.array([g.mean(), g.std(), *np.percentile(g, [50, 75, 90, 99])])


def nn_accuracy(features: np.ndarray, owner: np.ndarray) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy on standardised features."""
    z = (features - features.mean(0)) / np.maximum(features.std(0), 1e-9)
    d = np.linalg.norm(z[:, None] - z[None], axis=-1) + np.eye(len(z)) * 1e9
    return float((owner[d.argmin(1)] == owner).mean())


def test_the_look_tells_antibodies_of_one_label_set_apart_at_64_px():
    """Fields of 8 antibodies with one label set: simple green statistics at 64 px find a field's antibody
    far above chance (3 of 31 neighbours are its own) when each antibody has its look, not when each field
    draws its own."""
    owner = np.repeat(np.arange(8), 4)
    shared, own = [], []
    for a, i in zip(owner, range(len(owner))):
        look = draw_look(np.random.default_rng([77, a]))
        shared.append(green_features(render([0, 25], 128, np.random.default_rng([78, i]), look)))
        own.append(green_features(render([0, 25], 128, np.random.default_rng([78, i]))))
    assert nn_accuracy(np.array(shared), owner) > 0.6
    assert nn_accuracy(np.array(own), owner) < 0.3
