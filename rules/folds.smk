rule duplicates:
    """Near-duplicate pairs among all fields (per-plane pHash from the shards), for the folds and the leak report."""
    input:
        shards=all_indexes,
        content=contents(DATASETS),
    output:
        "results/duplicates.csv",
    log:
        "logs/duplicates.log",
    conda:
        "../envs/locked/data.yaml"
    threads: job_threads("duplicates")
    resources:
        **job_resources("duplicates"),
    params:
        decides=decides("duplicates"),
    script:
        "../workflow_scripts/duplicates.py"


rule folds:
    """Multilabel-stratified folds over all train Ids of all train datasets; near-duplicate groups kept whole."""
    input:
        labels=train_labels_csvs,
        shards=folds_shards,
        content=contents(TRAIN_DATASETS) if config["duplicates"]["policy"] != "off" else [],
    output:
        "results/folds.csv",
    log:
        "logs/folds.log",
    conda:
        "../envs/locked/data.yaml"
    threads: job_threads("folds")
    resources:
        **job_resources("folds"),
    params:
        datasets=TRAIN_DATASETS,
        n_folds=config["n_folds"],
        seed=config["seed"],
        duplicates=folds_settings(),
    script:
        "../workflow_scripts/folds.py"
