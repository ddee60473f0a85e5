from hpaflow.classify import gallery
from hpaflow.runlog import logged

with logged(snakemake.log[0]):
    gallery(snakemake.input.predictions, list(snakemake.input.shards), snakemake.output[0])
