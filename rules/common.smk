import os
import re
import sys
from functools import lru_cache
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow_scripts"))

from hpaflow.config import (
    ConfigError,
    check_fold_count,
    dataset_path,
    read_dataset,
    validate_config,
)
from hpaflow.layout import COLORS, channel_path, find_ids, shard_count, shard_slice

# Validated here, once the package is importable: errors name the key (schema + cross-key rules).
validate_config(config, Path(workflow.basedir) / "config/schemas/config.schema.yaml")

DATASETS = {d["name"]: i for i, d in enumerate(config["datasets"])}
TRAIN_DATASETS = [d["name"] for d in config["datasets"] if d["role"] == "train"]
TEST_DATASETS = [d["name"] for d in config["datasets"] if d["role"] == "test"]
MODELS = [m["name"] for m in config["models"]]
FOLDS = list(range(config["n_folds"]))
CLASSIFY = config["classify"]  # None unless fields to classify are given


wildcard_constraints:
    dataset="|".join(map(re.escape, DATASETS)) or "^$",
    index=r"\d+",
    model="|".join(map(re.escape, MODELS)) or "^$",
    fold=r"\d+",
    part=r"\d+",
    name=re.escape(CLASSIFY["name"]) if CLASSIFY else "^$",


@lru_cache(maxsize=None)
def dataset_table(name):
    """Ids (and labels) of a dataset, read from its csv when first needed.

    Lazily, so that `snakemake demo_data` works before the demo csvs exist.
    """
    return read_dataset(config, DATASETS[name])


def n_shards(name):
    return shard_count(len(dataset_table(name)), config["shard_size"])


def shards_of(name):
    return [f"results/shards/{name}/{i}.h5" for i in range(n_shards(name))]


def all_shards(wildcards):
    return [f for name in DATASETS for f in shards_of(name)]


def train_shards(wildcards):
    return [f for name in TRAIN_DATASETS for f in shards_of(name)]


def test_shards(wildcards):
    return [f for name in TEST_DATASETS for f in shards_of(name)]


def labels_csv(wildcards):
    return str(dataset_path(config, DATASETS[wildcards.dataset], "labels"))


def test_labels_csvs(wildcards):
    if not TEST_DATASETS:
        raise ConfigError(
            "datasets: no dataset has role: test, so there is nothing to submit; without one the "
            "default target ends with results/metrics.json and the report (out-of-fold only)"
        )
    return [str(dataset_path(config, DATASETS[n], "labels")) for n in TEST_DATASETS]


def train_labels_csvs(wildcards):
    # Checked here, when planning the folds job: n_folds against the train Ids in the csvs.
    check_fold_count(config, {name: dataset_table(name) for name in TRAIN_DATASETS})
    return [str(dataset_path(config, DATASETS[n], "labels")) for n in TRAIN_DATASETS]


def shard_dataset_keys(name):
    """A dataset's keys that decide its shards (`external` only matters to the folds: changing it
    must not rewrite shards)."""
    return {k: v for k, v in config["datasets"][DATASETS[name]].items() if k != "external"}


def folds_shards(wildcards):
    """The train shards whose stored pHashes give the groups; none with duplicates.policy off, so
    folds never wait for (or rerun after) the shards."""
    return [] if config["duplicates"]["policy"] == "off" else train_shards(wildcards)


def folds_settings():
    """What decides the folds beyond the labels: with policy off only the policy, so that the search
    settings (which then only feed the report) do not rerun the folds and every model after them."""
    d = config["duplicates"]
    if d["policy"] == "off":
        return {"policy": "off"}
    external = [x["name"] for x in config["datasets"] if x["role"] == "train" and x["external"]]
    return {**d, "external": external if d["policy"] == "drop_external" else []}


def final_outputs(wildcards):
    """The default target: the submission only where a test dataset is configured."""
    out = ["results/metrics.json", *rules.plots.output]
    return (["results/submission.csv"] if TEST_DATASETS else []) + out


def model_settings(wildcards):
    """A model's config entry with its input size resolved (default: the shard row size)."""
    m = dict(next(m for m in config["models"] if m["name"] == wildcards.model))
    rows = config["tile_size"] if config["tiling"] == "grid" else config["image_size"]
    m.setdefault("image_size", rows)
    return m


def config_keys(*keys):
    """The part of the config a rule's settings are built from (hpaflow's from_config): a job reruns
    when one of these keys changes, not when any key does."""
    return {k: config[k] for k in keys}


def job_threads(rule):
    return config["resources"][rule]["threads"]


def job_resources(rule):
    # Sizes live in the config (schema defaults = full scale); the SLURM profile only places jobs.
    return {k: v for k, v in config["resources"][rule].items() if k != "threads"}


def classify_config():
    if CLASSIFY is None:
        raise ConfigError(
            "classify: no fields of view to classify; give them, e.g. snakemake classify --config "
            "'classify={name: plate42, images: /data/new, format: jpg}' (keys: config/README.md)"
        )
    return CLASSIFY


@lru_cache(maxsize=None)
def classify_ids():
    """The Ids in classify.images, found when first needed (a missing channel stops the planning)."""
    c = classify_config()
    try:
        return find_ids(c["images"], c["format"])
    except ValueError as e:
        raise ConfigError(f"classify.images: {e}") from None


def classify_package(wildcards):
    """The exported package: classify.package, else the one this workflow exports."""
    path = classify_config()["package"]
    if path is None:
        return rules.export.output.package
    if not Path(path).exists():
        raise ConfigError(f"classify.package: {path} does not exist (an exported folder or its zip)")
    return path


def classify_shard_ids(wildcards):
    ids = classify_ids()
    return ids[shard_slice(int(wildcards.index), len(ids), config["shard_size"])]


def classify_shard_images(wildcards):
    c = classify_config()
    return [
        str(channel_path(c["images"], i, color, c["format"])) for i in classify_shard_ids(wildcards) for color in COLORS
    ]


def classify_shards(wildcards):
    n = shard_count(len(classify_ids()), config["shard_size"])
    return [f"results/classify/{wildcards.name}/shards/{i}.h5" for i in range(n)]


def classify_outputs(wildcards):
    d = f"results/classify/{classify_config()['name']}"
    return [f"{d}/predictions.csv", f"{d}/gallery.png"]
