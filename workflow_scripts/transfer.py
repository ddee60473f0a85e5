from hpaflow.contracts import job_config
from hpaflow.runlog import logged
from hpaflow.transfer import TransferSettings, run_transfer

with logged(snakemake.log[0]):
    config = job_config("transfer", snakemake.params.decides, snakemake.config)
    run_transfer(
        snakemake.input.embeddings,
        snakemake.input.ensemble,
        snakemake.input.submission,
        TransferSettings.from_config(config),
        snakemake.output.submission,
        snakemake.output.neighbours,
        snakemake.output.metrics,
    )
