"""Rule embed: train the antibody embedding network (resumable), embed every field (hpaflow.embed)."""

from hpaflow.contracts import job_config, members
from hpaflow.embed import EmbedSettings, run_embed
from hpaflow.layout import indexed_shards
from hpaflow.runlog import logged
from hpaflow.staging import staged_groups

with logged(snakemake.log[0]) as log:
    # params.weights (the ImageNet weights' name and sha256) is there only to rerun the job when they change.
    config = job_config("embed", snakemake.params.decides, snakemake.config)
    settings = EmbedSettings.from_config(config, snakemake.threads)
    log.info("embed %s", settings)
    shards = {name: indexed_shards([path]) for name, path in members(snakemake.input.items(), "index").items()}
    with staged_groups(shards, config["stage_shards"], log) as local:
        run_embed(settings, local, snakemake.input.duplicates, snakemake.output.embeddings, snakemake.output.model)
