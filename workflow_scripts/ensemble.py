from hpaflow import h5names as h5n
from hpaflow.contracts import job_config, members
from hpaflow.duplicates import DuplicateSettings, leak_report
from hpaflow.ensemble import EnsembleSettings, run_ensemble
from hpaflow.runlog import logged
from hpaflow.summary import headline

with logged(snakemake.log[0]) as log:
    config = job_config("ensemble", snakemake.params.decides, snakemake.config)
    pairs = h5n.read_duplicates(snakemake.input.duplicates)
    folds = h5n.read_folds(snakemake.input.folds)
    leaks = leak_report(pairs, folds, DuplicateSettings.from_config(config))
    log.info("near-duplicates: %s", leaks)
    run_ensemble(
        members(snakemake.input.items(), "summary"),
        EnsembleSettings.from_config(config),
        snakemake.output.ensemble,
        snakemake.output.metrics,
        snakemake.output.thresholds,
        leaks,
    )
    log.info(headline(snakemake.output.metrics))
