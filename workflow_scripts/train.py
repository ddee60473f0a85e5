from pathlib import Path

from hpaflow.runlog import logged
from hpaflow.train import TrainConfig, train

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    cfg = TrainConfig.from_config(p.config, p.model, int(snakemake.wildcards.fold), snakemake.threads)
    log.info("train %s", cfg)
    train(cfg, list(snakemake.input.shards), snakemake.input.folds, out_dir=Path(snakemake.output.best).parent)
