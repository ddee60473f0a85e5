rule folds:
    """Multilabel-stratified folds over all train Ids of all train datasets."""
    input:
        train_labels_csvs,
    output:
        "results/folds.csv",
    params:
        datasets=TRAIN_DATASETS,
        n_folds=config["n_folds"],
        seed=config["seed"],
    log:
        "logs/folds.log",
    threads: job_threads("folds")
    resources:
        **job_resources("folds"),
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/folds.py"
