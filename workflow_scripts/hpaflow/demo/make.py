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
from .patterns import Look, draw_look, render
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


# Entropy tag of the antibody looks' generators: [seed, ANTIBODY, group] never meets a split's [seed, split_no, ...].
ANTIBODY = 1000


def planted(spec: DemoSpec, split: str) -> dict[int, int]:
    """Field k of `split` -> the train field it copies: the first dup_external HPAv18 fields copy train
    fields 0, 1, ...; the first dup_test test fields the last train fields (as many as the sizes allow)."""
    n_ext = min(spec.dup_external, spec.n_jpg, spec.n_train // 2)
    if split == "hpav18":
        return {k: k for k in range(n_ext)}
    if split == "test":
        return {k: spec.n_train - 1 - k for k in range(min(spec.dup_test, spec.n_test, spec.n_train - n_ext))}
    return {}


def antibody_group(spec: DemoSpec, k: int) -> int:
    """The antibody group of HPAv18 field k: a planted copy is its own; the rest come `antibody_fields` a group."""
    n_copies = len(planted(spec, "hpav18"))
    return k if k < n_copies else n_copies + (k - n_copies) // spec.antibody_fields


def antibody_number(group: int) -> int:
    """The antibody of a group as its HPAv18 Ids spell it."""
    return 1000 + 7 * group


def antibody_groups(spec: DemoSpec) -> list[int]:
    """The antibody groups that are not planted copies, in order (the ones test siblings may belong to)."""
    n_copies = len(planted(spec, "hpav18"))
    return list(range(n_copies, antibody_group(spec, spec.n_jpg - 1) + 1)) if spec.n_jpg > n_copies else []


def antibody_look(spec: DemoSpec, group: int) -> Look:
    """The look of antibody `group`: from its own generator, whatever order the fields are made in."""
    return draw_look(np.random.default_rng([spec.seed, ANTIBODY, group]))


def siblings(spec: DemoSpec) -> dict[int, int]:
    """Test field k -> the antibody group it is a sibling of: the siblings test fields right after the planted
    copies (as many as n_test allows), sibling j of group j % (number of non-copy groups)."""
    groups = antibody_groups(spec)
    if spec.siblings and not groups:
        raise ValueError(
            f"demo: siblings={spec.siblings} needs HPAv18 fields that are not planted copies "
            f"(n_jpg={spec.n_jpg} are all copies; dup_external={spec.dup_external})"
        )
    first = len(planted(spec, "test"))
    n = min(spec.siblings, spec.n_test - first)
    return {first + j: groups[j % len(groups)] for j in range(n)}


def acquired(labels: list[int], spec: DemoSpec, side: int, rng: np.random.Generator, look: Look | None) -> np.ndarray:
    """A field as one microscope acquires it (drawn at spec.size, its noise at that scale) and its source stores
    it (resized to `side`): so every source's fields reach the shards with the same noise, and an antibody's
    HPAv18 fields and its test siblings differ by the field of view, not by how they were drawn."""
    rgby = render(labels, spec.size, rng, look)
    return rgby if side == spec.size else cv2.resize(rgby, (side, side), interpolation=cv2.INTER_LINEAR)


def shifted_copy(rgby: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """A field as another acquisition stored it: resized to `side` and shifted by up to 1% of it (1 px at least)."""
    out = cv2.resize(rgby, (side, side), interpolation=cv2.INTER_LINEAR)
    reach = max(1, round(side * 0.01))
    dy, dx = (int(v) for v in rng.integers(-reach, reach + 1, 2))
    shift = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(out, shift, (side, side), borderMode=cv2.BORDER_REFLECT)


@dataclass
class _Plan:
    """Ids, label sets and planted truth of one split, before any image is drawn."""

    ids: list[str]
    label_sets: list[list[int]]
    truth: list[tuple]


def _plan(spec: DemoSpec, split: str, plans: dict[str, _Plan]) -> _Plan:
    """Ids and label sets of `split` (train must be planned first; test needs hpav18 for its siblings)."""
    split_no = list(SPLITS).index(split)
    make_id, n = SPLITS[split][1], getattr(spec, SPLITS[split][4])
    label_rng = np.random.default_rng([spec.seed, split_no, 0])
    label_sets = sample_label_sets(n, label_rng, spec.prior_power)
    copies = planted(spec, split)
    ids, seen = [], set()
    while len(ids) < n:
        # HPAv18 Ids name their antibody: a planted copy is its own, the rest `antibody_fields` an antibody.
        if split == "hpav18":
            i = make_id(label_rng, antibody=antibody_number(antibody_group(spec, len(ids))))
        else:
            i = make_id(label_rng)
        if i not in seen:
            seen.add(i)
            ids.append(i)
    if split == "hpav18":
        for k in range(len(copies), n):  # an antibody's fields show one protein: one label set
            label_sets[k] = label_sets[len(copies) + (antibody_group(spec, k) - len(copies)) * spec.antibody_fields]
    if split == "test":  # a sibling shows its antibody's protein (no draw from label_rng: the Ids stay the same)
        first = {antibody_group(spec, k): k for k in reversed(range(spec.n_jpg))}
        for k, group in siblings(spec).items():
            label_sets[k] = list(plans["hpav18"].label_sets[first[group]])
    truth = []
    train_sets = plans["train"].label_sets if copies else []
    for k, src in copies.items():
        changed = split == "hpav18" and k < spec.dup_conflicts
        label_sets[k] = train_sets[src]
        while changed and list(label_sets[k]) == list(train_sets[src]):
            label_sets[k] = sample_label_sets(1, label_rng, spec.prior_power)[0]
        kind = "train-test" if split == "test" else "train-train"
        truth.append((plans["train"].ids[src], "train", ids[k], split, kind, changed))
    return _Plan(ids, [list(t) for t in label_sets], truth)


def field_look(spec: DemoSpec, split: str, k: int) -> Look | None:
    """The antibody look field k of `split` is drawn with: its antibody's for HPAv18 fields (not planted copies)
    and test siblings; None for every other field (it draws its own: each is its own antibody)."""
    if split == "hpav18" and k >= len(planted(spec, "hpav18")):
        return antibody_look(spec, antibody_group(spec, k))
    if split == "test" and k in (sib := siblings(spec)):
        return antibody_look(spec, sib[k])
    return None


def _write_images(out: Path, spec: DemoSpec, split: str, plan: _Plan, train_sets: list[list[int]]) -> None:
    """Draw and write every image of `split` (planted copies from their train field's generator)."""
    sub, _, fmt, side_attr, _ = SPLITS[split]
    split_no, side = list(SPLITS).index(split), getattr(spec, side_attr)
    d = out / sub
    d.mkdir(parents=True, exist_ok=True)
    copies = planted(spec, split)
    progress = Progress(len(plan.ids), f"demo {split}", "images", log=log)
    for k, (image_id, labels) in enumerate(zip(plan.ids, plan.label_sets)):
        # One generator per image: the set is the same whatever order images are made in.
        rng = np.random.default_rng([spec.seed, split_no, 1, k])
        if k in copies:  # the train field exactly as train drew it (its own look)
            src_rng = np.random.default_rng([spec.seed, 0, 1, copies[k]])
            rgby = render(train_sets[copies[k]], spec.size, src_rng)
            rgby = rgby if split == "test" else shifted_copy(rgby, side, rng)
        else:
            rgby = acquired(labels, spec, side, rng, field_look(spec, split, k))
        if fmt == "png":
            write_png(d, image_id, rgby)
        elif fmt == "tiff":
            write_tiff(d, image_id, rgby, uint16=k % 2 == 0)
        else:
            write_hpav18_jpeg(d, image_id, rgby)
        progress.update()


def siblings_truth(spec: DemoSpec, plans: dict[str, _Plan]) -> pd.DataFrame:
    """One row per sibling test field: its antibody, label set and the antibody's HPAv18 Ids."""
    hp = plans["hpav18"]
    rows = []
    for k, group in siblings(spec).items():
        members = [hp.ids[i] for i in range(spec.n_jpg) if antibody_group(spec, i) == group]
        target = " ".join(map(str, sorted(plans["test"].label_sets[k])))
        rows.append((plans["test"].ids[k], antibody_number(group), target, " ".join(members)))
    return pd.DataFrame(rows, columns=["Id", "antibody", "Target", "hpav18_ids"])


def make_demo(out_dir: str | Path, spec: DemoSpec) -> dict[str, pd.DataFrame]:
    """Write the demo set under out_dir; returns the label table of each split (and of each truth csv).

    Layout: train/, test/ (Kaggle PNGs), train.csv, sample_submission.csv, test_labels.csv
    (the hidden truth, never read by the workflow), train_tiff/ + train_tiff.csv (full-size
    style TIFFs, alternately uint16 and uint8), hpav18/ + hpav18.csv (HPAv18-style RGB JPEGs;
    `antibody_fields` fields per antibody share its Id prefix, label set and look: `antibody_look`),
    duplicates_truth.csv: the planted near-duplicates (`planted`), HPAv18 fields that are shifted,
    resized, re-encoded copies of train fields (the first dup_conflicts with another label set)
    and test fields copied from train fields, and siblings_truth.csv: the test fields right after
    the planted test copies that are antibody siblings of HPAv18 fields (`siblings`: the antibody's
    label set and look on other cells), columns Id (test Id), antibody (as its HPAv18 Ids spell it),
    Target (the label set, space-separated) and hpav18_ids (the antibody's HPAv18 Ids, space-separated);
    header only when siblings is 0. Every other field is its own antibody (draws its own look). Only
    the sibling test fields depend on `siblings`: every other file is byte-identical whatever its value.
    Csvs are written last and atomically: they mark a complete set.
    """
    out = Path(out_dir)
    plans: dict[str, _Plan] = {}
    for split in ("train", "hpav18", "test", "train_tiff"):  # the order their label sets depend on each other
        plans[split] = _plan(spec, split, plans)
    for split in SPLITS:
        _write_images(out, spec, split, plans[split], plans["train"].label_sets)
    tables = {split: pd.DataFrame({"Id": p.ids, "Target": decode(encode(p.label_sets))}) for split, p in plans.items()}
    tables = {split: tables[split] for split in SPLITS}
    truth = [row for split in SPLITS for row in plans[split].truth]
    tables["duplicates_truth"] = pd.DataFrame(
        truth, columns=["id_a", "split_a", "id_b", "split_b", "kind", "label_changed"]
    )
    tables["siblings_truth"] = siblings_truth(spec, plans)
    for name, df in [
        ("train.csv", tables["train"]),
        ("train_tiff.csv", tables["train_tiff"]),
        ("hpav18.csv", tables["hpav18"]),
        ("test_labels.csv", tables["test"]),
        ("duplicates_truth.csv", tables["duplicates_truth"]),
        ("siblings_truth.csv", tables["siblings_truth"]),
        ("sample_submission.csv", tables["test"].assign(Target="0").rename(columns={"Target": "Predicted"})),
    ]:
        with atomic_path(out / name) as tmp:
            df.to_csv(tmp, index=False)
    return tables
