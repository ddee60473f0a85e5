import time

from hpaflow.duplicates import DuplicateSettings, pairs_table
from hpaflow.files import atomic_path
from hpaflow.layout import indexed_shards
from hpaflow.runlog import logged
from hpaflow.shards import read_fields

with logged(snakemake.log[0]) as log:
    # The search alone (distance, planes): what the folds do with the pairs does not change duplicates.csv.
    d = snakemake.params.decides["duplicates"]
    settings = DuplicateSettings(d["max_distance"], list(d["channels"]), group_by_antibody=False, policy="off")
    fields = read_fields(indexed_shards(list(snakemake.input.shards)))
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
