DEMO_DIR = config["demo"]["dir"]


rule demo_data:
    """Synthetic HPA-like demo set in the Kaggle layout, plus TIFF and HPAv18 JPEG variants."""
    output:
        expand(
            f"{DEMO_DIR}/{{csv}}",
            csv=[
                "train.csv",
                "train_tiff.csv",
                "hpav18.csv",
                "sample_submission.csv",
                "test_labels.csv",
                "duplicates_truth.csv",
                "siblings_truth.csv",
            ],
        ),
    log:
        "logs/demo_data.log",
    conda:
        "../envs/locked/data.yaml"
    threads: job_threads("demo_data")
    resources:
        **job_resources("demo_data"),
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output[0]),
        decides=decides("demo_data"),
    script:
        "../workflow_scripts/demo_data.py"
