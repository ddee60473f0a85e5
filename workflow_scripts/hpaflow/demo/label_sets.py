"""Label sets drawn from the real competition's label-set frequencies (label_sets.tsv)."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pandas as pd

LABEL_SETS_TSV = Path(__file__).with_name("label_sets.tsv")


def count_label_sets(train_csv: str | Path) -> dict[str, int]:
    """How often each label set (sorted, space-separated) occurs in a competition train.csv."""
    df = pd.read_csv(train_csv, dtype=str)
    return dict(collections.Counter(" ".join(sorted(t.split(), key=int)) for t in df["Target"]))


def load_label_sets() -> tuple[list[list[int]], np.ndarray]:
    df = pd.read_csv(LABEL_SETS_TSV, sep="\t", comment="#", dtype={"labels": str})
    sets = [[int(k) for k in s.split()] for s in df["labels"]]
    return sets, df["count"].to_numpy(np.float64)


def sample_label_sets(n: int, rng: np.random.Generator, prior_power: float = 1.0) -> list[list[int]]:
    """Draw n label sets with probability proportional to count**prior_power.

    1.0 keeps the competition's distribution; 0.0 makes every observed set equally likely
    (a flatter prior for a quick smoke test).
    """
    sets, counts = load_label_sets()
    p = counts**prior_power
    idx = rng.choice(len(sets), size=n, p=p / p.sum())
    return [sets[i] for i in idx]
