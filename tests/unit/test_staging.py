"""Node-local staging of shards (stage_shards, hpaflow.staging): real copies on the real disk, the fallbacks
to the shared copy, and a real train and predict run reading only the staged copies (issue 23)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, copy_workflow, run_snakemake, workflow_config, write_config, write_noise_pngs
from hpaflow.config import validate_config
from hpaflow.predict import PredictSettings, run_predict
from hpaflow.shards import ShardSpec, write_shard
from hpaflow.staging import STAGE_MARGIN, local_names, staged, staged_groups
from hpaflow.train import TrainConfig, train

SCHEMA = REPO / "config" / "schemas" / "config.schema.yaml"
DEMO = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.fixture
def shared(tmp_path) -> list[str]:
    """Three "shards" of known bytes, two with the same file name in different dataset folders."""
    files = []
    for k, rel in enumerate(["kaggle/0.h5", "hpav18/0.h5", "hpav18/1.h5"]):
        f = tmp_path / "shared" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(np.random.default_rng(k).integers(0, 256, 100_000 + k, dtype=np.uint8).tobytes())
        files.append(str(f))
    return files


@pytest.fixture
def node(tmp_path) -> Path:
    d = tmp_path / "node"
    d.mkdir()
    return d


def test_copies_equal_the_originals_in_order_and_are_removed_at_exit(shared, node, caplog):
    files = [shared[1], shared[0], shared[2], shared[1]]  # listed twice: copied once
    caplog.set_level(logging.INFO, logger="hpaflow")
    with staged(files, str(node)) as local:
        assert len(local) == 4 and local[0] == local[3]
        (stage,) = node.iterdir()  # one folder of this job's own
        assert stage.name.startswith("hpaflow-shards-")
        assert [Path(p).relative_to(stage).as_posix() for p in local] == [
            "hpav18/0.h5",
            "kaggle/0.h5",
            "hpav18/1.h5",
            "hpav18/0.h5",
        ]
        for src, copy in zip(files, local):
            assert Path(copy).read_bytes() == Path(src).read_bytes()
        assert sorted(p.name for p in stage.rglob("*")) == ["0.h5", "0.h5", "1.h5", "hpav18", "kaggle"]  # no .part
    assert list(node.iterdir()) == []
    assert f"stage_shards: 3 shards, 0.3 MB copied to {stage} in " in caplog.text and " MB/s)" in caplog.text
    assert f"stage_shards: removed the staged copies in {stage}" in caplog.text


def test_local_names_keep_the_dataset_folder_and_never_collide():
    names = local_names(["r/shards/a/0.h5", "r/shards/b/0.h5", "other/a/0.h5", "x.h5"])
    assert [n.as_posix() for n in names] == ["a/0.h5", "b/0.h5", "2_a/0.h5", "x.h5"]


def test_copies_are_removed_when_the_job_fails(shared, node):
    with pytest.raises(RuntimeError, match="the job failed"):
        with staged(shared, str(node)) as local:
            assert all(Path(p).is_file() and Path(p).is_relative_to(node) for p in local)
            raise RuntimeError("the job failed")
    assert list(node.iterdir()) == []
    assert all(Path(f).is_file() for f in shared)  # the shared copy is untouched


@pytest.mark.parametrize("form", ["$HPAFLOW_NODE_TMP", "${HPAFLOW_NODE_TMP}", "${HPAFLOW_NODE_TMP}/sub"])
def test_environment_variables_are_expanded_on_the_node(shared, node, monkeypatch, form):
    (node / "sub").mkdir()
    monkeypatch.setenv("HPAFLOW_NODE_TMP", str(node))
    expected = node / "sub" if form.endswith("/sub") else node
    with staged(shared, form) as local:
        assert all(Path(p).parent.parent.parent == expected for p in local), local
    assert list(expected.glob("hpaflow-shards-*")) == []


@pytest.mark.parametrize("value", [None, ""])
def test_unset_variable_reads_the_shared_copy_with_a_warning(shared, monkeypatch, caplog, value):
    if value is None:
        monkeypatch.delenv("HPAFLOW_NO_SUCH_VAR", raising=False)
    else:
        monkeypatch.setenv("HPAFLOW_NO_SUCH_VAR", value)  # set but empty: "" would be the working folder
    with staged(shared, "${HPAFLOW_NO_SUCH_VAR}/x") as local:
        assert local == shared
    assert (
        "stage_shards: ${HPAFLOW_NO_SUCH_VAR}/x: environment variable $HPAFLOW_NO_SUCH_VAR is not set on this "
        "node; reading the shared copy" in caplog.text
    )


def test_missing_folder_reads_the_shared_copy_with_a_warning(shared, tmp_path, caplog):
    with staged(shared, str(tmp_path / "nope")) as local:
        assert local == shared
    assert "is not a folder on this node; reading the shared copy" in caplog.text and "nope" in caplog.text
    assert not (tmp_path / "nope").exists()  # not made: a missing local disk is a setup problem to report


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to any folder")
def test_unwritable_folder_reads_the_shared_copy_with_a_warning(shared, node, caplog):
    node.chmod(0o500)
    try:
        with staged(shared, str(node)) as local:
            assert local == shared
    finally:
        node.chmod(0o700)
    assert f"stage_shards: {node} ({node}) is not writable; reading the shared copy" in caplog.text


def test_not_enough_room_reads_the_shared_copy_with_a_warning(shared, node, caplog):
    """A real disk check: a margin beyond the disk's free space leaves no room for the copies."""
    free = shutil.disk_usage(node).free
    with staged(shared, str(node), margin=free + 1) as local:
        assert local == shared
        assert list(node.iterdir()) == []  # nothing copied
    needed = sum(os.path.getsize(f) for f in shared)
    message = caplog.records[-1].getMessage()
    assert caplog.records[-1].levelname == "WARNING"
    assert message.startswith(f"stage_shards: {node} has ") and " free; the 3 shards need " in message
    assert f"need {needed:,} bytes ({needed / 1e9:.2f} GB) plus a margin of {free + 1:,} bytes" in message
    assert message.endswith("reading the shared copy")
    # the free bytes as measured then: within what other writers on this disk can change meanwhile
    said = int(message.split(" has ")[1].split(" bytes")[0].replace(",", ""))
    assert abs(said - free) < 1 << 30


def test_a_failed_copy_reads_the_shared_copy_and_leaves_nothing(shared, node, caplog, tmp_path):
    (tmp_path / "shared" / "hpav18" / "2.h5").mkdir()  # not a file: copyfile fails after two good copies
    files = [*shared, str(tmp_path / "shared" / "hpav18" / "2.h5")]
    with staged(files, str(node)) as local:
        assert local == files
    assert list(node.iterdir()) == []  # the partial copy removed
    assert "stage_shards: copying to " in caplog.text and "failed" in caplog.text and "needed" in caplog.text


def test_none_reads_the_shared_copy_silently(shared, caplog):
    caplog.set_level(logging.INFO, logger="hpaflow")
    with staged(shared, None) as local:
        assert local == shared
    with staged_groups({"train": shared[:1], "test": shared[1:]}, None) as groups:
        assert groups == {"train": shared[:1], "test": shared[1:]}
    assert caplog.text == ""
    assert STAGE_MARGIN == 1 << 30


def test_groups_are_staged_together_and_keep_their_order(shared, node):
    with staged_groups({"train": [shared[2]], "test": [shared[0], shared[1]], "none": []}, str(node)) as groups:
        assert list(groups) == ["train", "test", "none"] and groups["none"] == []
        assert [Path(p).read_bytes() for p in groups["test"]] == [Path(f).read_bytes() for f in shared[:2]]
        assert Path(groups["train"][0]).read_bytes() == Path(shared[2]).read_bytes()
        assert len({Path(p).parent.parent for p in groups["train"] + groups["test"]}) == 1  # one folder
    assert list(node.iterdir()) == []


# ------------------------------------------------------------------ a real train and predict job
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """12 random 32 px fields in a train shard (8 rows of fold 1, 4 of fold 0) and 3 in a test shard."""
    d = tmp_path_factory.mktemp("staged")
    rng = np.random.default_rng(0)
    ids = [f"f{i:02d}" for i in range(15)]
    write_noise_pngs(d, ids, rng)
    labels = (rng.random((12, 28)) < 0.2).astype(np.uint8)
    shards = d / "results" / "shards"
    (shards / "ds").mkdir(parents=True)
    (shards / "test").mkdir()
    write_shard(shards / "ds" / "0.h5", ShardSpec("ds", "png", str(d), "train", 32), ids[:12], labels)
    write_shard(shards / "test" / "0.h5", ShardSpec("test", "png", str(d), "test", 32), ids[12:], None)
    (d / "folds.csv").write_text("Id,dataset,fold\n" + "".join(f"{i},ds,{int(k >= 4)}\n" for k, i in enumerate(ids)))
    return d


def train_config() -> TrainConfig:
    entry = {"name": "m", "backbone": "resnet18", "pretrained": False, "batch_size": 4, "epochs": 1}
    config = validate_config(
        {"data_root": "x", "datasets": DEMO["datasets"], "models": [entry], "device": "cpu"}, SCHEMA
    )
    return TrainConfig.from_config(config, {**config["models"][0], "image_size": 32}, fold=0, threads=1)


PREDICT = PredictSettings([0, 5], "mean", "mean", True, 4, "cpu", 1, 0, "fixed", 0)


def predictions(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path) as h5:
        out = {}
        h5.visititems(lambda name, x: out.update({name: x[...]}) if isinstance(x, h5py.Dataset) else None)
        return out | {f"attr {k}": v for k, v in h5.attrs.items()}


def test_train_and_predict_on_staged_shards_equal_the_shared_reads_and_resume(
    tiny_data, tmp_path, caplog, one_torch_thread
):
    """The jobs as workflow_scripts/train.py and predict.py run them: with the shared shards moved away
    while they run, every read is of the staged copies; models, predictions and resume are unchanged."""
    caplog.set_level(logging.INFO, logger="hpaflow")
    shards = tiny_data / "results" / "shards"
    train_files, test_files = [str(shards / "ds" / "0.h5")], [str(shards / "test" / "0.h5")]
    folds, cfg, node = str(tiny_data / "folds.csv"), train_config(), tmp_path / "node"
    node.mkdir()

    def run(where: str | None, out: Path, predict_too: bool = True) -> None:
        with staged(train_files, where) as local:
            if where is not None:
                shards.rename(tiny_data / "away")  # the shared copy is gone while the job reads
            try:
                train(cfg, local, folds, out)
            finally:
                if where is not None:
                    (tiny_data / "away").rename(shards)
        if predict_too:
            with staged_groups({"train": train_files, "test": test_files}, where) as g:
                if where is not None:
                    shards.rename(tiny_data / "away")
                try:
                    run_predict(str(out / "best.pt"), g["train"], g["test"], folds, 0, str(out / "pred.h5"), PREDICT)
                finally:
                    if where is not None:
                        (tiny_data / "away").rename(shards)

    run(str(node), tmp_path / "staged")
    assert caplog.text.count("stage_shards: 1 shards, ") == 1 and caplog.text.count("stage_shards: 2 shards, ") == 1
    assert list(node.iterdir()) == []
    run(None, tmp_path / "shared")

    a = torch.load(tmp_path / "staged" / "best.pt", weights_only=False)
    b = torch.load(tmp_path / "shared" / "best.pt", weights_only=False)
    assert a["fingerprint"] == b["fingerprint"]
    for name, w in a["model"].items():
        assert torch.equal(w, b["model"][name]), name
    pa, pb = predictions(tmp_path / "staged" / "pred.h5"), predictions(tmp_path / "shared" / "pred.h5")
    assert pa.keys() == pb.keys() and {"oof/probs", "test/probs", "test/views"} <= pa.keys()
    for k in pa:
        assert np.array_equal(pa[k], pb[k]), k

    # The staged job's checkpoint resumes from the shared shards (and the shared one's from staged shards).
    caplog.clear()
    run(None, tmp_path / "staged", predict_too=False)
    run(str(node), tmp_path / "shared", predict_too=False)
    assert caplog.text.count("resuming from") == 2 and "starting from scratch" not in caplog.text


@pytest.mark.slow
def test_snakemake_train_predict_and_embed_jobs_stage_their_shards(tmp_path):
    """The rule scripts pass stage_shards on: a real Snakemake run (1.5-2 minutes on 2 cores), $VAR expanded
    in each job, each job's log telling the copy and its removal, nothing left on the "node"."""
    wf = copy_workflow(tmp_path / "wf")
    node = tmp_path / "node"
    node.mkdir()
    config = workflow_config("transfer")  # label transfer on: the embed job runs too
    write_config(wf / "config" / "config.yaml", {**config, "stage_shards": "$HPAFLOW_TEST_NODE"})
    run_snakemake(wf, "demo_data")
    targets = ["results/predictions/m/fold0.h5", "results/transfer/embeddings.h5"]
    run_snakemake(wf, *targets, env={"HPAFLOW_TEST_NODE": str(node)})
    shards = {
        d["name"]: len(json.loads((wf / f"results/shards/{d['name']}/index.json").read_text())["shards"])
        for d in config["datasets"]
    }
    train_shards = sum(n for d, n in zip(config["datasets"], shards.values()) if d["role"] == "train")
    every = sum(shards.values())  # predict: train and test shards; embed: every dataset's
    for log, n in [("train/m/fold0", train_shards), ("predict/m/fold0", every), ("transfer/embed", every)]:
        text = (wf / f"logs/{log}.log").read_text()
        assert f" MB copied to {node}/hpaflow-shards-" in text, text
        assert f"stage_shards: {n} shards, " in text, text
        assert f"stage_shards: removed the staged copies in {node}/hpaflow-shards-" in text
    assert list(node.iterdir()) == []
    with h5py.File(wf / "results/predictions/m/fold0.h5") as h5:
        assert len(h5["test/ids"]) == config["demo"]["n_test"]
