rule shard:
    """Check, decode, resize (or tile) one shard of a dataset's images into HDF5."""
    input:
        labels_csv,
    output:
        "results/shards/{dataset}/{index}.h5",
    log:
        "logs/shard/{dataset}/{index}.log",
    conda:
        "../envs/data.yaml"
    threads: job_threads("shard")
    resources:
        **job_resources("shard"),
    params:
        dataset=lambda wc: shard_dataset_keys(wc.dataset),
        images=lambda wc: str(dataset_path(config, DATASETS[wc.dataset], "images")),
        image_size=config["image_size"],
        tiling=config["tiling"],
        tile_size=config.get("tile_size"),
        shard_size=config["shard_size"],
        compression=config["hdf5_compression"],
    script:
        "../workflow_scripts/shard.py"


rule preprocess:
    """Every shard of every configured dataset."""
    input:
        all_shards,
    localrule: True
