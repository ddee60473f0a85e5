"""The rerun table of docs/usage.md holds: on a completed tiny run, changing each key plans exactly the
stages the table names (hpaflow.contracts.reruns), no more and no fewer."""

from __future__ import annotations

import copy

import pytest

from conftest import TINY, copy_workflow, plan, run_snakemake, write_config
from hpaflow.contracts import reruns

# The default target's rules: what `snakemake -n` can plan here (export and classify are other targets).
TARGET = {"shard", "shard_index", "shard_content", "duplicates", "folds", "train", "predict", "model_summary"}
TARGET |= {"ensemble", "submission", "plots"}


def setting(key: str, value):
    def change(c: dict) -> None:
        *parents, last = key.replace("[", ".").replace("]", "").split(".")
        node = c
        for p in parents:
            node = node[int(p)] if p.isdigit() else node.setdefault(p, {})
        node[int(last) if last.isdigit() else last] = value

    return change


CASES = [
    ("visdom", {"server": "http://127.0.0.1", "port": 9}),
    ("device", "cpu"),
    ("pretrained_dir", "elsewhere"),
    ("predict.batch_size", 3),
    ("resources.train.mem_mb", 1234),
    ("hdf5_compression", "lzf"),
    ("shard_size", 7),
    ("predict.tta_views", [0]),
    ("thresholds.shrink", 5.0),
    ("ensemble.weights", "fitted"),
    ("models[0].epochs", 2),
    ("seed", 1),
    ("n_folds", 3),
    ("duplicates.max_distance", 8),
    ("duplicates.policy", "off"),
    ("datasets[2].id_format", "plain"),
    ("datasets[0].bits", 12),
    ("image_size", 48),
]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    wf = copy_workflow(tmp_path_factory.mktemp("rerun") / "wf")
    write_config(wf / "config/config.yaml", TINY)
    run_snakemake(wf, "demo_data")
    run_snakemake(wf)
    assert plan(run_snakemake(wf, "-n")) == {}  # complete: nothing to do
    return wf


@pytest.mark.slow
@pytest.mark.parametrize("key,value", CASES, ids=[k for k, _ in CASES])
def test_a_changed_key_reruns_what_the_table_says(done, key, value):
    config = copy.deepcopy(TINY)
    setting(key, value)(config)
    write_config(done / "config/config.yaml", config)
    try:
        planned = set(plan(run_snakemake(done, "-n"))) - {"all", "total"}
    finally:
        write_config(done / "config/config.yaml", TINY)
    table_key = key.split(".")[0] if key.startswith(("resources", "visdom")) else key
    expected = set(reruns(table_key)) & TARGET
    assert planned == expected, f"{key}: planned {sorted(planned)}, table {sorted(expected)}"
