import numpy as np

from hpaflow.duplicates import DuplicateSettings, class_spread, pairs_table
from hpaflow.files import atomic_path
from hpaflow.folds import folds_table
from hpaflow.labels import read_labels
from hpaflow.layout import indexed_shards
from hpaflow.runlog import logged
from hpaflow.shards import read_fields

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    d = p.duplicates
    settings = None if d["policy"] == "off" else DuplicateSettings.from_config({"duplicates": d})
    tables = {name: read_labels(csv, True) for name, csv in zip(p.datasets, snakemake.input.labels)}
    # Train-train pairs from the train shards' stored pHashes (as rule duplicates finds them): the
    # folds do not depend on the test set.
    pairs = (
        pairs_table(read_fields(indexed_shards(list(snakemake.input.shards))), settings, snakemake.threads)
        if settings
        else None
    )
    external, id_formats = frozenset(d.get("external", [])), d.get("id_format", {})
    df = folds_table(tables, p.n_folds, p.seed, pairs, settings, external, id_formats)
    for k, n in df["fold"].value_counts().sort_index().items():
        log.info("fold %d: %d images", k, n) if k >= 0 else log.info("left out (drop_external): %d images", n)
    sizes = df["group"].value_counts()
    log.info("policy %s: %d groups of several images (largest %d)", d["policy"], int((sizes > 1).sum()), sizes.max())
    labels = np.concatenate([t.labels for t in tables.values()])
    spread = class_spread(labels, df["fold"].to_numpy(), p.n_folds)
    log.info(
        "per-class spread across folds (most - fewest images): max %d, per class %s", spread.max(), spread.tolist()
    )
    with atomic_path(snakemake.output[0]) as tmp:
        df.to_csv(tmp, index=False)
