"""HDF5 dataset names: the contract between the rule that writes a file and the rules that read it.

- results/shards/{dataset}/{index}.h5, rule shard -> train, predict, plots:
  IMAGES uint8 (N, S, S, 4) RGBY, IDS, TILE_ORIGIN (N, 2), HASHES uint64 (N, 4) (each plane's pHash at
  image_size, of the whole image for its tiles), LABELS uint8 (N, 28) for train shards.
- results/predictions/{model}/fold{k}.h5, rule predict -> model_summary: a group per part (OOF,
  TEST), each with IDS, PROBS float32 (N, 28), LABELS (OOF) and VIEWS (V, N, 28) when saved.
- results/summary/{model}.h5, rule model_summary -> ensemble, and results/ensemble.h5, rule
  ensemble -> submission, plots: SUMMARY_STRINGS and SUMMARY_ARRAYS (the fields of
  summary.Predictions); the ensemble adds THRESHOLDS (28,) and OOF_PRED_CROSS_FITTED (N, 28).
"""

IMAGES = "images"
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
