rule folds:
    """Multilabel-stratified folds over all train Ids of all train datasets."""
    input:
        train_labels_csvs,
    output:
        "results/folds.csv",
    log:
        "logs/folds.log",
    conda:
        "../envs/data.yaml"
    threads: job_threads("folds")
    resources:
        **job_resources("folds"),
    params:
        datasets=TRAIN_DATASETS,
        n_folds=config["n_folds"],
        seed=config["seed"],
    script:
        "../workflow_scripts/folds.py"
