import json
from pathlib import Path

import h5py
import numpy as np

from hpaflow import h5names as h5n
from hpaflow.contracts import job_config, members
from hpaflow.data import ShardDataset, ShardRows
from hpaflow.export import EnsembleModule, ExportSettings, TransferExport, shard_size, write_package, zip_package
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
    n_sample = min(8, len(rows))
    ds = ShardDataset(rows, size)  # predict's reading: S px shard rows resized to the models' M px
    sample = np.stack([ds[i][0].numpy() for i in range(n_sample)])  # real shard rows
    transfer, transfer_sample = None, None
    if "embed_model" in snakemake.input.keys():  # label transfer (config transfer.enabled)
        transfer = TransferExport.load(
            snakemake.input.embed_model, snakemake.input.embeddings, snakemake.input.transfer_metrics
        )
        emb_ds = ShardDataset(rows, transfer.module.image_size)  # embed's reading of the same rows
        transfer_sample = np.stack([emb_ds[i][0].numpy() for i in range(n_sample)])
        log.info(
            "label transfer: %d references, embeddings of %d at %d px, tau %s",
            len(transfer.references.ids),
            transfer.module.embedding_size,
            transfer.module.image_size,
            "null (never)" if transfer.tau is None else f"{transfer.tau:.6f}",
        )
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
        transfer=transfer,
        transfer_sample=transfer_sample,
    )
    log.info("ONNX vs PyTorch on %d shard rows: max abs difference %.2e", len(sample), diff)
    if transfer is not None:
        emb_diff = json.loads((Path(snakemake.output.package) / "transfer.json").read_text())["onnx_max_abs_difference"]
        log.info("embedding ONNX vs PyTorch on %d shard rows: max abs difference %.2e", n_sample, emb_diff)
    zip_package(snakemake.output.package, snakemake.output.zip)
