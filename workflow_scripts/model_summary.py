from hpaflow.runlog import logged
from hpaflow.summary import assemble_model, save_predictions, summary_attrs

with logged(snakemake.log[0]) as log:
    p = assemble_model(list(snakemake.input.predictions), snakemake.input.folds)
    log.info(
        "%s: %d out-of-fold rows, %d test rows averaged over %d fold models",
        snakemake.wildcards.model,
        len(p.oof_ids),
        len(p.test_ids),
        len(snakemake.input.predictions),
    )
    attrs = summary_attrs(snakemake.wildcards.model, list(snakemake.input.predictions))
    save_predictions(p, snakemake.output[0], attrs)
