rule classify_shard:
    """One shard of the fields to classify, made as training shards are, at the package's shard size."""
    input:
        package=classify_package,
    output:
        "results/classify/{name}/shards/{index}.h5",
    log:
        "logs/classify/{name}/shard{index}.log",
    conda:
        "../envs/locked/classify.yaml"
    threads: job_threads("classify_shard")
    resources:
        **job_resources("classify_shard"),
    params:
        decides=lambda wc: decides("classify_shard"),
        files=classify_shard_files,
        package=classify_package_params,
        storage={"hdf5_compression": config["hdf5_compression"]},
    script:
        "../workflow_scripts/classify_shard.py"


rule classify_predict:
    """The exported ensemble (onnxruntime) on every shard; the package's thresholds make the labels."""
    input:
        shards=classify_shards,
        package=classify_package,
    output:
        "results/classify/{name}/predictions.csv",
    log:
        "logs/classify/{name}/predict.log",
    conda:
        "../envs/locked/classify.yaml"
    threads: job_threads("classify_predict")
    resources:
        **job_resources("classify_predict"),
    params:
        package=classify_package_params,
        decides=lambda wc: decides("classify_predict"),
    script:
        "../workflow_scripts/classify.py"


rule classify_gallery:
    """The first fields with their predicted labels."""
    input:
        predictions="results/classify/{name}/predictions.csv",
        shards=classify_shards,
    output:
        "results/classify/{name}/gallery.png",
    log:
        "logs/classify/{name}/gallery.log",
    conda:
        "../envs/locked/classify.yaml"
    threads: job_threads("classify_gallery")
    resources:
        **job_resources("classify_gallery"),
    script:
        "../workflow_scripts/classify_gallery.py"


rule classify:
    """Target: classify the fields of config `classify` (predictions.csv, gallery.png)."""
    input:
        classify_outputs,
    localrule: True
