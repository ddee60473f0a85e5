rule train:
    """One GPU job per model x fold: train on the other folds, keep the best checkpoint."""
    input:
        shards=train_shards,
        folds="results/folds.csv",
    output:
        best="results/models/{model}/fold{fold}/best.pt",
        metrics="results/models/{model}/fold{fold}/metrics.csv",
    params:
        model=lambda wc: next(m for m in config["models"] if m["name"] == wc.model),
    log:
        "logs/train/{model}/fold{fold}.log",
    threads: rule_resources("train", "cpus", 4)
    resources:
        gpu=rule_resources("train", "gpu", 1),
        mem_mb=rule_resources("train", "mem_mb", 32000),
        runtime=rule_resources("train", "runtime", 720),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/train.py"
