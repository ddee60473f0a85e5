from hpaflow.files import atomic_path
from hpaflow.layout import indexed_shards
from hpaflow.plots import transfer_neighbours
from hpaflow.runlog import logged
from hpaflow.summary import transfer_headline

with logged(snakemake.log[0]) as log:
    transfer_neighbours(
        snakemake.input.neighbours,
        snakemake.input.metrics,
        indexed_shards(list(snakemake.input.shards)),
        snakemake.output.figure,
    )
    line = transfer_headline(snakemake.input.metrics)
    with atomic_path(snakemake.output.headline) as tmp:
        tmp.write_text(line + "\n")
    log.info(line)
