import hashlib
import os
import re
import sys
from functools import lru_cache
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow_scripts"))

from hpaflow.config import (
    check_exportable,
    ConfigError,
    check_fold_count,
    dataset_path,
    read_dataset,
    validate_config,
)
from hpaflow.contracts import SHARD_KEYS, decided_by, digest, member_key, pick, shard_dataset
from hpaflow.layout import list_channels, shard_count, shard_slice
from hpaflow.package import Package, PackageError
from hpaflow.weights import WeightsError, weights_path

# Validated here, once the package is importable: errors name the key (schema + cross-key rules).
validate_config(config, Path(workflow.basedir) / "config/schemas/config.schema.yaml")

DATASETS = {d["name"]: i for i, d in enumerate(config["datasets"])}
TRAIN_DATASETS = [d["name"] for d in config["datasets"] if d["role"] == "train"]
TEST_DATASETS = [d["name"] for d in config["datasets"] if d["role"] == "test"]
MODELS = [m["name"] for m in config["models"]]
FOLDS = list(range(config["n_folds"]))
CLASSIFY = config["classify"]  # None unless fields to classify are given
TRANSFER = config["transfer"]["enabled"]
# With label transfer, rule transfer writes the submission and the ensemble's own is kept beside it.
SUBMISSION_ENSEMBLE = "results/submission_ensemble.csv" if TRANSFER else "results/submission.csv"


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


def shard_index(name):
    return f"results/shards/{name}/index.json"


def indexes(names):
    """The shard indexes of datasets, as a shard reader's input. Ancient: a rewrite of the shards that
    keeps their content (shard_size, hdf5_compression) reruns no reader; `contents` reruns them."""
    return [ancient(shard_index(n)) for n in names]


def contents(names):
    """What decides the content of datasets' shards (rule shard_content), as a shard reader's input."""
    return [f"results/shards/{n}/content.json" for n in names]


def train_shards(wildcards):
    return indexes(TRAIN_DATASETS)


def test_shards(wildcards):
    return indexes(TEST_DATASETS)


def all_indexes(wildcards):
    return indexes(DATASETS)


def shard_indexes_by_name(wildcards):
    """Every dataset's shard index as a named input `index:{dataset}` (hpaflow.contracts.members)."""
    return {member_key("index", n): ancient(shard_index(n)) for n in DATASETS}


def shard_decided(name):
    """What decides a dataset's shards (the shard rule's params): the shard keys and the dataset's own."""
    d = config["datasets"][DATASETS[name]]
    return {**pick(config, SHARD_KEYS), "dataset": shard_dataset(d)}


@lru_cache(maxsize=None)
def dataset_content(name):
    """Stands for the content of a dataset's shards: what decides them and its Ids and labels."""
    t = dataset_table(name)
    labels = "" if t.labels is None else digest(t.labels.tolist())
    return digest([shard_decided(name), digest(list(t.ids)), labels])


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


def folds_shards(wildcards):
    """The train shards whose stored pHashes give the groups; none with duplicates.policy off, so
    folds never wait for (or rerun after) the shards."""
    return [] if config["duplicates"]["policy"] == "off" else train_shards(wildcards)


def folds_settings():
    """What decides the folds beyond the labels: with policy off only the policy, so that the search
    settings (which then only feed the report) do not rerun the folds and every model after them;
    with group_by_antibody the train datasets' id_format (which of them have antibodies in their Ids)."""
    d = config["duplicates"]
    if d["policy"] == "off":
        return {"policy": "off"}
    train = [x for x in config["datasets"] if x["role"] == "train"]
    external = [x["name"] for x in train if x["external"]]
    id_format = {x["name"]: x["id_format"] for x in train} if d["group_by_antibody"] else {}
    return {**d, "external": external if d["policy"] == "drop_external" else [], "id_format": id_format}


def final_outputs(wildcards):
    """The default target: the submission only where a test dataset is configured; with label transfer its
    neighbours, figures and the ensemble's own submission too."""
    out = ["results/metrics.json", *rules.plots.output]
    if TRANSFER:
        out += [*rules.transfer.output, *rules.transfer_figure.output, SUBMISSION_ENSEMBLE]
    return (["results/submission.csv"] if TEST_DATASETS else []) + out


def model_settings(wildcards):
    """A model's config entry with its input size resolved (default: the shard row size)."""
    m = dict(next(m for m in config["models"] if m["name"] == wildcards.model))
    rows = config["tile_size"] if config["tiling"] == "grid" else config["image_size"]
    m.setdefault("image_size", rows)
    return m


def decides(stage, but=()):
    """A rule's params: the config keys that decide its stage's outputs (hpaflow.contracts), less those a
    job takes per wildcard instead (`but`: a train job's own models[] entry, params.model)."""
    return decided_by(stage, config, but)


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
def classify_listing():
    """The folder to classify as it is now (hpaflow.layout.list_channels): its listing decides the shards,
    so the same name on another folder reruns them. An unreadable or doubled channel file stops the planning."""
    c = classify_config()
    try:
        return list_channels(c["images"], c["format"])
    except ValueError as e:
        raise ConfigError(f"classify.images: {e}") from None


def classify_ids():
    return classify_listing().ids


@lru_cache(maxsize=None)
def given_package():
    """classify.package checked file by file against its manifest (content, not mtime) on every run, and
    its manifest's digest, which decides the predictions; None when the workflow's own export is used."""
    path = classify_config()["package"]
    if path is None:
        return None
    if not Path(path).exists():
        raise ConfigError(f"classify.package: {path} does not exist (an exported folder or its zip)")
    try:
        package = Package(path)
        package.verify()
    except PackageError as e:
        raise ConfigError(f"classify.package: {e}") from None
    return {"path": str(path), "manifest": digest(package.files)}


def classify_package(wildcards):
    """The workflow's own export as an input; a given package is no input (the workflow never rebuilds
    it, even inside results/export): its path and manifest digest are params instead."""
    return [] if given_package() else rules.export.output.package


def classify_package_params(wildcards):
    return given_package() or {"path": str(rules.export.output.package), "manifest": None}


def classify_shard_ids(wildcards):
    ids = classify_ids()
    return ids[shard_slice(int(wildcards.index), len(ids), CLASSIFY["shard_size"])]


def classify_shard_files(wildcards):
    """The shard's channel files by Id as listed now, each with its size and mtime: the listing decides the
    shard (a param, so another folder, a new or a replaced file reruns it). Not inputs: Snakemake reads
    braces in a file name (`{ctrl}_red.png`) as wildcards, and could then not build the job at all."""
    listing = classify_listing()
    files = {}
    for i in classify_shard_ids(wildcards):
        stats = [p.stat() for p in listing.paths(i)]
        files[i] = [[name, s.st_size, s.st_mtime_ns] for name, s in zip(listing.files[i], stats)]
    return files


def classify_shards(wildcards):
    n = shard_count(len(classify_ids()), CLASSIFY["shard_size"])
    return [f"results/classify/{wildcards.name}/shards/{i}.h5" for i in range(n)]


def classify_outputs(wildcards):
    d = f"results/classify/{classify_config()['name']}"
    return [f"{d}/predictions.csv", f"{d}/gallery.png"]


@lru_cache(maxsize=None)
def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pretrained_weights(wildcards):
    """A pretrained model's ImageNet weights, a param of its train job: the file's name and sha256, so that
    its content decides the model and pretrained_dir (where it is found) only steers. Not an input: Snakemake
    records input paths, so another folder holding the same file would rerun every model. A missing file
    stops the planning, named."""
    m = model_settings(wildcards)
    if not m["pretrained"]:
        return None
    try:
        path = weights_path(m["backbone"], config["pretrained_dir"])
    except WeightsError as e:
        raise ConfigError(f"models ({m['name']}): {e}") from None
    return {"file": path.name, "sha256": file_sha256(str(path))}


def transfer_weights(wildcards):
    """The embedding network's ImageNet weights (name and sha256; see pretrained_weights), or None."""
    t = config["transfer"]
    if not t["pretrained"]:
        return None
    try:
        path = weights_path(t["backbone"], config["pretrained_dir"])
    except WeightsError as e:
        raise ConfigError(f"transfer: {e}") from None
    return {"file": path.name, "sha256": file_sha256(str(path))}


def keyed(kind, pattern, folds=True):
    """Named inputs, one per member: `{kind}:{model}:{fold}` (or `{kind}:{model}`) -> its file, so that a
    job finds each member by what it is (hpaflow.contracts.members), never by its place in a list."""
    if folds:
        return {member_key(kind, m, k): pattern.format(model=m, fold=k) for m in MODELS for k in FOLDS}
    return {member_key(kind, m): pattern.format(model=m) for m in MODELS}


def export_transfer(wildcards):
    """With label transfer, what the package needs to transfer labels in classify: the embedding network,
    the external fields' embeddings and labels, and tau."""
    if not TRANSFER:
        return {}
    return {
        "embed_model": "results/transfer/embed.pt",
        "embeddings": "results/transfer/embeddings.h5",
        "transfer_metrics": "results/transfer/metrics.json",
    }


def exportable(wildcards):
    """Checked when the export job is planned, before any training: what one ONNX graph cannot hold
    stops the run with the key named. No input of its own."""
    check_exportable(config)
    return []
