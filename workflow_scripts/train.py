from pathlib import Path

from hpaflow.contracts import job_config
from hpaflow.layout import indexed_shards
from hpaflow.runlog import logged
from hpaflow.staging import staged
from hpaflow.train import TrainConfig, train

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    config = job_config("train", p.decides, snakemake.config)
    cfg = TrainConfig.from_config(config, p.model, int(snakemake.wildcards.fold), snakemake.threads)
    log.info("train %s", cfg)
    shards = indexed_shards(list(snakemake.input.shards))
    # Staged copies change where shards are read from, not the fingerprint (content): resume is unaffected.
    with staged(shards, config["stage_shards"], log) as local:
        train(cfg, local, snakemake.input.folds, out_dir=Path(snakemake.output.best).parent)
