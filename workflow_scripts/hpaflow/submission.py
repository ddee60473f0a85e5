"""The Kaggle submission: `Id,Predicted`, rows in sample_submission order, labels sorted and space-separated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .files import atomic_path
from .labels import NUM_CLASSES


class SubmissionError(ValueError):
    pass


def make_submission(sample_ids: list[str], ids: np.ndarray, pred: np.ndarray) -> pd.DataFrame:
    """Rows follow sample_ids; every sample Id must be predicted exactly once, labels in 0-27."""
    ids = np.array([str(i) for i in ids], dtype=object)  # plain str: messages quote them as 'x'
    if pred.shape != (len(ids), NUM_CLASSES):
        raise SubmissionError(f"predictions have shape {pred.shape}, expected ({len(ids)}, {NUM_CLASSES})")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise SubmissionError(f"Id {uniq[counts > 1][0]!r} is predicted {counts.max()} times")
    index = pd.Series(np.arange(len(ids)), index=ids)
    missing = [i for i in sample_ids if i not in index.index]
    if missing:
        raise SubmissionError(f"{len(missing)} Id(s) of the sample submission have no prediction, e.g. {missing[0]!r}")
    extra = set(ids) - set(sample_ids)
    if extra:
        raise SubmissionError(
            f"{len(extra)} predicted Id(s) are not in the sample submission, e.g. {sorted(extra)[0]!r}"
        )
    rows = pred[index.loc[list(sample_ids)].to_numpy()]
    labels = [" ".join(str(k) for k in np.flatnonzero(r)) for r in rows]
    return pd.DataFrame({"Id": list(sample_ids), "Predicted": labels})


def check_submission(df: pd.DataFrame, sample_ids: list[str]) -> None:
    """The written form: columns, order, every Id once, labels sorted integers in 0-27."""
    if list(df.columns) != ["Id", "Predicted"]:
        raise SubmissionError(f"columns are {list(df.columns)}, expected ['Id', 'Predicted']")
    if df["Id"].tolist() != list(sample_ids):
        raise SubmissionError("Ids are not those of the sample submission in its order")
    for i, (image_id, s) in enumerate(zip(df["Id"], df["Predicted"].fillna(""))):
        toks = str(s).split()
        if not all(t.isdigit() and int(t) < NUM_CLASSES for t in toks):
            raise SubmissionError(f"row {i + 2} (Id {image_id}): labels {s!r} are not class indices in 0-27")
        if [int(t) for t in toks] != sorted({int(t) for t in toks}):
            raise SubmissionError(f"row {i + 2} (Id {image_id}): labels {s!r} are not sorted and unique")


def write_submission(df: pd.DataFrame, sample_ids: list[str], path: str | Path) -> None:
    check_submission(df, sample_ids)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
