"""Reruns after inputs change or a job is killed: no stale model, no leak, no leftovers, readable files."""

from __future__ import annotations

import os
import shutil
import stat

import pandas as pd
import pytest
import torch

from conftest import TINY, copy_workflow, kill_snakemake_when, run_snakemake, workflow_config, write_config
from hpaflow.predict import LeakError, PredictSettings, run_predict

# Train datasets only: an out-of-fold run, whose default target ends with metrics.json and the report.
NO_TEST = workflow_config("no_test")
FOLD0 = "results/models/m/fold0"


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def last_attempt(log_path) -> str:
    return log_path.read_text().split("=== start")[-1]


def train_shards(wf) -> list[str]:
    return sorted(str(p) for d in NO_TEST["datasets"] for p in (wf / "results/shards" / d["name"]).glob("*.h5"))


def test_changed_folds_or_labels_retrain_from_scratch(tmp_path, umask_022):
    wf = copy_workflow(tmp_path / "wf")
    write_config(wf / "config/config.yaml", NO_TEST)
    run_snakemake(wf, "demo_data")
    run = run_snakemake(wf)
    assert "submission" not in run.stderr and not (wf / "results/submission.csv").exists()
    assert (wf / "results/metrics.json").exists() and (wf / "results/plots/per_class_f1.png").exists()
    # Every output is as readable as a plain write under umask 022 makes it (mkstemp gave 0600).
    for path in [
        "results/shards/kaggle_train/0.h5",
        "results/folds.csv",
        f"{FOLD0}/best.pt",
        f"{FOLD0}/metrics.csv",
        f"{FOLD0}/checkpoints/last.pt",
        "results/predictions/m/fold0.h5",
        "results/summary/m.h5",
        "results/ensemble.h5",
        "results/metrics.json",
        "results/thresholds.csv",
        "results/plots/per_class_f1.png",
        "data/demo/train.csv",
    ]:
        assert stat.S_IMODE((wf / path).stat().st_mode) == 0o644, path
    stale = tmp_path / "stale_best.pt"
    shutil.copy(wf / f"{FOLD0}/best.pt", stale)
    first = torch.load(stale, weights_only=False)

    # n_folds 2 -> 3: new folds, so fold 0's model is trained afresh, not resumed.
    write_config(wf / "config/config.yaml", {**NO_TEST, "n_folds": 3})
    run_snakemake(wf, "results/predictions/m/fold0.h5")
    log = last_attempt(wf / "logs/train/m/fold0.log")
    assert "is from another job (changed: training Ids, validation Ids): starting from scratch" in log, log
    assert "resuming" not in log and "epoch 1/2" in log
    folds = pd.read_csv(wf / "results/folds.csv")
    held_out = set(folds.loc[folds["fold"] == 0, "Id"])
    second = torch.load(wf / f"{FOLD0}/best.pt", weights_only=False)
    assert set(second["train_ids"]) == set(folds["Id"]) - held_out
    leaked = held_out & set(first["train_ids"])
    assert leaked  # the stale model was trained on part of the new fold 0 ...
    with pytest.raises(LeakError, match=f"was trained on {len(leaked)} Id"):  # ... and predict refuses it
        run_predict(
            str(stale),
            train_shards(wf),
            [],
            str(wf / "results/folds.csv"),
            0,
            str(tmp_path / "p.h5"),
            PredictSettings(
                [0],
                "mean",
                "mean",
                save_views=False,
                batch_size=8,
                device="cpu",
                threads=1,
                crops=0,
                crop_placement="fixed",
                seed=0,
            ),
        )
    assert not (tmp_path / "p.h5").exists()

    # A corrected label: the shard is rebuilt and the model trained afresh on the new labels.
    csv = wf / "data/demo/train.csv"
    table = pd.read_csv(csv, dtype=str)
    table.loc[0, "Target"] = "27" if table.loc[0, "Target"] != "27" else "0"
    table.to_csv(csv, index=False)
    run_snakemake(wf, f"{FOLD0}/best.pt")
    log = last_attempt(wf / "logs/train/m/fold0.log")
    assert "is from another job (changed:" in log and "labels): starting from scratch" in log, log
    assert "resuming" not in log
    third = torch.load(wf / f"{FOLD0}/best.pt", weights_only=False)
    assert third["fingerprint"]["labels"] != second["fingerprint"]["labels"]

    # Nothing changed: the finished job is not rerun, and a forced rerun resumes its own checkpoint.
    run_snakemake(wf, "--forcerun", "train", "--", f"{FOLD0}/best.pt")
    assert "resuming from" in last_attempt(wf / "logs/train/m/fold0.log")


def test_killed_shard_job_leaves_no_temporary_file_after_the_rerun(tmp_path, umask_022):
    wf = copy_workflow(tmp_path / "wf")
    write_config(wf / "config/config.yaml", TINY)
    run_snakemake(wf, "demo_data")
    # The third image's red channel becomes a FIFO: reading it blocks, with the shard's temporary file
    # open, until the whole run is killed (-9): a job killed mid-write, deterministically.
    image_id = pd.read_csv(wf / "data/demo/train.csv")["Id"][2]
    victim = wf / f"data/demo/train/{image_id}_red.png"
    content = victim.read_bytes()
    victim.unlink()
    os.mkfifo(victim)
    shard_dir = wf / "results/shards/kaggle_train"
    target = "results/shards/kaggle_train/0.h5"
    kill_snakemake_when(wf, [target], lambda: any(shard_dir.glob(".0.h5.*.tmp")))
    left = [p.name for p in shard_dir.iterdir()]
    assert len(left) == 1 and left[0].startswith(".0.h5.") and left[0].endswith(".tmp")

    victim.unlink()
    victim.write_bytes(content)
    run_snakemake(wf, "--unlock")
    run_snakemake(wf, target)
    assert [p.name for p in shard_dir.iterdir()] == ["0.h5"]
    assert (
        f"removing {left[0]}, left by an interrupted earlier write of 0.h5"
        in (wf / "logs/shard/kaggle_train/0.log").read_text()
    )
    assert stat.S_IMODE((shard_dir / "0.h5").stat().st_mode) == 0o644
