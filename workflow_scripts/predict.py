from hpaflow.contracts import job_config
from hpaflow.layout import indexed_shards
from hpaflow.predict import PredictSettings, run_predict
from hpaflow.runlog import logged
from hpaflow.staging import staged_groups

with logged(snakemake.log[0]) as log:
    config = job_config("predict", snakemake.params.decides, snakemake.config)
    shards = {
        "train": indexed_shards(list(snakemake.input.train_shards)),
        "test": indexed_shards(list(snakemake.input.test_shards)),
    }
    with staged_groups(shards, config["stage_shards"], log) as local:
        run_predict(
            snakemake.input.best,
            local["train"],
            local["test"],
            snakemake.input.folds,
            int(snakemake.wildcards.fold),
            snakemake.output[0],
            PredictSettings.from_config(config, snakemake.threads),
        )
