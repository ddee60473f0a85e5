import json
from pathlib import Path

import h5py
import numpy as np

from hpaflow import h5names as h5n
from hpaflow.data import ShardDataset, ShardRows
from hpaflow.export import EnsembleModule, ExportSettings, write_package, zip_package
from hpaflow.runlog import logged
from hpaflow.runtime import use_threads

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    settings = ExportSettings.from_config(p.config)
    n_folds = len(p.folds)
    checkpoints = [snakemake.input.models[i * n_folds : (i + 1) * n_folds] for i in range(len(p.models))]
    with h5py.File(snakemake.input.ensemble, "r") as h5:
        weights, thresholds = h5.attrs["weights"], h5[h5n.THRESHOLDS][...]
    use_threads(snakemake.threads)
    module = EnsembleModule.from_checkpoints(checkpoints, weights, settings.views, settings.tta_combine)
    size = module.image_size
    rows = ShardRows.from_files(list(snakemake.input.shards))
    ds = ShardDataset(rows, size)
    sample = np.stack([ds[i][0].numpy() for i in range(min(8, len(ds)))])  # real shard rows
    log.info("exporting %d members x %d TTA views at %d px", len(module.models), len(settings.views), size)
    metrics = json.loads(Path(snakemake.input.metrics).read_text())
    diff = write_package(
        snakemake.output.package, module, size, settings, thresholds, metrics, list(p.models), n_folds, sample
    )
    log.info("ONNX vs PyTorch on %d shard rows: max abs difference %.2e", len(sample), diff)
    zip_package(snakemake.output.package, snakemake.output.zip)
