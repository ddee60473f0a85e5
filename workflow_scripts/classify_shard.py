from pathlib import Path

from hpaflow.layout import list_channels
from hpaflow.package import Package
from hpaflow.runlog import logged
from hpaflow.shards import ShardSpec, write_shard

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    c = p.decides["classify"]
    ids = list(p.files)  # the listing's Ids of this shard (their file names decide it too)
    index = int(snakemake.wildcards.index)
    if index == 0:  # what the listing ignored, counted: once per folder, not a folder scan per shard job
        log.info("folder %s", list_channels(c["images"], c["format"]).summary())
    size = Package(p.package["path"]).shard_size  # as the training shards; classify resizes rows as predict
    spec = ShardSpec(
        dataset=snakemake.wildcards.name,
        fmt=c["format"],
        images_dir=c["images"],
        role="test",
        image_size=size,
        compression=p.storage["hdf5_compression"],
        bits=c["bits"],
        bits_key="classify.bits",
    )
    # New shards make this name's earlier predictions stale: removed now, so that a run that fails later
    # (a damaged field in another shard) leaves no predictions.csv of other inputs behind.
    for stale in ("predictions.csv", "gallery.png"):
        (Path(snakemake.output[0]).parent.parent / stale).unlink(missing_ok=True)
    log.info("classify shard %d: %d fields from %s at %d px", index, len(ids), c["images"], size)
    write_shard(snakemake.output[0], spec, ids, None, index, threads=snakemake.threads)
