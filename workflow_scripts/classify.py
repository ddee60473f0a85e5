from hpaflow.classify import run_classify
from hpaflow.runlog import logged

with logged(snakemake.log[0]):
    run_classify(
        list(snakemake.input.shards),
        snakemake.params.package["path"],
        snakemake.output[0],
        snakemake.threads,
        snakemake.config["classify"]["batch_size"],  # steers only (hpaflow.contracts)
        transfer=snakemake.params.decides["classify"]["transfer"],
    )
