"""The files' contracts: HDF5 dataset and attribute names, checkpoint keys, the columns of folds.csv and
duplicates.csv with their readers, and each file kind's format version. The rule that writes a file and
the rules that read it meet here; a reader meeting another format stops with the file and what to rerun.

- results/shards/{dataset}/{index}.h5, rule shard -> train, predict, plots:
  IMAGES uint8 (N, S, S, 4) RGBY, IDS, TILE_ORIGIN (N, 2), HASHES uint64 (N, 4) (each plane's pHash at
  image_size, of the whole image for its tiles), ROW_DIGESTS, LABELS uint8 (N, 28) for train shards.
- results/shards/{dataset}/index.json, rule shard_index -> every shard reader: the dataset's shard files.
- results/predictions/{model}/fold{k}.h5, rule predict -> model_summary: a group per part (OOF,
  TEST), each with IDS, PROBS float32 (N, 28), LABELS (OOF) and VIEWS (C*V, N, 28) when saved
  (crop-major: entry c*V + v is crop c in view v; C = 1 without crops).
- results/summary/{model}.h5, rule model_summary -> ensemble, and results/ensemble.h5, rule
  ensemble -> submission, plots: SUMMARY_STRINGS and SUMMARY_ARRAYS (the fields of
  summary.Predictions); the ensemble adds THRESHOLDS (28,) and OOF_PRED_CROSS_FITTED (N, 28).
- results/models/{model}/fold{k}/best.pt and checkpoints/*.pt, rule train -> predict, export: a dict
  with the CKPT_* keys (torch.save).
- results/folds.csv (FOLDS_COLUMNS) and results/duplicates.csv (hpaflow.duplicates.PAIR_COLUMNS): read
  with read_folds and read_duplicates, which keep Ids as strings.
- results/transfer/embeddings.h5, rule embed -> transfer, transfer_figure, export: one row per field of
  every dataset: IDS, EMB_DATASETS, EMB_TEST (bool), EMB_EXTERNAL (bool), EMB_GROUP int64 (a train
  field's antibody and near-duplicate group; -1 for test fields), EMB_TRAINED (bool: the embedding network
  trained on it), LABELS uint8 (N, 28) (zeros for test fields), EMBEDDINGS float32 (N, D) of unit norm;
  attributes FORMAT, EMB_RETRIEVAL (top-1 retrieval accuracy on the held-out antibodies, NaN without).
The package of rule export carries its own format (hpaflow.package.FORMAT).
Shards, predictions and embeddings.h5 also carry SOFTWARE_VERSIONS, the writing job's environment (JSON,
hpaflow.versions); a summary carries its predictions' under SOFTWARE_VERSIONS_INPUTS. Files from before have
neither, and still read.

Standard library only (pandas imported by the csv readers when called): the planning step imports it.
"""

from __future__ import annotations

from pathlib import Path

# The format of each file kind, stored under FORMAT (an HDF5 attribute, a checkpoint or index key):
# a reader meeting another version stops with the file and what to rerun (check_format).
FORMAT = "format_version"
SHARD_FORMAT = 2  # 2: ROW_DIGESTS
PREDICTIONS_FORMAT = 1
EMBEDDINGS_FORMAT = 1
CHECKPOINT_FORMAT = 2  # 2: models are body + head (hpaflow.models.Classifier), other state-dict names
# What rewrites each kind of file, for the error.
RERUN = {
    "shard": "snakemake --forcerun shard (or delete results/shards/)",
    "predictions": "snakemake --forcerun predict",
    "checkpoint": "delete it and rerun its train job (snakemake --forcerun train)",
    "embeddings": "snakemake --forcerun embed",
}
WANT = {
    "shard": SHARD_FORMAT,
    "predictions": PREDICTIONS_FORMAT,
    "checkpoint": CHECKPOINT_FORMAT,
    "embeddings": EMBEDDINGS_FORMAT,
}


class FormatError(ValueError):
    """A file written in another format than this workflow reads."""


def check_format(path: str | Path, kind: str, got) -> None:
    """Stop on a `kind` file of another format version, naming the file and what rewrites it."""
    want = WANT[kind]
    if got is None or int(got) != want:
        version = "no format version" if got is None else f"format {int(got)}"
        raise FormatError(f"{path}: a {kind} file of {version}; this workflow reads format {want}: {RERUN[kind]}")


# Checkpoint keys (best.pt, checkpoints/last.pt, checkpoints/best.pt).
CKPT_MODEL = "model"  # state_dict
CKPT_CONFIG = "config"  # TrainConfig as a dict
CKPT_TRAIN_IDS = "train_ids"  # the Ids the model was trained on (predict's leak check)
CKPT_FINGERPRINT = "fingerprint"  # train.job_fingerprint: what a resumed job must match
CKPT_SOFTWARE = "software_versions"  # the train job's environment (hpaflow.versions), carried by predict

# results/folds.csv: one row per train Id; fold -1 = left out (duplicates.policy drop_external).
FOLDS_COLUMNS = ("Id", "dataset", "fold", "group")


def read_folds(path: str | Path):
    """folds.csv as a DataFrame, Ids as strings (an Id like 00001 or NA stays as written)."""
    import pandas as pd

    table = pd.read_csv(path, dtype={"Id": str, "dataset": str}, keep_default_na=False)
    if missing := [c for c in ("Id", "fold") if c not in table.columns]:
        raise FormatError(f"{path}: no column {', '.join(missing)}; rerun the folds job (snakemake --forcerun folds)")
    return table


def read_duplicates(path: str | Path):
    """duplicates.csv as a DataFrame, Ids as strings."""
    import pandas as pd

    return pd.read_csv(path, dtype={"id_a": str, "id_b": str, "dataset_a": str, "dataset_b": str})


IMAGES = "images"
ROW_DIGESTS = "row_digests"  # uint64 (N,): the first 8 bytes of each row's sha256, for content fingerprints
IDS = "ids"
TILE_ORIGIN = "tile_origin"
HASHES = "hashes"
LABELS = "labels"

OOF = "oof"
TEST = "test"
PROBS = "probs"
VIEWS = "views"

OOF_IDS = "oof_ids"
OOF_PROBS = "oof_probs"
FOLDS = "folds"
TEST_IDS = "test_ids"
TEST_PROBS = "test_probs"
SUMMARY_STRINGS = (OOF_IDS, TEST_IDS)
SUMMARY_ARRAYS = (OOF_PROBS, LABELS, FOLDS, TEST_PROBS)

THRESHOLDS = "thresholds"
OOF_PRED_CROSS_FITTED = "oof_pred_cross_fitted"

EMBEDDINGS = "embeddings"
EMB_DATASETS = "datasets"
EMB_TEST = "test"
EMB_EXTERNAL = "external"
EMB_GROUP = "group"
EMB_TRAINED = "trained"
EMB_RETRIEVAL = "retrieval_accuracy"

# What ran (hpaflow.versions): the writing job's environment, and the environments a file carries from its inputs.
SOFTWARE_VERSIONS = "software_versions"
SOFTWARE_VERSIONS_INPUTS = "software_versions_inputs"
