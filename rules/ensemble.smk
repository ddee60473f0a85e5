rule model_summary:
    """One model's out-of-fold probabilities (every train Id once) and fold-averaged test probabilities."""
    input:
        predictions=lambda wc: expand("results/predictions/{model}/fold{fold}.h5", model=wc.model, fold=FOLDS),
        folds="results/folds.csv",
    output:
        "results/summary/{model}.h5",
    log:
        "logs/model_summary/{model}.log",
    conda:
        "../envs/locked/ensemble.yaml"
    threads: job_threads("model_summary")
    resources:
        **job_resources("model_summary"),
    script:
        "../workflow_scripts/model_summary.py"


rule ensemble:
    """Ensemble, thresholds fitted out-of-fold, and every figure in metrics.json."""
    input:
        unpack(lambda wc: keyed("summary", "results/summary/{model}.h5", folds=False)),
        duplicates="results/duplicates.csv",
        folds="results/folds.csv",
    output:
        ensemble="results/ensemble.h5",
        metrics="results/metrics.json",
        thresholds="results/thresholds.csv",
    log:
        "logs/ensemble.log",
    conda:
        "../envs/locked/ensemble.yaml"
    threads: job_threads("ensemble")
    resources:
        **job_resources("ensemble"),
    params:
        decides=decides("ensemble"),
    script:
        "../workflow_scripts/ensemble.py"


rule submission:
    """The Kaggle submission: sample_submission order, labels sorted, checked before it is written."""
    input:
        ensemble="results/ensemble.h5",
        samples=test_labels_csvs,
    output:
        SUBMISSION_ENSEMBLE,
    log:
        "logs/submission.log",
    conda:
        "../envs/locked/ensemble.yaml"
    threads: job_threads("submission")
    resources:
        **job_resources("submission"),
    params:
        decides=decides("submission"),
    script:
        "../workflow_scripts/submission.py"


rule plots:
    """Report figures: training curves, per-class F1, threshold curves, label frequencies, images."""
    input:
        unpack(lambda wc: keyed("curves", "results/models/{model}/fold{fold}/metrics.csv")),
        metrics="results/metrics.json",
        ensemble="results/ensemble.h5",
        shards=train_shards,
        duplicates="results/duplicates.csv",
        all_shards=all_indexes,
        content=contents(DATASETS),
    output:
        curves=report("results/plots/training_curves.png", caption="report/curves.rst", category="Training"),
        per_class=report("results/plots/per_class_f1.png", caption="report/per_class.rst", category="Scores"),
        thresholds=report("results/plots/threshold_curves.png", caption="report/thresholds.rst", category="Scores"),
        frequency=report("results/plots/label_frequency.png", caption="report/frequency.rst", category="Scores"),
        images=report("results/plots/image_grid.png", caption="report/images.rst", category="Images"),
        duplicates=report("results/plots/duplicate_pairs.png", caption="report/duplicates.rst", category="Images"),
        headline="results/plots/headline.rst",  # included by the report's front page (report/workflow.rst)
        versions="results/plots/software_versions.rst",  # the stages' key packages, on the front page too
    log:
        "logs/plots.log",
    conda:
        "../envs/locked/ensemble.yaml"
    threads: job_threads("plots")
    resources:
        **job_resources("plots"),
    script:
        "../workflow_scripts/plots.py"


rule export:
    """The fitted ensemble as a package to take away: one ONNX graph, thresholds, classes, preprocessing, README."""
    input:
        unpack(lambda wc: keyed("model", "results/models/{model}/fold{fold}/best.pt")),
        unpack(export_transfer),
        exportable=exportable,
        ensemble="results/ensemble.h5",
        metrics="results/metrics.json",
        shards=train_shards,
        content=contents(TRAIN_DATASETS),
    output:
        package=directory("results/export/hpa_classifier"),
        zip="results/export/hpa_classifier.zip",
    log:
        "logs/export.log",
    conda:
        "../envs/locked/export.yaml"
    threads: job_threads("export")
    resources:
        **job_resources("export"),
    params:
        decides=decides("export"),
    script:
        "../workflow_scripts/export.py"
