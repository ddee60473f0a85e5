from hpaflow.labels import read_labels
from hpaflow.layout import shard_slice
from hpaflow.runlog import logged
from hpaflow.shards import ShardSpec, write_shard

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    d = p.dataset
    index = int(snakemake.wildcards.index)
    table = read_labels(snakemake.input[0], d["role"] == "train")
    rows = shard_slice(index, len(table), p.shard_size)
    spec = ShardSpec(
        dataset=d["name"],
        fmt=d["format"],
        images_dir=p.images,
        role=d["role"],
        image_size=p.image_size,
        tiling=p.tiling,
        tile_size=p.tile_size,
        compression=p.compression,
        bits=d["bits"],
    )
    log.info("shard %s/%d: Ids %d-%d of %d from %s", d["name"], index, rows.start, rows.stop - 1, len(table), p.images)
    labels = table.labels[rows] if table.labels is not None else None
    write_shard(snakemake.output[0], spec, list(table.ids[rows]), labels, index)
