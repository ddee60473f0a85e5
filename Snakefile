from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/preprocess.smk"
include: "rules/folds.smk"
include: "rules/train.smk"


rule all:
    default_target: True
    input:
        all_shards,
        "results/folds.csv",
        predictions,
