rule train:
    """One GPU job per model x fold: train on the other folds, keep the best checkpoint.

    Resumable: checkpoints/ (not an output, so Snakemake keeps it when a job fails or is
    requeued) holds the last epoch's state, and a rerun goes on from there.
    """
    input:
        shards=train_shards,
        content=contents(TRAIN_DATASETS),
        folds="results/folds.csv",
    output:
        best="results/models/{model}/fold{fold}/best.pt",
        metrics="results/models/{model}/fold{fold}/metrics.csv",
    log:
        "logs/train/{model}/fold{fold}.log",
    benchmark:
        "results/benchmarks/train/{model}/fold{fold}.tsv"
    conda:
        "../envs/locked/torch.yaml"
    threads: job_threads("train")
    resources:
        **job_resources("train"),
    params:
        model=model_settings,
        weights=pretrained_weights,
        decides=decides("train", but=("models",)),
    script:
        "../workflow_scripts/train.py"


rule predict:
    """Out-of-fold and test probabilities of one model x fold, averaged over TTA views."""
    input:
        best="results/models/{model}/fold{fold}/best.pt",
        train_shards=train_shards,
        test_shards=test_shards,
        content=contents(DATASETS),
        folds="results/folds.csv",
    output:
        "results/predictions/{model}/fold{fold}.h5",
    log:
        "logs/predict/{model}/fold{fold}.log",
    benchmark:
        "results/benchmarks/predict/{model}/fold{fold}.tsv"
    conda:
        "../envs/locked/torch.yaml"
    threads: job_threads("predict")
    resources:
        **job_resources("predict"),
    params:
        decides=decides("predict"),
    script:
        "../workflow_scripts/predict.py"
