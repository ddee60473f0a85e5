from hpaflow.contracts import job_config
from hpaflow.download import FetchSettings, download_hpav18, part_rows
from hpaflow.labels import read_labels
from hpaflow.runlog import logged

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    ids = read_labels(snakemake.input[0], True).ids
    part = int(snakemake.wildcards.part)
    mine = list(ids[part_rows(len(ids), part, p.parts)])
    settings = FetchSettings.from_config(job_config("download_hpav18_part", p.decides, snakemake.config))
    log.info(
        "HPAv18 part %d of %d: %d Ids (%d files) from %s", part, p.parts, len(mine), 4 * len(mine), settings.base_url
    )
    counts = download_hpav18(mine, p.out_dir, settings, snakemake.output[0])
    log.info("done: %s", counts)
