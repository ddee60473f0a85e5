from hpaflow.contracts import job_config
from hpaflow.layout import indexed_shards
from hpaflow.predict import PredictSettings, run_predict
from hpaflow.runlog import logged

with logged(snakemake.log[0]):
    run_predict(
        snakemake.input.best,
        indexed_shards(list(snakemake.input.train_shards)),
        indexed_shards(list(snakemake.input.test_shards)),
        snakemake.input.folds,
        int(snakemake.wildcards.fold),
        snakemake.output[0],
        PredictSettings.from_config(
            job_config("predict", snakemake.params.decides, snakemake.config), snakemake.threads
        ),
    )
