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
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/folds.py"
