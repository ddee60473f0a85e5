import h5py

from hpaflow import h5names as h5n
from hpaflow.labels import read_labels
from hpaflow.runlog import logged
from hpaflow.submission import make_submission, write_submission
from hpaflow.thresholds import apply

with logged(snakemake.log[0]) as log:
    sample_ids = [i for csv in snakemake.input.samples for i in read_labels(csv, False).ids]
    with h5py.File(snakemake.input.ensemble, "r") as h5:
        ids, probs, t = h5[h5n.TEST_IDS].asstr()[...], h5[h5n.TEST_PROBS][...], h5[h5n.THRESHOLDS][...]
    df = make_submission(sample_ids, ids, apply(probs, t, snakemake.params.decides["thresholds"]["at_least_one"]))
    write_submission(df, sample_ids, snakemake.output[0])
    log.info("submission: %d rows, %.2f labels per image", len(df), df["Predicted"].str.split().str.len().mean())
