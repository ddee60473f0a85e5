"""Near-duplicate fields across datasets, the groups they form, and what they would leak.

The Kaggle train and test sets and HPAv18 come from one atlas: a field can appear in two of them,
re-encoded, resized or shifted. A pair of fields is a near-duplicate when the pHash of each plane
in `channels` is within `max_distance` bits (hashing.phash, stored in the shards). Train fields
linked by such pairs (and, with group_by_antibody, HPAv18 fields of one antibody) form groups
that folds keep together, so out-of-fold scores are not inflated by a field seen in training.
Antibodies are read only from the Ids of datasets that declare `id_format: hpav18`: a lab's own Ids
may look alike (`7_1_A1_1`) without naming an antibody.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .layout import COLORS

ROW_BLOCK, COL_BLOCK = 256, 4096  # pairs scored per numpy call: 1M uint64 XORs stay in cache
MAX_PAIRS = 10_000_000  # past this a setting is wrong, not the data: stop before the tables grow
# {antibody}_{plate}_{well}_{field}, as HPAv18RBGY_wodpl.csv spells them: plates may be siRNA ones
# (`63683_si35_H1_11`) and a field may carry a crop suffix (`11651_1732_F3_13_cr580610dc203b9`).
HPAV18_ID = re.compile(r"(\d+)_[A-Za-z]*\d+_[A-Za-z]+\d+_\d+(?:_cr[0-9a-f]+)?")
# datasets[].id_format -> the pattern of its Ids whose first group is the antibody (None: no antibody).
ID_FORMATS: dict[str, re.Pattern | None] = {"plain": None, "hpav18": HPAV18_ID}
POLICIES = ("group", "drop_external", "off")  # duplicates.policy
PAIR_COLUMNS = ["id_a", "dataset_a", "id_b", "dataset_b", *(f"d_{c}" for c in COLORS), "kind", "labels_agree"]


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise distance of uint64 hashes, elementwise (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(a, b))


@dataclass(frozen=True)
class DuplicateSettings:
    """Config `duplicates`; defaults live in the schema only (from_config)."""

    max_distance: int
    channels: list[str]
    group_by_antibody: bool
    policy: str  # group | drop_external | off

    @classmethod
    def from_config(cls, config: dict) -> DuplicateSettings:
        d = config["duplicates"]
        if d["policy"] not in POLICIES:
            raise ValueError(f"duplicates.policy: {d['policy']!r} is not one of {', '.join(POLICIES)}")
        return cls(d["max_distance"], list(d["channels"]), d["group_by_antibody"], d["policy"])


def find_pairs(
    hashes: np.ndarray, max_distance: int, channels: list[int], threads: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair i < j whose hashes (N, C) are within max_distance on each of `channels`, exactly:
    returns i, j and their distances on all C planes (P, C). All pairs are scored in blocks with a
    vectorised popcount (117k x 117k in seconds); the first channel selects, the others confirm."""
    n = len(hashes)
    first = hashes[:, channels[0]]

    def rows(start: int) -> tuple[np.ndarray, np.ndarray]:
        a = first[start : start + ROW_BLOCK, None]
        found_i, found_j = [], []
        for col in range(start, n, COL_BLOCK):
            ii, jj = np.nonzero(hamming(a, first[None, col : col + COL_BLOCK]) <= max_distance)
            ii, jj = ii + start, jj + col
            keep = jj > ii
            ii, jj = ii[keep], jj[keep]
            for c in channels[1:]:
                keep = hamming(hashes[ii, c], hashes[jj, c]) <= max_distance
                ii, jj = ii[keep], jj[keep]
            found_i.append(ii)
            found_j.append(jj)
        return np.concatenate(found_i or [np.zeros(0, np.int64)]), np.concatenate(found_j or [np.zeros(0, np.int64)])

    # numpy releases the GIL in its loops: threads share the blocks.
    with ThreadPoolExecutor(max(1, threads)) as pool:
        parts = list(pool.map(rows, range(0, n, ROW_BLOCK)))
    i = np.concatenate([p[0] for p in parts] or [np.zeros(0, np.int64)]).astype(np.int64)
    j = np.concatenate([p[1] for p in parts] or [np.zeros(0, np.int64)]).astype(np.int64)
    if len(i) > MAX_PAIRS:
        raise ValueError(
            f"{len(i):,} near-duplicate pairs within {max_distance} bits: far more than copies can explain "
            "(unrelated fields differ in ~32 bits); lower duplicates.max_distance or add duplicates.channels"
        )
    order = np.lexsort((j, i))
    i, j = i[order], j[order]
    return i, j, hamming(hashes[i], hashes[j]).astype(np.int64).reshape(len(i), hashes.shape[1])


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of n nodes joined by edges (i, j): each node's smallest member index."""
    parent = np.arange(n)

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    for a, b in zip(i.tolist(), j.tolist()):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(x) for x in range(n)], np.int64)


def antibody(image_id: str) -> str | None:
    """The antibody of an HPAv18 Id (`{antibody}_{plate}_{well}_{field}`); None for other Ids."""
    m = HPAV18_ID.fullmatch(image_id)
    return m.group(1) if m else None


@dataclass
class Fields:
    """One row per field of view: what the pair search and the groups need."""

    ids: np.ndarray  # str (N,)
    datasets: np.ndarray  # str (N,)
    train: np.ndarray  # bool (N,): a train dataset's field (else test)
    hashes: np.ndarray  # uint64 (N, 4)
    labels: np.ndarray  # uint8 (N, 28); zeros for test fields


def pairs_table(fields: Fields, settings: DuplicateSettings, threads: int = 1) -> pd.DataFrame:
    """duplicates.csv: each near-duplicate pair that involves a train field (test-test pairs leak
    nothing): Ids and datasets (the train field first), per-plane distances, train-train or
    train-test, and for train-train whether the two label sets agree."""
    channels = [COLORS.index(c) for c in settings.channels]
    i, j, d = find_pairs(fields.hashes, settings.max_distance, channels, threads)
    keep = fields.train[i] | fields.train[j]
    i, j, d = i[keep], j[keep], d[keep]
    swap = ~fields.train[i]  # train field first
    i, j = np.where(swap, j, i), np.where(swap, i, j)
    both = fields.train[i] & fields.train[j]
    agree = (fields.labels[i] == fields.labels[j]).all(1)
    table = pd.DataFrame(
        {
            "id_a": fields.ids[i],
            "dataset_a": fields.datasets[i],
            "id_b": fields.ids[j],
            "dataset_b": fields.datasets[j],
            **{f"d_{c}": d[:, k] for k, c in enumerate(COLORS)},
            "kind": np.where(both, "train-train", "train-test"),
            "labels_agree": pd.array(np.where(both, agree, pd.NA), dtype="boolean"),
        },
        columns=PAIR_COLUMNS,
    )
    return table


def antibodies(ids: np.ndarray, datasets: np.ndarray, id_formats: Mapping[str, str]) -> np.ndarray:
    """The antibody of each row (object array, None where there is none): read from the Id only for a
    dataset whose `id_format` (default plain) names an antibody pattern; an Id that does not follow
    its dataset's declared pattern is an error naming both."""
    out = np.full(len(ids), None, object)
    for name, fmt in id_formats.items():
        if fmt not in ID_FORMATS:
            raise ValueError(f"dataset {name}: id_format {fmt!r} is not one of {', '.join(ID_FORMATS)}")
        pattern = ID_FORMATS[fmt]
        if pattern is None:
            continue
        for r in np.flatnonzero(datasets == name):
            m = pattern.fullmatch(str(ids[r]))
            if m is None:
                raise ValueError(
                    f"dataset {name} (id_format: {fmt}): Id {str(ids[r])!r} is not "
                    "{antibody}_{plate}_{well}_{field}; set its id_format to plain if its Ids name no antibody"
                )
            out[r] = m.group(1)
    return out


def train_groups(ids: np.ndarray, pairs: pd.DataFrame, antibody_of: np.ndarray | None = None) -> np.ndarray:
    """Group of each train Id (the folds-table order): train-train pairs joined into connected
    components, with the rows of one antibody (`antibody_of`, from `antibodies`; None joins none)
    joined too; a group is numbered by its first row."""
    row = pd.Series(np.arange(len(ids)), index=ids)
    tt = pairs[pairs["kind"] == "train-train"]
    tt = tt[tt["id_a"].isin(row.index) & tt["id_b"].isin(row.index)]
    i, j = [row[tt["id_a"]].to_numpy()], [row[tt["id_b"]].to_numpy()]
    if antibody_of is not None:
        first_of: dict[str, int] = {}
        for r, ab in enumerate(antibody_of):
            if ab is not None:
                i.append(np.array([first_of.setdefault(ab, r)]))
                j.append(np.array([r]))
    return components(len(ids), np.concatenate(i).astype(np.int64), np.concatenate(j).astype(np.int64))


def external_copies(table: pd.DataFrame, pairs: pd.DataFrame, external: set[str]) -> np.ndarray:
    """Rows of the folds table (Id, dataset) from an external dataset that duplicate a field of a
    non-external train dataset: what `drop_external` leaves out."""
    tt = pairs[pairs["kind"] == "train-train"]
    a_ext, b_ext = tt["dataset_a"].isin(external), tt["dataset_b"].isin(external)
    copies = set(tt.loc[a_ext & ~b_ext, "id_a"]) | set(tt.loc[b_ext & ~a_ext, "id_b"])
    return (table["dataset"].isin(external) & table["Id"].isin(copies)).to_numpy()


def leak_report(pairs: pd.DataFrame, folds: pd.DataFrame, settings: DuplicateSettings) -> dict:
    """metrics.json `duplicates`: what the pair search found and what the folds leave of it."""
    tt = pairs[pairs["kind"] == "train-train"]
    fold = pd.Series(folds["fold"].to_numpy(), index=folds["Id"])
    fa, fb = fold.reindex(tt["id_a"]).to_numpy(), fold.reindex(tt["id_b"]).to_numpy()
    used = (fa >= 0) & (fb >= 0)
    ids = pd.unique(pd.concat([tt["id_a"], tt["id_b"]]))
    index = pd.Series(np.arange(len(ids)), index=ids)
    comp = components(len(ids), index[tt["id_a"]].to_numpy(), index[tt["id_b"]].to_numpy())
    groups = folds["group"] if "group" in folds else pd.Series(np.arange(len(folds)))
    sizes = groups.value_counts()
    return {
        "policy": settings.policy,
        "max_distance": settings.max_distance,
        "channels": settings.channels,
        "train_train_pairs": int(len(tt)),
        "train_train_groups": int(len(np.unique(comp))),
        "train_test_pairs": int((pairs["kind"] == "train-test").sum()),
        "label_conflicts": int((tt["labels_agree"] == False).sum()),  # noqa: E712 (a nullable boolean column)
        "pairs_split_across_folds": int((used & (fa != fb)).sum()),
        "dropped_external": int((folds["fold"] < 0).sum()),
        "fold_groups_with_several_fields": int((sizes > 1).sum()),
        "largest_fold_group": int(sizes.max()) if len(sizes) else 0,
    }


def class_spread(labels: np.ndarray, fold: np.ndarray, n_folds: int) -> np.ndarray:
    """Per class, the most minus the fewest images any fold holds (rows with fold -1 left out)."""
    counts = np.stack([labels[fold == k].sum(0) for k in range(n_folds)])
    return (counts.max(0) - counts.min(0)).astype(np.int64)
