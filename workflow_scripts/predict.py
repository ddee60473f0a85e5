from hpaflow.predict import PredictSettings, run_predict
from hpaflow.runlog import logged

with logged(snakemake.log[0]):
    run_predict(
        snakemake.input.best,
        list(snakemake.input.train_shards),
        list(snakemake.input.test_shards),
        snakemake.input.folds,
        int(snakemake.wildcards.fold),
        snakemake.output[0],
        PredictSettings.from_config(snakemake.params.config, snakemake.threads),
    )
