import json

from hpaflow.files import atomic_path
from hpaflow.runlog import logged

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    record = {"dataset": snakemake.wildcards.dataset, "content": p.content, "decided_by": p.decides}
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    log.info("%s: content %s", snakemake.wildcards.dataset, p.content)
