"""Colour composition and dihedral views of a batch (known answers), TTA and tile combination."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpaflow.augment import augment_batch, compose_batch, dihedral_batch, normalize_batch
from hpaflow.predict import aggregate_tiles, combine
from hpaflow.transforms import IDENTITY, MEAN, STD, sample_params


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
