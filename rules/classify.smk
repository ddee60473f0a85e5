rule classify_shard:
    """One shard of the fields to classify, made as training shards are, at the package's input size."""
    input:
        images=classify_shard_images,
        package=classify_package,
    output:
        "results/classify/{name}/shards/{index}.h5",
    log:
        "logs/classify/{name}/shard{index}.log",
    conda:
        "../envs/classify.yaml"
    threads: job_threads("classify_shard")
    resources:
        **job_resources("classify_shard"),
    params:
        ids=classify_shard_ids,
        images=lambda wc: CLASSIFY["images"],
        format=lambda wc: CLASSIFY["format"],
        bits=lambda wc: CLASSIFY["bits"],
        compression=config["hdf5_compression"],
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
        "../envs/classify.yaml"
    threads: job_threads("classify_predict")
    resources:
        **job_resources("classify_predict"),
    params:
        batch_size=lambda wc: CLASSIFY["batch_size"],
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
        "../envs/classify.yaml"
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
