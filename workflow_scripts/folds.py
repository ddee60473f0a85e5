import numpy as np
import pandas as pd

from hpaflow.duplicates import DuplicateSettings, class_spread
from hpaflow.files import atomic_path
from hpaflow.folds import folds_table
from hpaflow.labels import read_labels
from hpaflow.runlog import logged

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    settings = DuplicateSettings.from_config(p.config)
    tables = {name: read_labels(csv, True) for name, csv in zip(p.datasets, snakemake.input.labels)}
    pairs = (
        pd.read_csv(snakemake.input.duplicates, dtype={"id_a": str, "id_b": str}) if settings.policy != "off" else None
    )
    external = frozenset(d["name"] for d in p.config["datasets"] if d["external"])
    df = folds_table(tables, p.n_folds, p.seed, pairs, settings, external)
    for k, n in df["fold"].value_counts().sort_index().items():
        log.info("fold %d: %d images", k, n) if k >= 0 else log.info("left out (drop_external): %d images", n)
    sizes = df["group"].value_counts()
    log.info(
        "policy %s: %d groups of several images (largest %d)", settings.policy, int((sizes > 1).sum()), sizes.max()
    )
    labels = np.concatenate([t.labels for t in tables.values()])
    spread = class_spread(labels, df["fold"].to_numpy(), p.n_folds)
    log.info(
        "per-class spread across folds (most - fewest images): max %d, per class %s", spread.max(), spread.tolist()
    )
    with atomic_path(snakemake.output[0]) as tmp:
        df.to_csv(tmp, index=False)
