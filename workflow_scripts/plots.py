from hpaflow.plots import all_figures
from hpaflow.runlog import logged

with logged(snakemake.log[0]):
    p = snakemake.params
    keys = [(m, k) for m in p.models for k in p.folds]
    all_figures(
        snakemake.input.metrics,
        snakemake.input.ensemble,
        dict(zip(keys, snakemake.input.curves)),
        list(snakemake.input.shards),
        dict(snakemake.output.items()),
        snakemake.input.duplicates,
        list(snakemake.input.all_shards),
    )
