rule shard:
    """Check, decode, resize (or tile) one shard of a dataset's images into HDF5."""
    input:
        labels_csv,
    output:
        "results/shards/{dataset}/{index}.h5",
    log:
        "logs/shard/{dataset}/{index}.log",
    conda:
        "../envs/locked/data.yaml"
    threads: job_threads("shard")
    resources:
        **job_resources("shard"),
    params:
        decides=lambda wc: shard_decided(wc.dataset),
        storage={"shard_size": config["shard_size"], "hdf5_compression": config["hdf5_compression"]},
        bits_key=lambda wc: f"datasets[{DATASETS[wc.dataset]}].bits",
    script:
        "../workflow_scripts/shard.py"


rule shard_content:
    """What decides a dataset's shards, and its Ids and labels: the file that reruns the shards' readers
    (the shards are ancient inputs to them, so a rewrite that keeps their content reruns nothing)."""
    input:
        ancient(labels_csv),
    output:
        "results/shards/{dataset}/content.json",
    log:
        "logs/shard_content/{dataset}.log",
    localrule: True
    conda:
        "../envs/locked/data.yaml"
    threads: job_threads("shard_content")
    resources:
        **job_resources("shard_content"),
    params:
        decides=lambda wc: shard_decided(wc.dataset),
        content=lambda wc: dataset_content(wc.dataset),
    script:
        "../workflow_scripts/shard_content.py"


rule shard_index:
    """A dataset's shard files with their rows and format version: what shard readers take as input."""
    input:
        lambda wc: shards_of(wc.dataset),
    output:
        "results/shards/{dataset}/index.json",
    log:
        "logs/shard_index/{dataset}.log",
    localrule: True
    conda:
        "../envs/locked/data.yaml"
    threads: job_threads("shard_index")
    resources:
        **job_resources("shard_index"),
    script:
        "../workflow_scripts/shard_index.py"


rule preprocess:
    """Every shard of every configured dataset."""
    input:
        all_shards,
        all_indexes,
        contents(DATASETS),
    localrule: True
