"""The whole demo set (rule demo_data): every split, its csvs last and atomically."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..files import atomic_path
from ..labels import decode, encode
from ..progress import Progress
from .label_sets import sample_label_sets
from .patterns import render
from .writers import hpav18_id, kaggle_id, write_hpav18_jpeg, write_png, write_tiff

log = logging.getLogger("hpaflow")


@dataclass(frozen=True)
class DemoSpec:
    """Sizes and seed of the demo set; defaults live in the config schema only (from_config)."""

    seed: int
    n_train: int
    n_test: int
    n_tiff: int
    n_jpg: int
    size: int
    tiff_size: int
    jpg_size: int
    prior_power: float

    @classmethod
    def from_config(cls, config: dict) -> DemoSpec:
        return cls(**{k: v for k, v in config["demo"].items() if k != "dir"})


# split name -> (sub-directory, id maker, writer, side attribute, count attribute)
SPLITS = {
    "train": ("train", kaggle_id, "png", "size", "n_train"),
    "test": ("test", kaggle_id, "png", "size", "n_test"),
    "train_tiff": ("train_tiff", kaggle_id, "tiff", "tiff_size", "n_tiff"),
    "hpav18": ("hpav18", hpav18_id, "jpg", "jpg_size", "n_jpg"),
}


def make_demo(out_dir: str | Path, spec: DemoSpec) -> dict[str, pd.DataFrame]:
    """Write the demo set under out_dir; returns the label table of each split.

    Layout: train/, test/ (Kaggle PNGs), train.csv, sample_submission.csv, test_labels.csv
    (the hidden truth, never read by the workflow), train_tiff/ + train_tiff.csv (full-size
    style TIFFs, alternately uint16 and uint8), hpav18/ + hpav18.csv (HPAv18-style RGB JPEGs).
    Csvs are written last and atomically: they mark a complete set.
    """
    out = Path(out_dir)
    tables = {}
    for split_no, (split, (sub, make_id, fmt, side_attr, n_attr)) in enumerate(SPLITS.items()):
        n, side = getattr(spec, n_attr), getattr(spec, side_attr)
        d = out / sub
        d.mkdir(parents=True, exist_ok=True)
        label_rng = np.random.default_rng([spec.seed, split_no, 0])
        label_sets = sample_label_sets(n, label_rng, spec.prior_power)
        ids, seen = [], set()
        while len(ids) < n:
            i = make_id(label_rng)
            if i not in seen:
                seen.add(i)
                ids.append(i)
        progress = Progress(n, f"demo {split}", "images", log=log)
        for k, (image_id, labels) in enumerate(zip(ids, label_sets)):
            # One generator per image: the set is the same whatever order images are made in.
            rgby = render(labels, side, np.random.default_rng([spec.seed, split_no, 1, k]))
            if fmt == "png":
                write_png(d, image_id, rgby)
            elif fmt == "tiff":
                write_tiff(d, image_id, rgby, uint16=k % 2 == 0)
            else:
                write_hpav18_jpeg(d, image_id, rgby)
            progress.update()
        tables[split] = pd.DataFrame({"Id": ids, "Target": decode(encode(label_sets))})
    for name, df in [
        ("train.csv", tables["train"]),
        ("train_tiff.csv", tables["train_tiff"]),
        ("hpav18.csv", tables["hpav18"]),
        ("test_labels.csv", tables["test"]),
        ("sample_submission.csv", tables["test"].assign(Target="0").rename(columns={"Target": "Predicted"})),
    ]:
        with atomic_path(out / name) as tmp:
            df.to_csv(tmp, index=False)
    return tables
