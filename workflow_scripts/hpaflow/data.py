"""Torch datasets over HDF5 shards: lazy per-worker file handles, random access, augmentation."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, RandomSampler, Sampler, WeightedRandomSampler

from . import h5names as h5n
from .labels import NUM_CLASSES
from .shards import check_format
from .transforms import IDENTITY, random_crop_offset, resize, sample_params


@dataclass
class ShardRows:
    """Which row of which shard file holds each sample, with its Id and (train) labels."""

    files: list[str]
    file_index: np.ndarray  # int32 (N,)
    row: np.ndarray  # int32 (N,)
    ids: np.ndarray  # str (N,)
    labels: np.ndarray | None  # uint8 (N, 28)

    @classmethod
    def from_files(cls, files: list[str | Path]) -> ShardRows:
        files = [str(f) for f in files]
        fi, rows, ids, labels = [], [], [], []
        for k, f in enumerate(files):
            with h5py.File(f, "r") as h5:
                check_format(f, h5)
                n = h5[h5n.IDS].shape[0]
                ids.append(h5[h5n.IDS].asstr()[...])
                labels.append(h5[h5n.LABELS][...] if h5n.LABELS in h5 else None)
            fi.append(np.full(n, k, np.int32))
            rows.append(np.arange(n, dtype=np.int32))
        has = [x is not None for x in labels]
        if any(has) and not all(has):
            raise ValueError("shards mix train (labelled) and test (unlabelled) data")
        return cls(
            files,
            np.concatenate(fi),
            np.concatenate(rows),
            np.concatenate(ids),
            np.concatenate(labels) if all(has) and labels else None,
        )

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, mask: np.ndarray) -> ShardRows:
        return ShardRows(
            self.files,
            self.file_index[mask],
            self.row[mask],
            self.ids[mask],
            None if self.labels is None else self.labels[mask],
        )


def fold_of(rows: ShardRows, folds_csv: str | Path) -> np.ndarray:
    """Fold of each row (by Id) from the folds table; every row's Id must be in it."""
    table = h5n.read_folds(folds_csv)
    fold = pd.Series(table["fold"].to_numpy(), index=table["Id"]).reindex(rows.ids)
    if fold.isna().any():
        missing = rows.ids[fold.isna().to_numpy()]
        raise ValueError(f"{folds_csv}: no fold for {len(missing)} Id(s), e.g. {missing[0]!r}")
    return fold.to_numpy(np.int64)


class ShardDataset(Dataset):
    """Samples as uint8 RGBY tensors (4, side, side), augmentation parameters (7,) and labels (28,).

    Only reading and cropping happen here: composition, augmentation and normalisation run on whole
    batches on the training device (`augment.prepare_batch`). A row is resized to `size`; with `train`
    and `crop_size`, a random crop_size square of it is cut here (slicing: less to move to the device),
    so side = crop_size; else side = size, the whole image (predict cuts its own crops). HDF5 files are
    opened on first use in each process (a DataLoader worker must not inherit an open handle).
    Parameters and the crop come from a generator seeded by (seed, epoch, index), so a sample's
    augmentation is the same whatever the worker count or a resume; without `train` they are the identity.
    """

    def __init__(
        self, rows: ShardRows, size: int, train: bool = False, seed: int = 0, crop_size: int | None = None
    ) -> None:
        if crop_size is not None and not 0 < crop_size <= size:
            raise ValueError(f"crop_size {crop_size} must be between 1 and the image size {size}")
        self.rows, self.size, self.train, self.seed, self.crop_size = rows, size, train, seed, crop_size
        self.epoch = 0
        self._handles: dict[int, h5py.Dataset] = {}
        self._pid = -1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, i: int) -> np.ndarray:
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        k = int(self.rows.file_index[i])
        if k not in self._handles:
            # The images dataset is kept open (looking it up per read cost ~0.45 ms, a third of a 512 px read);
            # no chunk cache: rows are read in random order, each once an epoch, one row per chunk.
            self._handles[k] = h5py.File(self.rows.files[k], "r", rdcc_nbytes=0)[h5n.IMAGES]
        return self._handles[k][int(self.rows.row[i])]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = resize(self.read(i), self.size)
        params = IDENTITY
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            params = sample_params(rng)  # first: a sample's parameters are those it had before crops existed
            if self.crop_size is not None:
                y0, x0 = random_crop_offset(self.size, self.crop_size, rng)
                x = x[y0 : y0 + self.crop_size, x0 : x0 + self.crop_size]
        y = self.rows.labels[i] if self.rows.labels is not None else np.zeros(NUM_CLASSES, np.uint8)
        return (
            torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))),
            torch.from_numpy(params),
            torch.from_numpy(y.astype(np.float32)),
        )

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = {}, -1
        return state


def rare_class_weights(labels: np.ndarray, power: float = 0.5) -> np.ndarray:
    """Sampling weight of each sample: its rarest class's inverse frequency ** power.

    power 0.5 oversamples rare classes without letting a handful of images dominate an epoch.
    """
    freq = labels.mean(0).astype(np.float64)
    inv = np.where(freq > 0, 1.0 / np.maximum(freq, 1e-12), 0.0) ** power
    w = (labels * inv).max(1)
    return np.where(w > 0, w, inv[inv > 0].min() if (inv > 0).any() else 1.0)


# models[].sampler -> the sampler of a fold's training rows (labels, generator); the schema's enum is these keys.
SAMPLERS = {
    "uniform": lambda labels, g: RandomSampler(range(len(labels)), generator=g),
    "oversample_rare": lambda labels, g: WeightedRandomSampler(
        torch.as_tensor(rare_class_weights(labels), dtype=torch.double), len(labels), replacement=True, generator=g
    ),
}


def make_sampler(kind: str, labels: np.ndarray, seed: int, epoch: int) -> Sampler:
    """A sampler whose order depends only on (seed, epoch): a resumed run sees the same batches."""
    if kind not in SAMPLERS:
        raise ValueError(f"unknown sampler {kind!r} (one of {', '.join(SAMPLERS)})")
    return SAMPLERS[kind](labels, torch.Generator().manual_seed(seed * 100_003 + epoch))
