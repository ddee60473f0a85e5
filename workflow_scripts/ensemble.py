from hpaflow.runlog import logged
from hpaflow.summary import gather, headline

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    gather(dict(zip(p.models, snakemake.input)), {"thresholds": p.thresholds, "ensemble": p.ensemble},
           snakemake.output.ensemble, snakemake.output.metrics, snakemake.output.thresholds)
    log.info(headline(snakemake.output.metrics))
