from pathlib import Path

from hpaflow.labels import read_labels
from hpaflow.layout import shard_slice
from hpaflow.runlog import logged
from hpaflow.shards import ShardSpec, write_shard

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    c, d = p.decides, p.decides["dataset"]
    index = int(snakemake.wildcards.index)
    table = read_labels(snakemake.input[0], d["role"] == "train")
    rows = shard_slice(index, len(table), p.storage["shard_size"])
    images = str(Path(c["data_root"]) / d["images"])  # as config.dataset_path: an absolute `images` stands alone
    spec = ShardSpec(
        dataset=d["name"],
        fmt=d["format"],
        images_dir=images,
        role=d["role"],
        image_size=c["image_size"],
        tiling=c["tiling"],
        tile_size=c.get("tile_size"),
        compression=p.storage["hdf5_compression"],
        bits=d["bits"],
        bits_key=p.bits_key,  # the warnings name the key to set
        # in the rule's params only when true (contracts.SHARD_DATASET_OMITTED: false leaves the shards as they were)
        reduced_decode=d.get("reduced_decode", False),
    )
    log.info("shard %s/%d: Ids %d-%d of %d from %s", d["name"], index, rows.start, rows.stop - 1, len(table), images)
    labels = table.labels[rows] if table.labels is not None else None
    write_shard(snakemake.output[0], spec, list(table.ids[rows]), labels, index, threads=snakemake.threads)
