from hpaflow.download import download_kaggle
from hpaflow.files import atomic_path
from hpaflow.runlog import logged

with logged(snakemake.log[0]) as log:
    what = download_kaggle(snakemake.params.data_root, snakemake.params.competition)
    log.info("Kaggle set in %s: %s", snakemake.params.data_root, what)
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text(f"{snakemake.params.competition}: {what}\n")
