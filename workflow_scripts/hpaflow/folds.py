"""Multilabel-stratified folds over every train Id of every train dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from .labels import LabelTable


def assign_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold index (0..n_folds-1) per row, stratified on all 28 classes jointly."""
    if len(labels) < n_folds:
        raise ValueError(f"{len(labels)} train images cannot be split into {n_folds} folds")
    fold = np.full(len(labels), -1, np.int16)
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, val) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        fold[val] = k
    assert (fold >= 0).all()
    return fold


def folds_table(tables: dict[str, LabelTable], n_folds: int, seed: int) -> pd.DataFrame:
    """`Id, dataset, fold` for the train datasets in config order; Ids must be unique across them."""
    frames = [pd.DataFrame({"Id": t.ids, "dataset": name}) for name, t in tables.items()]
    df = pd.concat(frames, ignore_index=True)
    dup = df[df["Id"].duplicated(keep=False)]
    if len(dup):
        first = dup["Id"].iloc[0]
        where = ", ".join(dup.loc[dup["Id"] == first, "dataset"])
        raise ValueError(f"Id {first!r} appears in more than one train dataset ({where}); "
                         "Ids must be unique across train datasets")
    labels = np.concatenate([t.labels for t in tables.values()])
    df["fold"] = assign_folds(labels, n_folds, seed)
    return df
