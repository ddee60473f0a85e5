from pathlib import Path

from hpaflow.package import Package
from hpaflow.runlog import logged
from hpaflow.shards import ShardSpec, write_shard

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    index = int(snakemake.wildcards.index)
    size = Package(snakemake.input.package).image_size
    spec = ShardSpec(
        dataset=snakemake.wildcards.name,
        fmt=p.format,
        images_dir=p.images,
        role="test",
        image_size=size,
        compression=p.compression,
        bits=p.bits,
    )
    # New shards make this name's earlier predictions stale: removed now, so that a run that fails later
    # (a damaged field in another shard) leaves no predictions.csv of other inputs behind.
    for stale in ("predictions.csv", "gallery.png"):
        (Path(snakemake.output[0]).parent.parent / stale).unlink(missing_ok=True)
    log.info("classify shard %d: %d fields from %s at %d px", index, len(p.ids), p.images, size)
    write_shard(snakemake.output[0], spec, list(p.ids), None, index)
