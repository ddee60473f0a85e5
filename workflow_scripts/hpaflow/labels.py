"""Label tables: reading and checking `Id,Target` csvs, one-hot encoding, class names."""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

NUM_CLASSES = 28
CLASS_NAMES = (
    "Nucleoplasm",
    "Nuclear membrane",
    "Nucleoli",
    "Nucleoli fibrillar center",
    "Nuclear speckles",
    "Nuclear bodies",
    "Endoplasmic reticulum",
    "Golgi apparatus",
    "Peroxisomes",
    "Endosomes",
    "Lysosomes",
    "Intermediate filaments",
    "Actin filaments",
    "Focal adhesion sites",
    "Microtubules",
    "Microtubule ends",
    "Cytokinetic bridge",
    "Mitotic spindle",
    "Microtubule organizing center",
    "Centrosome",
    "Lipid droplets",
    "Plasma membrane",
    "Cell junctions",
    "Mitochondria",
    "Aggresome",
    "Cytosol",
    "Cytoplasmic bodies",
    "Rods & rings",
)
assert len(CLASS_NAMES) == NUM_CLASSES


class LabelError(ValueError):
    """A label csv that is empty, malformed, or holds a bad Id or label."""


@dataclass(frozen=True)
class LabelTable:
    """Ids in csv order and, for training data, their labels as uint8 (N, 28)."""

    path: str
    ids: tuple[str, ...]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.ids)


def parse_target(value: object, where: str) -> list[int]:
    """Space-separated class indices, each in 0-27; `where` names the row for errors."""
    if not isinstance(value, str) or not value.strip():
        raise LabelError(f"{where}: empty Target")
    out = []
    for tok in value.split():
        if not tok.isdigit() or int(tok) >= NUM_CLASSES:
            raise LabelError(f"{where}: label {tok!r} is not a class index in 0-{NUM_CLASSES - 1}")
        out.append(int(tok))
    return sorted(set(out))


def encode(label_sets: list[list[int]]) -> np.ndarray:
    y = np.zeros((len(label_sets), NUM_CLASSES), np.uint8)
    for i, s in enumerate(label_sets):
        y[i, s] = 1
    return y


def decode(y: np.ndarray) -> list[str]:
    """One-hot rows back to sorted space-separated strings (the csv and submission form)."""
    return [" ".join(str(k) for k in np.flatnonzero(row)) for row in y]


def check_field_counts(path: Path) -> None:
    """Every row has as many fields as the header. pandas would otherwise take the extra leading
    fields of rows such as `a,1,2` (an unquoted multi-label Target) as their index, silently."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = csv.reader(f)
        n_header = len(next(rows, []))
        for line, row in enumerate(rows, start=2):
            if row and len(row) != n_header:
                hint = (
                    " (labels of one image are separated by spaces: `Id,Target` then `a,1 2`)"
                    if len(row) > n_header
                    else ""
                )
                raise LabelError(f"{path}: line {line}: {len(row)} fields, the header has {n_header}{hint}")


@functools.cache
def read_labels(path: str, with_targets: bool) -> LabelTable:
    """Read and check a label csv. `with_targets` False reads only `Id` (e.g. sample_submission.csv).

    Rows are reported as csv line numbers (the header is line 1).
    """
    p = Path(path)
    if not p.is_file():
        raise LabelError(f"{path}: label csv does not exist")
    check_field_counts(p)
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise LabelError(f"{path}: empty csv (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise LabelError(f"{path}: not a readable csv ({e})") from None
    if "Id" not in df.columns:
        raise LabelError(f"{path}: no 'Id' column (columns: {', '.join(df.columns)})")
    if with_targets and "Target" not in df.columns:
        raise LabelError(f"{path}: no 'Target' column (columns: {', '.join(df.columns)})")
    if df.empty:
        raise LabelError(f"{path}: csv has a header but no rows")
    ids = df["Id"].str.strip()
    for i, image_id in enumerate(ids):
        if not image_id or "/" in image_id or image_id.startswith("."):
            raise LabelError(f"{path}: line {i + 2}: invalid Id {image_id!r}")
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        first = dup.iloc[0]
        lines = [str(i + 2) for i in np.flatnonzero(ids.to_numpy() == first)]
        raise LabelError(
            f"{path}: duplicate Id {first!r} on lines {', '.join(lines)} ({dup.nunique()} duplicated Id(s) in all)"
        )
    labels = None
    if with_targets:
        sets = [
            parse_target(t, f"{path}: line {i + 2} (Id {image_id})")
            for i, (image_id, t) in enumerate(zip(ids, df["Target"]))
        ]
        labels = encode(sets)
    return LabelTable(path=str(path), ids=tuple(ids), labels=labels)
