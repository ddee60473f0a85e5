from hpaflow.layout import indexed_shards
from hpaflow.plots import transfer_neighbours
from hpaflow.runlog import logged

with logged(snakemake.log[0]):
    transfer_neighbours(
        snakemake.input.neighbours,
        snakemake.input.metrics,
        indexed_shards(list(snakemake.input.shards)),
        snakemake.output[0],
    )
