from pathlib import Path

from hpaflow.runlog import logged
from hpaflow.train import TrainConfig, train

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    cfg = TrainConfig(fold=int(snakemake.wildcards.fold), seed=p.seed, device=p.device,
                      pretrained_dir=p.pretrained_dir, threads=snakemake.threads, visdom=p.visdom, **p.model)
    log.info("train %s", cfg)
    train(cfg, list(snakemake.input.shards), snakemake.input.folds,
          out_dir=Path(snakemake.output.best).parent)
