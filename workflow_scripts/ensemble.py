from hpaflow.ensemble import EnsembleSettings, run_ensemble
from hpaflow.runlog import logged
from hpaflow.summary import headline

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    run_ensemble(
        dict(zip(p.models, snakemake.input)),
        EnsembleSettings.from_config(p.config),
        snakemake.output.ensemble,
        snakemake.output.metrics,
        snakemake.output.thresholds,
    )
    log.info(headline(snakemake.output.metrics))
