"""What decides each stage's result: one declaration per stage, read by the rules and by the scripts.

A stage names the config keys that decide its outputs (`decides`: a change reruns it, and the stages
that read its outputs), the keys that only steer how it runs (`steers`: devices, inference batch sizes,
monitoring; never a rerun), and the keys that only decide how its outputs are stored (`storage`: the
files are rewritten, nothing downstream reruns, since readers go by Ids and per-image content).
rules/common.smk builds each rule's `params` from `decides` alone (`pick`); a script rebuilds its
settings from those params plus the steering keys of the job's config (`job_config`), so a key missing
here fails the job instead of silently not rerunning it. Threads and resources steer every stage.

Keys are dotted paths into the validated config; `datasets[]` keys are a dataset entry's own keys,
taken per dataset where a job serves one dataset. Standard library only: the Snakefile imports this at
planning time, in the launcher env.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    decides: tuple[str, ...] = ()
    steers: tuple[str, ...] = ()
    storage: tuple[str, ...] = ()
    # Stages that read this stage's outputs: a decided change reruns them too.
    consumers: tuple[str, ...] = ()
    # Stages rerun by any rerun of this one, its storage changes too (the shard index lists the shards).
    rewrites: tuple[str, ...] = ()


# The keys of a dataset entry that decide its shards (`external` and `id_format` only matter to the folds).
SHARD_DATASET_KEYS = ("name", "format", "images", "labels", "role", "bits", "reduced_decode")
# Dataset keys added after shards were first written: at these values they are left out of what decides
# the shards, so that upgrading the workflow rewrites no shard and reruns no model.
SHARD_DATASET_OMITTED = {"reduced_decode": False}
# Decide the content of every shard: a change rewrites them and reruns every reader of the shards.
SHARD_KEYS = ("data_root", "image_size", "tiling", "tile_size")
SHARD_READERS = ("duplicates", "folds", "train", "predict", "plots", "export", "embed", "transfer_figure")

STAGES: dict[str, Stage] = {
    "download_hpav18_part": Stage(
        decides=("hpav18_base_url", "download.resize"),
        steers=("download.concurrency", "download.retries", "download.backoff_s", "download.timeout_s"),
    ),
    "demo_data": Stage(decides=("demo",)),
    "shard": Stage(
        decides=(*SHARD_KEYS, *(f"datasets[].{k}" for k in SHARD_DATASET_KEYS)),
        storage=("shard_size", "hdf5_compression"),
        rewrites=("shard_index",),
    ),
    # The shards' readers take them by content: shard_content's file (what decides the shards, and the
    # dataset's Ids and labels) reruns them, while the shards themselves are ancient inputs to them.
    "shard_content": Stage(
        decides=(*SHARD_KEYS, *(f"datasets[].{k}" for k in SHARD_DATASET_KEYS)), consumers=SHARD_READERS
    ),
    "shard_index": Stage(),
    "duplicates": Stage(
        decides=("duplicates.max_distance", "duplicates.channels"), consumers=("ensemble", "plots", "embed")
    ),
    "folds": Stage(
        decides=(
            "n_folds",
            "seed",
            "duplicates.policy",
            "duplicates.max_distance",
            "duplicates.channels",
            "duplicates.group_by_antibody",
            "datasets[].external",
            "datasets[].id_format",
        ),
        consumers=("train", "predict", "model_summary", "ensemble", "plots"),
    ),
    "train": Stage(
        decides=("models", "seed"),
        steers=("device", "visdom", "pretrained_dir", "stage_shards"),
        consumers=("predict", "plots", "export"),
    ),
    "predict": Stage(
        decides=(
            "predict.tta_views",
            "predict.tta_combine",
            "predict.tile_combine",
            "predict.save_views",
            "predict.crops",
            "predict.crop_placement",
            "seed",
        ),
        steers=("predict.batch_size", "device", "stage_shards"),
        consumers=("model_summary",),
    ),
    "model_summary": Stage(consumers=("ensemble",)),
    "ensemble": Stage(
        decides=(
            "thresholds.methods",
            "thresholds.final",
            "thresholds.shrink",
            "thresholds.min_positives",
            "thresholds.at_least_one",
            "ensemble.weights",
            "ensemble.weight_step",
            "duplicates.policy",
            "duplicates.max_distance",
            "duplicates.channels",
            "duplicates.group_by_antibody",
        ),
        consumers=("submission", "plots", "export", "transfer"),
    ),
    "submission": Stage(decides=("thresholds.at_least_one",), consumers=("transfer",)),
    "plots": Stage(),
    "export": Stage(
        decides=(
            "export.tta_views",
            "export.authors",
            "export.license",
            "predict.tta_views",
            "predict.tta_combine",
            "predict.crops",
            "predict.crop_placement",
            "seed",
            "thresholds.at_least_one",
            "tiling",
            "datasets",
        ),
    ),
    # Label transfer: the antibody embedding of every field, then each field's nearest external field.
    "embed": Stage(
        decides=(
            "transfer.backbone",
            "transfer.pretrained",
            "transfer.image_size",
            "transfer.embedding_size",
            "transfer.epochs",
            "transfer.batch_size",
            "transfer.lr",
            "transfer.margin",
            "transfer.scale",
            "transfer.holdout",
            "seed",
            "datasets[].name",
            "datasets[].role",
            "datasets[].external",
            "datasets[].id_format",
        ),
        steers=("device", "pretrained_dir", "stage_shards"),
        consumers=("transfer", "export"),
    ),
    "transfer": Stage(decides=("transfer.tau",), consumers=("transfer_figure",)),
    "transfer_figure": Stage(),
    "classify_shard": Stage(
        decides=("classify.images", "classify.format", "classify.bits", "classify.package"),
        storage=("classify.shard_size", "hdf5_compression"),
        consumers=("classify_predict", "classify_gallery"),
    ),
    "classify_predict": Stage(decides=("classify.package", "classify.transfer"), steers=("classify.batch_size",)),
    "classify_gallery": Stage(),
}


_ABSENT = object()


def _get(config: dict, key: str):
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT  # an optional key without a default (tile_size) or block (classify: null)
        node = node[part]
    return node


def _put(out: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    node = out
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = copy.deepcopy(value)


def shard_dataset(entry: dict) -> dict:
    """The keys of a dataset entry that decide its shards (SHARD_DATASET_OMITTED left out at their value)."""
    return {
        k: entry[k]
        for k in SHARD_DATASET_KEYS
        if k in entry and not (k in SHARD_DATASET_OMITTED and entry[k] == SHARD_DATASET_OMITTED[k])
    }


def pick(config: dict, keys: tuple[str, ...] | list[str]) -> dict:
    """The part of the config that `keys` name, nested as in the config. `datasets[].k` keys take k of
    every dataset entry; a parent key (`datasets`) takes the whole value."""
    out: dict = {}
    item_keys = [k.split("[].", 1)[1] for k in keys if k.startswith("datasets[].")]
    for key in keys:
        if not key.startswith("datasets[].") and (value := _get(config, key)) is not _ABSENT:
            _put(out, key, value)
    if item_keys and "datasets" not in out:
        out["datasets"] = [{k: d[k] for k in item_keys if k in d} for d in config["datasets"]]
    return out


def decided_by(stage: str, config: dict, but: tuple[str, ...] = ()) -> dict:
    """What decides a stage's outputs (the rule's params): its `decides` keys, less `but`."""
    return pick(config, [k for k in STAGES[stage].decides if k not in but])


def merge(a: dict, b: dict) -> dict:
    """b's keys over a's, mappings merged key by key."""
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def job_config(stage: str, decided: dict, config: dict) -> dict:
    """The config a job builds its settings from: the params the rule recorded (`decided`) and the
    stage's steering keys from the job's config. Nothing else, so that a settings class reading an
    undeclared key fails (KeyError) instead of depending on a key that reruns nothing."""
    return merge(decided, pick(config, STAGES[stage].steers))


def digest(value) -> str:
    """A short stable digest of a JSON-able value (params that stand for content)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def reruns(key: str) -> list[str]:
    """The stages a change of `key` reruns, in declaration order: the stages it decides and, through
    their consumers, every stage downstream; a storage key reruns its stage and what lists its files."""
    hit: set[str] = set()
    key = re.sub(r"\[\d+\]", "[]", key)  # datasets[1].bits -> datasets[].bits

    def decides(stage: Stage) -> bool:
        return any(
            key == k or key.startswith((k + ".", k + "[")) or k.startswith((key + ".", key + "["))
            for k in stage.decides
        )

    todo = [name for name, s in STAGES.items() if decides(s)]
    while todo:
        name = todo.pop()
        if name not in hit:
            hit.add(name)
            todo += [*STAGES[name].consumers, *STAGES[name].rewrites]
    for name, s in STAGES.items():
        if key in s.storage:
            hit.update([name, *s.rewrites])
    return [name for name in STAGES if name in hit]


def rerun_table() -> str:
    """docs: every declared key and the stages a change of it reruns (markdown)."""
    keys: dict[str, None] = {}
    for s in STAGES.values():
        keys.update(dict.fromkeys([*s.decides, *s.storage, *s.steers]))
    lines = ["| config key | reruns |", "|---|---|"]
    for key in sorted(keys):
        stages = reruns(key)
        lines.append(f"| `{key}` | {', '.join(stages) if stages else 'nothing (steers how jobs run)'} |")
    return "\n".join(lines) + "\n"


# Members of the ensemble reach a job keyed by what they are, never by their place in a list: a named
# input `{kind}:{model}:{fold}` (or `{kind}:{model}`) per file. Model names hold no ':' (schema pattern).
def member_key(kind: str, model: str, fold: int | None = None) -> str:
    return f"{kind}:{model}" if fold is None else f"{kind}:{model}:{fold}"


def members(named, kind: str) -> dict:
    """The inputs of one kind from a job's named inputs ((name, path) pairs, e.g. snakemake.input.items()):
    {(model, fold): path}, or {model: path} for per-model inputs, sorted by key."""
    out = {}
    for name, path in named:
        parts = name.split(":")
        if parts[0] == kind and len(parts) in (2, 3):
            out[parts[1] if len(parts) == 2 else (parts[1], int(parts[2]))] = str(path)
    return dict(sorted(out.items()))


if __name__ == "__main__":  # python -m hpaflow.contracts: the rerun table of docs/usage.md
    import sys

    sys.stdout.write(rerun_table())
