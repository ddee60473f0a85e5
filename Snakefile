from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "rules/report/workflow.rst"


include: "rules/common.smk"
include: "rules/acquire.smk"
include: "rules/demo.smk"
include: "rules/preprocess.smk"
include: "rules/folds.smk"
include: "rules/train.smk"
include: "rules/ensemble.smk"
include: "rules/transfer.smk"
include: "rules/classify.smk"


rule all:
    default_target: True
    input:
        final_outputs,
