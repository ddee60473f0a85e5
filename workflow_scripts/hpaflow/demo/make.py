"""The whole demo set (rule demo_data): every split, its csvs last and atomically."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
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
    dup_external: int
    dup_conflicts: int
    dup_test: int
    antibody_fields: int
    siblings: int

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


def planted(spec: DemoSpec, split: str) -> dict[int, int]:
    """Field k of `split` -> the train field it copies: the first dup_external HPAv18 fields copy train
    fields 0, 1, ...; the first dup_test test fields the last train fields (as many as the sizes allow)."""
    n_ext = min(spec.dup_external, spec.n_jpg, spec.n_train // 2)
    if split == "hpav18":
        return {k: k for k in range(n_ext)}
    if split == "test":
        return {k: spec.n_train - 1 - k for k in range(min(spec.dup_test, spec.n_test, spec.n_train - n_ext))}
    return {}


def shifted_copy(rgby: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """A field as another acquisition stored it: resized to `side` and shifted by up to 1% of it (1 px at least)."""
    out = cv2.resize(rgby, (side, side), interpolation=cv2.INTER_LINEAR)
    reach = max(1, round(side * 0.01))
    dy, dx = (int(v) for v in rng.integers(-reach, reach + 1, 2))
    shift = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(out, shift, (side, side), borderMode=cv2.BORDER_REFLECT)


def make_demo(out_dir: str | Path, spec: DemoSpec) -> dict[str, pd.DataFrame]:
    """Write the demo set under out_dir; returns the label table of each split.

    Layout: train/, test/ (Kaggle PNGs), train.csv, sample_submission.csv, test_labels.csv
    (the hidden truth, never read by the workflow), train_tiff/ + train_tiff.csv (full-size
    style TIFFs, alternately uint16 and uint8), hpav18/ + hpav18.csv (HPAv18-style RGB JPEGs;
    `antibody_fields` fields per antibody share its Id prefix and label set), and
    duplicates_truth.csv: the planted near-duplicates (`planted`), HPAv18 fields that are shifted,
    resized, re-encoded copies of train fields (the first dup_conflicts with another label set)
    and test fields copied from train fields. Csvs are written last and atomically: they mark a
    complete set.
    """
    out = Path(out_dir)
    tables, train_sets, truth = {}, [], []
    for split_no, (split, (sub, make_id, fmt, side_attr, n_attr)) in enumerate(SPLITS.items()):
        n, side = getattr(spec, n_attr), getattr(spec, side_attr)
        d = out / sub
        d.mkdir(parents=True, exist_ok=True)
        label_rng = np.random.default_rng([spec.seed, split_no, 0])
        label_sets = sample_label_sets(n, label_rng, spec.prior_power)
        copies = planted(spec, split)
        ids, seen = [], set()
        while len(ids) < n:
            if split == "hpav18":  # a planted copy: its own antibody; the rest `antibody_fields` per antibody
                k = len(ids)
                group = k if k in copies else len(copies) + (k - len(copies)) // spec.antibody_fields
                i = make_id(label_rng, antibody=1000 + 7 * group)
            else:
                i = make_id(label_rng)
            if i not in seen:
                seen.add(i)
                ids.append(i)
        if split == "hpav18":
            for k in range(len(copies), n):  # an antibody's fields show one protein: one label set
                label_sets[k] = label_sets[
                    len(copies) + (k - len(copies)) // spec.antibody_fields * spec.antibody_fields
                ]
        for k, src in copies.items():
            changed = split == "hpav18" and k < spec.dup_conflicts
            label_sets[k] = train_sets[src]
            while changed and list(label_sets[k]) == train_sets[src]:
                label_sets[k] = sample_label_sets(1, label_rng, spec.prior_power)[0]
            kind = "train-test" if split == "test" else "train-train"
            truth.append((tables["train"]["Id"][src], "train", ids[k], split, kind, changed))
        progress = Progress(n, f"demo {split}", "images", log=log)
        for k, (image_id, labels) in enumerate(zip(ids, label_sets)):
            # One generator per image: the set is the same whatever order images are made in.
            rng = np.random.default_rng([spec.seed, split_no, 1, k])
            if k in copies:
                src_rng = np.random.default_rng([spec.seed, 0, 1, copies[k]])
                rgby = render(train_sets[copies[k]], spec.size, src_rng)
                rgby = rgby if split == "test" else shifted_copy(rgby, side, rng)
            else:
                rgby = render(labels, side, rng)
            if fmt == "png":
                write_png(d, image_id, rgby)
            elif fmt == "tiff":
                write_tiff(d, image_id, rgby, uint16=k % 2 == 0)
            else:
                write_hpav18_jpeg(d, image_id, rgby)
            progress.update()
        tables[split] = pd.DataFrame({"Id": ids, "Target": decode(encode(label_sets))})
        if split == "train":
            train_sets = [list(t) for t in label_sets]
    tables["duplicates_truth"] = pd.DataFrame(
        truth, columns=["id_a", "split_a", "id_b", "split_b", "kind", "label_changed"]
    )
    for name, df in [
        ("train.csv", tables["train"]),
        ("train_tiff.csv", tables["train_tiff"]),
        ("hpav18.csv", tables["hpav18"]),
        ("test_labels.csv", tables["test"]),
        ("duplicates_truth.csv", tables["duplicates_truth"]),
        ("sample_submission.csv", tables["test"].assign(Target="0").rename(columns={"Target": "Predicted"})),
    ]:
        with atomic_path(out / name) as tmp:
            df.to_csv(tmp, index=False)
    return tables
