"""The torch Dataset over shards: known pixels -> composition and label; samplers; folds lookup."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hpaflow import h5names as h5n
from hpaflow.augment import prepare_batch
from hpaflow.data import ShardDataset, ShardRows, fold_of, make_sampler, rare_class_weights
from hpaflow.transforms import IDENTITY, MEAN, STD, sample_params


def tiny_shard(path, ids, images, labels=None):
    with h5py.File(path, "w") as h5:
        h5.create_dataset("images", data=images, chunks=(1,) + images.shape[1:])
        h5.attrs[h5n.FORMAT] = h5n.SHARD_FORMAT
        h5.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
        if labels is not None:
            h5.create_dataset("labels", data=labels)


@pytest.fixture
def two_shards(tmp_path):
    imgs = np.zeros((3, 8, 8, 4), np.uint8)
    imgs[0, ..., 0], imgs[0, ..., 1], imgs[0, ..., 2], imgs[0, ..., 3] = 10, 200, 30, 90  # R G B Y
    imgs[1, 2, 3] = [255, 0, 0, 255]
    labels = np.eye(28, dtype=np.uint8)[[3, 7, 27]]
    tiny_shard(tmp_path / "0.h5", ["a", "b", "c"], imgs, labels)
    tiny_shard(tmp_path / "1.h5", ["d"], np.full((1, 8, 8, 4), 255, np.uint8), np.eye(28, dtype=np.uint8)[[0]])
    return [str(tmp_path / "0.h5"), str(tmp_path / "1.h5")]


def test_known_pixels_come_out_composed_and_labelled(two_shards):
    rows = ShardRows.from_files(two_shards)
    assert rows.ids.tolist() == ["a", "b", "c", "d"] and rows.file_index.tolist() == [0, 0, 0, 1]
    ds = ShardDataset(rows, 8)
    rgby, params, y = ds[0]
    assert rgby.dtype == torch.uint8 and rgby.shape == (4, 8, 8) and rgby[:, 5, 5].tolist() == [10, 200, 30, 90]
    assert params.tolist() == IDENTITY.tolist() and y.tolist() == np.eye(28)[3].tolist()
    x = prepare_batch(rgby[None], "gyb", torch.device("cpu"))
    r, g, b, yy = 10 / 255, 200 / 255, 30 / 255, 90 / 255
    expected = (np.array([g, (r + yy) / 2, (b + yy) / 2]) - MEAN[:3]) / STD[:3]
    assert x.shape == (1, 3, 8, 8) and torch.allclose(x[0, :, 5, 5], torch.tensor(expected, dtype=torch.float32))
    x4 = prepare_batch(ds[1][0][None], "rgby", torch.device("cpu"))
    assert torch.allclose(x4[0, :, 2, 3], torch.tensor((np.array([1, 0, 0, 1]) - MEAN) / STD, dtype=torch.float32))
    assert ShardDataset(rows, 4)[3][0].shape == (4, 4, 4)  # resized to the model's size


def test_loader_workers_open_files_lazily(two_shards):
    ds = ShardDataset(ShardRows.from_files(two_shards), 8, train=True, seed=1)
    ds.read(0)  # the parent holds a handle; workers must not inherit it
    batches = list(DataLoader(ds, batch_size=2, num_workers=2))
    assert torch.equal(torch.cat([y for _, _, y in batches]), torch.from_numpy(ds.rows.labels.astype(np.float32)))
    assert torch.equal(torch.cat([x for x, _, _ in batches]), torch.stack([ds[i][0] for i in range(4)]))
    # Augmentation parameters depend on (seed, epoch, index) only.
    a = torch.stack([ds[i][1] for i in range(4)])
    assert torch.equal(a, torch.cat([p for _, p, _ in DataLoader(ds, batch_size=3, num_workers=1)]))
    ds.set_epoch(1)
    assert not torch.equal(a, torch.stack([ds[i][1] for i in range(4)]))


def test_fold_lookup(two_shards, tmp_path):
    rows = ShardRows.from_files(two_shards)
    (tmp_path / "folds.csv").write_text("Id,dataset,fold\na,x,0\nb,x,1\nc,x,1\nd,x,0\n")
    assert fold_of(rows, tmp_path / "folds.csv").tolist() == [0, 1, 1, 0]
    (tmp_path / "f2.csv").write_text("Id,dataset,fold\na,x,0\n")
    with pytest.raises(ValueError, match="no fold for 3 Id"):
        fold_of(rows, tmp_path / "f2.csv")


def test_samplers_are_fixed_by_seed_and_epoch():
    labels = np.eye(28, dtype=np.uint8)[[0] * 900 + [27] * 100]
    a = list(make_sampler("uniform", labels, 0, 1))
    assert a == list(make_sampler("uniform", labels, 0, 1)) and a != list(make_sampler("uniform", labels, 0, 2))
    w = rare_class_weights(labels)
    assert np.isclose(w[-1] / w[0], 3.0)  # (0.9 / 0.1) ** 0.5
    drawn = labels[list(make_sampler("oversample_rare", labels, 0, 0))]
    assert 0.2 < drawn[:, 27].mean() < 0.3  # 10% of images, drawn at 300 / 1200 = 25%


@pytest.fixture
def numbered_shard(tmp_path):
    """Four 8x8 images whose red plane numbers its pixels (row-major, + 64 per image): a crop tells where it lies."""
    imgs = np.zeros((4, 8, 8, 4), np.uint8)
    imgs[..., 0] = np.arange(4 * 64).reshape(4, 8, 8) % 256
    tiny_shard(tmp_path / "n.h5", ["a", "b", "c", "d"], imgs, np.eye(28, dtype=np.uint8)[[0, 1, 2, 3]])
    return ShardRows.from_files([tmp_path / "n.h5"])


def crop_corners(ds: ShardDataset, batches=None) -> list[tuple[int, int]]:
    """Top-left corner (y, x) of each sample's 4x4 crop, read from the numbered red plane."""
    crops = [ds[i][0] for i in range(len(ds))] if batches is None else torch.cat([x for x, _, _ in batches])
    corners = []
    for i, crop in enumerate(crops):
        assert crop.shape == (4, 4, 4)
        first = int(crop[0, 0, 0]) - 64 * i
        y, x = divmod(first, 8)
        whole = torch.arange(64, dtype=torch.uint8).reshape(8, 8) + 64 * i
        assert torch.equal(crop[0], whole[y : y + 4, x : x + 4])  # a true window of the resized image
        corners.append((y, x))
    return corners


def test_training_crops_are_fixed_by_seed_epoch_and_index(numbered_shard):
    """A random 4x4 square of each 8x8 training image: the same for the same (seed, epoch, index), a resumed run
    (a new dataset at that epoch) and any worker count; other epochs and seeds move it; augmentation parameters
    are those the sample had without crops."""
    ds = ShardDataset(numbered_shard, 8, train=True, seed=3, crop_size=4)
    ds.set_epoch(2)
    corners = crop_corners(ds)
    assert all(0 <= y <= 4 and 0 <= x <= 4 for y, x in corners)
    assert crop_corners(ds) == corners
    resumed = ShardDataset(numbered_shard, 8, train=True, seed=3, crop_size=4)
    resumed.set_epoch(2)
    assert crop_corners(resumed) == corners
    for workers in (0, 2):
        assert crop_corners(ds, DataLoader(ds, batch_size=3, num_workers=workers)) == corners
    epochs = []
    for epoch in range(4):
        ds.set_epoch(epoch)
        epochs.append(crop_corners(ds))
    assert epochs[2] == corners and len({tuple(e) for e in epochs}) == 4
    other = ShardDataset(numbered_shard, 8, train=True, seed=4, crop_size=4)
    other.set_epoch(2)
    assert crop_corners(other) != corners
    # Parameters first from the sample's generator, the crop next: the parameters are those it had without crops.
    before = np.stack([sample_params(np.random.default_rng([3, 2, i])) for i in range(4)])
    assert np.array_equal(np.stack([resumed[i][1].numpy() for i in range(4)]), before)


def test_validation_reads_the_whole_image_and_a_crop_must_fit(numbered_shard):
    ds = ShardDataset(numbered_shard, 8, crop_size=4)  # not training: predict cuts its own crops
    assert ds[1][0].shape == (4, 8, 8) and int(ds[1][0][0, 0, 0]) == 64
    assert ShardDataset(numbered_shard, 8, train=True, crop_size=8)[0][0].shape == (4, 8, 8)
    with pytest.raises(ValueError, match="crop_size 9 must be between 1 and the image size 8"):
        ShardDataset(numbered_shard, 8, train=True, crop_size=9)
