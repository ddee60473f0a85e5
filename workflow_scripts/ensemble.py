import pandas as pd

from hpaflow.duplicates import DuplicateSettings, leak_report
from hpaflow.ensemble import EnsembleSettings, run_ensemble
from hpaflow.runlog import logged
from hpaflow.summary import headline

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    pairs = pd.read_csv(snakemake.input.duplicates, dtype={"id_a": str, "id_b": str})
    folds = pd.read_csv(snakemake.input.folds, dtype={"Id": str})
    leaks = leak_report(pairs, folds, DuplicateSettings.from_config(p.config))
    log.info("near-duplicates: %s", leaks)
    run_ensemble(
        dict(zip(p.models, snakemake.input.summaries)),
        EnsembleSettings.from_config(p.config),
        snakemake.output.ensemble,
        snakemake.output.metrics,
        snakemake.output.thresholds,
        leaks,
    )
    log.info(headline(snakemake.output.metrics))
