from hpaflow.contracts import members
from hpaflow.layout import indexed_shards
from hpaflow.plots import all_figures
from hpaflow.runlog import logged

with logged(snakemake.log[0]):
    all_figures(
        snakemake.input.metrics,
        snakemake.input.ensemble,
        members(snakemake.input.items(), "curves"),
        indexed_shards(list(snakemake.input.shards)),
        dict(snakemake.output.items()),
        snakemake.input.duplicates,
        indexed_shards(list(snakemake.input.all_shards)),
    )
