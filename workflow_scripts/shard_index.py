from hpaflow.runlog import logged
from hpaflow.shards import write_index

with logged(snakemake.log[0]) as log:
    index = write_index(snakemake.output[0], list(snakemake.input))
    log.info("%s: %d shards, %d rows", snakemake.wildcards.dataset, len(index["shards"]), sum(index["rows"]))
