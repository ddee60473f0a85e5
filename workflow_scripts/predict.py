from hpaflow.predict import run_predict
from hpaflow.runlog import logged

with logged(snakemake.log[0]):
    p = snakemake.params.predict
    run_predict(snakemake.input.best, list(snakemake.input.train_shards), list(snakemake.input.test_shards),
                snakemake.input.folds, int(snakemake.wildcards.fold), snakemake.output[0],
                views=p["tta_views"], tta_combine=p["tta_combine"], tile_combine=p["tile_combine"],
                save_views=p["save_views"], batch_size=p["batch_size"], device_name=snakemake.params.device,
                threads=snakemake.threads)
