DOWNLOAD = config["download"]
HPAV18_PARTS = list(range(DOWNLOAD["jobs"]))


rule download_kaggle:
    """The competition's images and csvs via the kaggle CLI, unpacked into data_root."""
    output:
        "results/downloads/kaggle.txt",
    log:
        "logs/download_kaggle.log",
    conda:
        "../envs/locked/download.yaml"
    threads: job_threads("download_kaggle")
    resources:
        **job_resources("download_kaggle"),
    params:
        data_root=config["data_root"],
        competition=DOWNLOAD["kaggle_competition"],
    script:
        "../workflow_scripts/download_kaggle.py"


rule download_hpav18_part:
    """One contiguous range of the HPAv18 Ids: 4 JPEGs each, bounded, retried, resumable, verified."""
    input:
        lambda wc: f"{config['data_root']}/{DOWNLOAD['hpav18_csv']}",
    output:
        "results/downloads/hpav18/part{part}.tsv",
    log:
        "logs/download_hpav18/part{part}.log",
    conda:
        "../envs/locked/download.yaml"
    threads: job_threads("download_hpav18_part")
    resources:
        **job_resources("download_hpav18_part"),
    params:
        out_dir=f"{config['data_root']}/{DOWNLOAD['hpav18_dir']}",
        parts=len(HPAV18_PARTS),
        decides=decides("download_hpav18_part"),
    script:
        "../workflow_scripts/download_hpav18.py"


rule download_hpav18:
    """Every range of the HPAv18 images."""
    input:
        expand("results/downloads/hpav18/part{part}.tsv", part=HPAV18_PARTS),
    localrule: True


rule download:
    """Both sources."""
    input:
        rules.download_kaggle.output,
        rules.download_hpav18.input,
    localrule: True
