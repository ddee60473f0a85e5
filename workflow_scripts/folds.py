from hpaflow.files import atomic_path
from hpaflow.folds import folds_table
from hpaflow.labels import read_labels
from hpaflow.runlog import logged

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    tables = {name: read_labels(csv, True) for name, csv in zip(p.datasets, snakemake.input)}
    df = folds_table(tables, p.n_folds, p.seed)
    for k, n in df["fold"].value_counts().sort_index().items():
        log.info("fold %d: %d images", k, n)
    with atomic_path(snakemake.output[0]) as tmp:
        df.to_csv(tmp, index=False)
