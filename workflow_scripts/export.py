import json
from pathlib import Path

import h5py
import numpy as np

from hpaflow import h5names as h5n
from hpaflow.contracts import job_config, members
from hpaflow.data import ShardDataset, ShardRows
from hpaflow.export import EnsembleModule, ExportSettings, shard_size, write_package, zip_package
from hpaflow.layout import indexed_shards
from hpaflow.runlog import logged
from hpaflow.runtime import use_threads

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    settings = ExportSettings.from_config(job_config("export", p.decides, snakemake.config))
    best = members(snakemake.input.items(), "model")  # {(model, fold): best.pt}
    names = list(dict.fromkeys(m for m, _ in best))
    folds = sorted({k for _, k in best})
    checkpoints = [[best[m, k] for k in folds] for m in names]
    with h5py.File(snakemake.input.ensemble, "r") as h5:
        weights, thresholds = h5.attrs["weights"], h5[h5n.THRESHOLDS][...]
    use_threads(snakemake.threads)
    module = EnsembleModule.from_checkpoints(
        checkpoints,
        weights,
        settings.views,
        settings.tta_combine,
        crops=settings.crops,
        crop_placement=settings.crop_placement,
        seed=settings.seed,
    )
    size, shards = module.image_size, indexed_shards(list(snakemake.input.shards))
    rows = ShardRows.from_files(shards)
    ds = ShardDataset(rows, size)  # predict's reading: S px shard rows resized to the models' M px
    sample = np.stack([ds[i][0].numpy() for i in range(min(8, len(ds)))])  # real shard rows
    s = shard_size(shards)
    log.info(
        "exporting %d members x %d TTA views (crops per member %s): %d px shard rows -> %d px",
        len(module.models),
        len(settings.views),
        [0 if c is None else len(c[1]) for c in module.crops],
        s,
        size,
    )
    metrics = json.loads(Path(snakemake.input.metrics).read_text())
    diff = write_package(
        snakemake.output.package,
        module,
        size,
        settings,
        thresholds,
        metrics,
        names,
        len(folds),
        sample,
        shard_size=s,
    )
    log.info("ONNX vs PyTorch on %d shard rows: max abs difference %.2e", len(sample), diff)
    zip_package(snakemake.output.package, snakemake.output.zip)
