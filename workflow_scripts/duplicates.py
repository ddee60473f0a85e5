import time

from hpaflow.duplicates import DuplicateSettings, pairs_table
from hpaflow.files import atomic_path
from hpaflow.runlog import logged
from hpaflow.shards import read_fields

with logged(snakemake.log[0]) as log:
    settings = DuplicateSettings.from_config(snakemake.params.config)
    fields = read_fields(list(snakemake.input))
    t0 = time.monotonic()
    table = pairs_table(fields, settings, snakemake.threads)
    log.info(
        "%d fields (%d train): %d near-duplicate pairs within %d bits on %s in %.1f s",
        len(fields.ids),
        int(fields.train.sum()),
        len(table),
        settings.max_distance,
        ", ".join(settings.channels),
        time.monotonic() - t0,
    )
    for kind, n in table["kind"].value_counts().items():
        log.info("%s pairs: %d", kind, n)
    log.info("train-train pairs whose labels differ: %d", int((table["labels_agree"] == False).sum()))  # noqa: E712
    with atomic_path(snakemake.output[0]) as tmp:
        table.to_csv(tmp, index=False)
