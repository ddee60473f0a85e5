"""Colour composition, normalisation and dihedral views of a batch (known answers), crop positions, TTA and tile
combination."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpaflow.augment import NORMALIZERS, augment_batch, compose_batch, dihedral_batch, normalize_batch, prepare_batch
from hpaflow.predict import aggregate_tiles, combine
from hpaflow.transforms import CROP_PLACEMENTS, IDENTITY, MEAN, STD, crop_offsets, random_crop_offset, sample_params


def test_compose_known_pixels():
    px = np.array([[[10, 200, 30, 90]]], np.uint8)  # R, G, B, Y
    r, g, b, y = 10 / 255, 200 / 255, 30 / 255, 90 / 255
    t = torch.from_numpy(px.transpose(2, 0, 1)[None].copy())
    expected = {"gyb": [g, (r + y) / 2, (b + y) / 2], "rgb": [r, g, b], "rgby": [r, g, b, y]}
    for mode, values in expected.items():
        assert np.allclose(compose_batch(t, mode)[0, :, 0, 0].numpy(), values)
    normalized = normalize_batch(compose_batch(t, "rgby"))[0, :, 0, 0].numpy()
    assert np.allclose(normalized, (np.array([r, g, b, y]) - MEAN) / STD)


def test_eight_distinct_dihedral_views_known_answers():
    x = torch.arange(9).reshape(1, 1, 3, 3)
    views = [dihedral_batch(x, v)[0, 0].tolist() for v in range(8)]
    assert views[0] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert views[1] == [[2, 5, 8], [1, 4, 7], [0, 3, 6]]  # rotated 90 degrees counter-clockwise
    assert views[2] == [[8, 7, 6], [5, 4, 3], [2, 1, 0]]
    assert views[4] == [[2, 1, 0], [5, 4, 3], [8, 7, 6]]  # flipped left-right
    assert views[5] == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]  # flipped, then rotated
    assert len({str(v) for v in views}) == 8


def test_aggregate_tiles_per_image_in_first_seen_order():
    ids = np.array(["b", "b", "a", "a", "c"])
    probs = np.array([[0.1], [0.3], [0.5], [0.9], [0.7]], np.float32)
    out_ids, mean = aggregate_tiles(ids, probs, "mean")
    assert out_ids.tolist() == ["b", "a", "c"] and np.allclose(mean[:, 0], [0.2, 0.7, 0.7])
    _, mx = aggregate_tiles(ids, probs[None], "max")  # with a leading views axis
    assert mx.shape == (1, 3, 1) and np.allclose(mx[0, :, 0], [0.3, 0.9, 0.7])


def test_augment_params_are_deterministic_per_generator():
    a = sample_params(np.random.default_rng([1, 2, 3]))
    assert np.array_equal(a, sample_params(np.random.default_rng([1, 2, 3])))
    assert not np.array_equal(a, sample_params(np.random.default_rng([1, 2, 4])))
    assert 0 <= a[0] < 8 and abs(a[1]) <= 15 and 0.9 <= a[2] <= 1.1


def test_augment_batch_identity_views_and_range():
    x = torch.rand(3, 3, 12, 12)
    ident = torch.from_numpy(np.stack([IDENTITY] * 3))
    assert torch.allclose(augment_batch(x, ident), x, atol=1e-6)
    views = ident.clone()
    views[:, 0] = torch.tensor([0, 3, 6])
    out = augment_batch(x, views)
    for i, v in enumerate([0, 3, 6]):  # each sample gets its own dihedral view
        assert torch.equal(out[i], dihedral_batch(x[i : i + 1], v)[0])
    rnd = torch.from_numpy(np.stack([sample_params(np.random.default_rng(k)) for k in range(3)]))
    out = augment_batch(x, rnd)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, x)


def test_combine():
    views = np.array([[[0.2, 0.9]], [[0.6, 0.1]]], np.float32)
    assert np.allclose(combine(views, "mean"), [[0.4, 0.5]]) and combine(views, "mean").dtype == np.float32
    assert np.allclose(combine(views, "max"), [[0.6, 0.9]])
    with pytest.raises(ValueError, match="unknown combine 'median' \\(mean or max\\)"):
        combine(views, "median")


def test_registries_are_the_schema_enums():
    assert list(CROP_PLACEMENTS) == ["fixed", "seeded"] and list(NORMALIZERS) == ["imagenet", "per_image"]


def test_per_image_normalisation_known_answers():
    """Each image's own per-channel mean and population std over its pixels, (x - mean) / (std + 1/255); worked by
    hand on 2x2 images: not the batch's statistics, not the other channels'."""
    x = torch.tensor(
        [
            [[[0.2, 0.4], [0.6, 0.8]], [[0.7, 0.7], [0.7, 0.7]]],  # mean 0.5, var 0.05; a constant channel
            [[[0.0, 0.0], [1.0, 1.0]], [[0.1, 0.3], [0.1, 0.3]]],  # mean 0.5, std 0.5; mean 0.2, std 0.1
        ]
    )
    got = normalize_batch(x, "per_image").numpy()
    eps = 1 / 255
    np.testing.assert_allclose(got[0, 0], np.array([[-0.3, -0.1], [0.1, 0.3]]) / (np.sqrt(0.05) + eps), atol=1e-6)
    np.testing.assert_allclose(got[0, 1], np.zeros((2, 2)), atol=1e-5)  # std 0: all 0, no division by zero
    np.testing.assert_allclose(got[1, 0], np.array([[-0.5, -0.5], [0.5, 0.5]]) / (0.5 + eps), atol=1e-6)
    np.testing.assert_allclose(got[1, 1], np.array([[-0.1, 0.1], [-0.1, 0.1]]) / (0.1 + eps), atol=1e-6)
    # imagenet stays the default; an unknown mode is named.
    assert torch.equal(normalize_batch(x), normalize_batch(x, "imagenet"))
    with pytest.raises(ValueError, match=r"unknown normalize 'batch' \(one of imagenet, per_image\)"):
        normalize_batch(x, "batch")


def test_prepare_batch_normalises_per_image_after_composition():
    """uint8 RGBY 2x2 -> rgb floats -> each channel standardised by its own statistics."""
    rgby = torch.zeros(1, 4, 2, 2, dtype=torch.uint8)
    rgby[0, 0] = torch.tensor([[0, 0], [255, 255]])  # red: 0 and 1 -> -+0.5 / (0.5 + eps)
    rgby[0, 1] = torch.tensor([[51, 102], [153, 204]])  # green: 0.2..0.8 as above
    x = prepare_batch(rgby, "rgb", torch.device("cpu"), normalize="per_image")
    eps = 1 / 255
    np.testing.assert_allclose(x[0, 0].numpy(), [[-0.5 / (0.5 + eps)] * 2, [0.5 / (0.5 + eps)] * 2], atol=1e-6)
    np.testing.assert_allclose(x[0, 1].numpy(), np.array([[-0.3, -0.1], [0.1, 0.3]]) / (0.05**0.5 + eps), atol=1e-6)
    np.testing.assert_allclose(x[0, 2].numpy(), np.zeros((2, 2)), atol=1e-6)  # blue: empty


# Side 10, crop 4: positions 0..6 per axis; a 2x2 grid is {0, 6}, a 3x3 grid {0, 3, 6}.
FIXED = {
    1: [[3, 3]],  # the centre
    2: [[0, 0], [6, 6]],  # entries 0 and 3 of the 2x2 grid
    4: [[0, 0], [0, 6], [6, 0], [6, 6]],  # the corners, row-major
    5: [[0, 0], [0, 6], [3, 3], [6, 0], [6, 6]],  # entries 0, 2, 4, 6, 8 of the 3x3 grid: corners and centre
    9: [[y, x] for y in (0, 3, 6) for x in (0, 3, 6)],
}


@pytest.mark.parametrize("n", sorted(FIXED))
def test_fixed_crop_offsets_known_answers(n):
    got = crop_offsets(10, 4, n, "fixed", seed=123)
    assert got.dtype == np.int64 and got.tolist() == FIXED[n]
    assert np.array_equal(got, crop_offsets(10, 4, n, "fixed", seed=7))  # fixed: the seed plays no part


def test_fixed_crop_centre_is_one_place_when_the_span_is_odd():
    """Side 11, crop 4: positions 0..7; the 3x3 grid's middle line is 3.5 rounded down, the centre 7 // 2 that one
    crop takes; the grid's ends are 0 and 7."""
    assert crop_offsets(11, 4, 1, "fixed", 0).tolist() == [[3, 3]]
    assert crop_offsets(11, 4, 5, "fixed", 0).tolist() == [[0, 0], [0, 7], [3, 3], [7, 0], [7, 7]]
    assert crop_offsets(4, 4, 4, "fixed", 0).tolist() == [[0, 0]] * 4  # crop = side: the image itself


def test_seeded_crop_offsets_are_fixed_by_the_seed_and_cover_every_position():
    a = crop_offsets(10, 4, 5, "seeded", seed=1)
    assert a.shape == (5, 2) and a.dtype == np.int64
    assert np.array_equal(a, crop_offsets(10, 4, 5, "seeded", seed=1))  # every image, every job: the same
    assert not np.array_equal(a, crop_offsets(10, 4, 5, "seeded", seed=2))
    many = crop_offsets(10, 4, 400, "seeded", seed=1)
    assert set(many.ravel().tolist()) == set(range(7))  # uniform over 0..side - crop, both ends included


def test_crop_offsets_refuse_what_cannot_be_cut():
    with pytest.raises(ValueError, match=r"unknown crop_placement 'random' \(one of fixed, seeded\)"):
        crop_offsets(10, 4, 2, "random", 0)
    with pytest.raises(ValueError, match="crops: 0 crops asked for"):
        crop_offsets(10, 4, 0, "fixed", 0)
    with pytest.raises(ValueError, match="crop_size 12 must be between 1 and the image side 10"):
        crop_offsets(10, 12, 1, "fixed", 0)


def test_random_crop_offset_is_fixed_by_the_generator_and_uniform():
    a = random_crop_offset(10, 4, np.random.default_rng([1, 2, 3]))
    assert a == random_crop_offset(10, 4, np.random.default_rng([1, 2, 3]))
    rng = np.random.default_rng(0)
    seen = np.array([random_crop_offset(10, 4, rng) for _ in range(300)])
    assert set(seen[:, 0].tolist()) == set(range(7)) and set(seen[:, 1].tolist()) == set(range(7))
    assert random_crop_offset(4, 4, rng) == (0, 0)
