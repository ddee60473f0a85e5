# The training loop lands with issue 3 ("Training and prediction"); until then the rule is
# declared so that the DAG (one job per model x fold) and its resources can be planned and checked.
from hpaflow.runlog import logged

with logged(snakemake.log[0]):
    raise NotImplementedError(
        f"rule train ({snakemake.wildcards.model}, fold {snakemake.wildcards.fold}): training is not "
        "implemented yet (issue 3); run `snakemake preprocess folds` for the data stages"
    )
