from hpaflow.classify import run_classify
from hpaflow.runlog import logged

with logged(snakemake.log[0]):
    run_classify(
        list(snakemake.input.shards),
        snakemake.input.package,
        snakemake.output[0],
        snakemake.threads,
        snakemake.params.batch_size,
    )
