"""Real Snakemake runs: demo data -> shards + folds, checked pixel for pixel; config errors; planning."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import imagehash
import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from conftest import DATA, SHARED, TINY, copy_workflow, fake_weights, needs_shared, plan, run_snakemake, write_config
from hpaflow.labels import encode, parse_target
from hpaflow.shards import read_shard, shard_hashes

COLORS = ["red", "green", "blue", "yellow"]


def reference_planes(images: Path, image_id: str, fmt: str) -> list[np.ndarray]:
    """The source channels decoded independently of hpaflow.io, as the spec describes them."""
    out = []
    for c in COLORS:
        if fmt == "png":
            out.append(cv2.imread(str(images / f"{image_id}_{c}.png"), cv2.IMREAD_GRAYSCALE))
        elif fmt == "tiff":
            v = tifffile.imread(images / f"{image_id}_{c}.tif")
            out.append(v if v.dtype == np.uint8 else np.round(v.astype(np.float64) * 255 / 65535).astype(np.uint8))
        else:
            bgr = cv2.imread(str(images / f"{image_id}_{c}.jpg"), cv2.IMREAD_COLOR).astype(np.float64)
            plane = {
                "red": bgr[..., 2],
                "green": bgr[..., 1],
                "blue": bgr[..., 0],
                "yellow": np.floor((bgr[..., 2] + bgr[..., 1]) / 2 + 0.5),
            }[c]
            out.append(plane.astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    wf = copy_workflow(tmp_path_factory.mktemp("wf"))
    write_config(wf / "config" / "config.yaml", TINY)
    run_snakemake(wf, "demo_data")
    run_snakemake(wf, "preprocess", "folds")
    return wf


def test_shards_match_source_pixel_for_pixel(demo_run):
    wf = demo_run
    for d in TINY["datasets"]:
        csv = pd.read_csv(wf / "data/demo" / d["labels"], dtype=str)
        n_shards = -(-len(csv) // TINY["shard_size"])
        files = sorted((wf / "results/shards" / d["name"]).glob("*.h5"))
        assert [f.name for f in files] == sorted(f"{i}.h5" for i in range(n_shards))
        shards = [read_shard(wf / "results/shards" / d["name"] / f"{i}.h5") for i in range(n_shards)]
        ids = [i for s in shards for i in s.ids]
        assert ids == csv["Id"].tolist()
        images = np.concatenate([s.images for s in shards])
        for row, image_id in enumerate(ids):
            ref = reference_planes(wf / "data/demo" / d["images"], image_id, d["format"])
            for k in range(4):
                expected = cv2.resize(ref[k], (32, 32), interpolation=cv2.INTER_AREA)
                assert np.array_equal(images[row, :, :, k], expected), (d["name"], image_id, COLORS[k])
        if d["role"] == "train":
            expected = encode([parse_target(t, "") for t in csv["Target"]])
            assert np.array_equal(np.concatenate([s.labels for s in shards]), expected)
        else:
            assert all(s.labels is None for s in shards)
        assert {s.attrs["source_format"] for s in shards} == {d["format"]}
        # Each plane's pHash is stored beside it, equal to the reference implementation's on the stored plane.
        hashes = np.concatenate([shard_hashes(f)[1] for f in files])
        for row in range(0, len(ids), 7):
            for k in range(4):
                ref = imagehash.phash(Image.fromarray(np.ascontiguousarray(images[row, :, :, k])))
                assert hashes[row, k] == int(str(ref), 16), (d["name"], ids[row], COLORS[k])
        assert (wf / "logs/shard" / d["name"] / "0.log").read_text().count("images/s") >= 1


def test_folds_cover_every_train_id_once(demo_run):
    folds = pd.read_csv(demo_run / "results/folds.csv")
    expected = []
    for d in TINY["datasets"]:
        if d["role"] == "train":
            expected += [(i, d["name"]) for i in pd.read_csv(demo_run / "data/demo" / d["labels"])["Id"]]
    assert list(zip(folds["Id"], folds["dataset"])) == expected
    assert sorted(folds["fold"].unique()) == [0, 1]


def test_rerun_has_nothing_to_do(demo_run):
    out = run_snakemake(demo_run, "preprocess", "folds", "-n")
    assert "Nothing to be done" in out.stdout + out.stderr


def test_folds_rerun_for_what_decides_them_and_nothing_else(demo_run):
    """The shards do not depend on `external` or the duplicates settings; with policy group the search
    settings rerun the folds, drop_external reruns them too, and with off nothing but the policy counts."""
    assert plan(run_snakemake(demo_run, "-n", "preprocess", "folds", "--config", "duplicates={max_distance: 5}")) == {
        "folds": "1",
        "total": "1",
    }
    drop = run_snakemake(demo_run, "-n", "preprocess", "folds", "--config", "duplicates={policy: drop_external}")
    assert plan(drop) == {"folds": "1", "total": "1"}
    off = run_snakemake(demo_run, "preprocess", "folds", "--config", "duplicates={policy: off}")
    assert "folds" in off.stdout + off.stderr
    again = run_snakemake(
        demo_run, "-n", "preprocess", "folds", "--config", "duplicates={policy: off, max_distance: 5}"
    )
    assert "Nothing to be done" in again.stdout + again.stderr
    run_snakemake(demo_run, "preprocess", "folds")  # back to the fixture's folds (policy group)


def test_without_a_test_dataset_the_default_target_skips_the_submission(demo_run, tmp_path):
    train_only = write_config(
        tmp_path / "train_only.yaml", {"datasets": [d for d in TINY["datasets"] if d["role"] == "train"]}
    )
    counts = plan(run_snakemake(demo_run, "-n", "--configfile", str(train_only)))
    assert "submission" not in counts and counts["ensemble"] == "1" and counts["plots"] == "1"
    asked = run_snakemake(demo_run, "-n", "results/submission.csv", "--configfile", str(train_only), check=False)
    assert asked.returncode != 0
    assert "datasets: no dataset has role: test, so there is nothing to submit" in asked.stdout + asked.stderr
    assert plan(run_snakemake(demo_run, "-n"))["submission"] == "1"


def test_n_folds_beyond_the_train_ids_fails_at_planning(demo_run):
    proc = run_snakemake(demo_run, "-n", "--config", "n_folds=37", check=False)
    assert proc.returncode != 0
    assert (
        "n_folds: 37 folds need at least 37 train images; the train datasets hold 36 "
        "(kaggle_train 24, fullsize_train 6, hpav18 6)"
    ) in proc.stdout + proc.stderr
    run_snakemake(demo_run, "-n", "--config", "n_folds=36")


def test_home_folder_in_data_root(demo_run):
    # Before, "data_root: folder ~/data/demo does not exist". The shards' params now name the full
    # path, so their jobs are planned again.
    proc = run_snakemake(demo_run, "-n", "preprocess", "--config", "data_root=~/data/demo", env={"HOME": str(demo_run)})
    assert plan(proc)["shard"] == "6"  # 24, 6, 6 and 8 Ids in shards of 10


def test_real_hpav18_sample_through_preprocess(workflow_dir):
    image_id = "11088_89_B5_1"
    root = workflow_dir / "hpa"
    (root / "hpav18").mkdir(parents=True)
    for c in COLORS:
        shutil.copy(DATA / f"89_B5_1_{c}.jpg", root / "hpav18" / f"{image_id}_{c}.jpg")
    (root / "v18.csv").write_text(f"Id,Target\n{image_id},6\n")
    cfg = {
        "data_root": "hpa",
        "image_size": 512,
        "models": TINY["models"],
        "datasets": [{"name": "v18", "format": "jpg", "images": "hpav18", "labels": "v18.csv", "role": "train"}],
    }
    write_config(workflow_dir / "config" / "config.yaml", cfg)
    run_snakemake(workflow_dir, "preprocess")
    s = read_shard(workflow_dir / "results/shards/v18/0.h5")
    assert s.images.shape == (1, 512, 512, 4) and list(s.ids) == [image_id]
    assert np.flatnonzero(s.labels[0]).tolist() == [6]
    for k, c in enumerate(COLORS):
        bgr = cv2.imread(str(DATA / f"89_B5_1_{c}.jpg"), cv2.IMREAD_COLOR).astype(np.float32)
        plane = {
            "red": bgr[..., 2],
            "green": bgr[..., 1],
            "blue": bgr[..., 0],
            "yellow": (bgr[..., 2] + bgr[..., 1]) / 2,
        }[c]
        expected = cv2.resize(plane, (512, 512), interpolation=cv2.INTER_AREA)
        assert np.abs(s.images[0, :, :, k].astype(np.float32) - expected).max() <= 2, c


def test_bad_image_fails_the_job_and_leaves_no_shard(tmp_path, workflow_dir):
    cfg = dict(TINY, shard_size=100)
    write_config(workflow_dir / "config" / "config.yaml", cfg)
    run_snakemake(workflow_dir, "demo_data")
    victim = pd.read_csv(workflow_dir / "data/demo/hpav18.csv")["Id"][2]
    (workflow_dir / f"data/demo/hpav18/{victim}_yellow.jpg").unlink()
    proc = run_snakemake(workflow_dir, "results/shards/hpav18/0.h5", check=False)
    assert proc.returncode != 0
    assert not (workflow_dir / "results/shards/hpav18").exists() or not any(
        (workflow_dir / "results/shards/hpav18").iterdir()
    )
    log = (workflow_dir / "logs/shard/hpav18/0.log").read_text()
    assert f"{victim}_yellow.jpg: missing file" in log and "1 of 6 image(s) failed" in log


@pytest.mark.parametrize(
    "args,message",
    [
        (["--config", "image_sise=64"], r"image_sise"),
        (["--config", "shard_size=big"], r"shard_size"),
        (["--config", "hdf5_compression=zstd"], r"hdf5_compression"),
        (["--config", "data_root=no/such/dir"], r"data_root: folder no/such/dir does not exist"),
        (["--config", "tiling=grid", "tile_size=48"], r"tile_size: 48 does not divide image_size 64"),
        (["--config", "image_size=64.0"], r"image_size: 64\.0 is not of type 'integer'"),
        (["--config", "n_folds=2.0"], r"n_folds: 2\.0 is not of type 'integer'"),
    ],
)
def test_config_errors_name_the_key(workflow_dir, args, message):
    proc = run_snakemake(workflow_dir, "-n", *args, check=False)
    assert proc.returncode != 0
    assert re.search(message, proc.stdout + proc.stderr), proc.stdout + proc.stderr


def test_missing_labels_csv_names_the_dataset_key(workflow_dir):
    root = workflow_dir / "somewhere"
    root.mkdir()
    proc = run_snakemake(workflow_dir, "-n", "--config", f"data_root={root}", check=False)
    assert proc.returncode != 0
    assert re.search(r"datasets\[0\]\.labels: .*train\.csv does not exist", proc.stdout + proc.stderr)


def test_bad_label_row_fails_at_planning(workflow_dir):
    root = workflow_dir / "data/demo"
    root.mkdir(parents=True)
    (root / "train.csv").write_text("Id,Target\na,0\nb,3 31\n")
    proc = run_snakemake(workflow_dir, "-n", "preprocess", check=False)
    assert proc.returncode != 0
    assert re.search(
        r"datasets\[0\] \('kaggle_train'\): .*train\.csv: line 3 \(Id b\): label '31'", proc.stdout + proc.stderr
    )


@needs_shared
def test_full_scale_plan_has_no_per_image_jobs(workflow_dir, tmp_path):
    for name in ["train.csv", "sample_submission.csv", "HPAv18RBGY_wodpl.csv"]:
        shutil.copy(SHARED / "hpa" / name, tmp_path / name)
    weights = fake_weights(tmp_path / "pretrained")
    proc = run_snakemake(
        workflow_dir,
        "-n",
        "--configfile",
        "config/hpa_kaggle.yaml",
        "--config",
        f"data_root={tmp_path}",
        f"pretrained_dir={weights}",
    )
    counts = plan(proc)
    # 31,072 / 1024 -> 31 shards, 74,606 -> 73, 11,702 -> 12; 3 models x 5 folds; label transfer (3 jobs).
    assert counts == {
        "shard": "116",
        "shard_content": "3",
        "shard_index": "3",
        "duplicates": "1",
        "folds": "1",
        "train": "15",
        "predict": "15",
        "model_summary": "3",
        "ensemble": "1",
        "submission": "1",
        "plots": "1",
        "embed": "1",
        "transfer": "1",
        "transfer_figure": "1",
        "all": "1",
        "total": "164",
    }
    gpus = re.findall(r"^rule (train|predict|embed):\n(?:    .*\n)*?    resources: .*?\bgpu=(\d+)", proc.stdout, re.M)
    assert len(gpus) == 31 and all(n == "1" for _, n in gpus), gpus
    # Label transfer: the ensemble's own submission is kept beside the transferred one.
    assert "results/submission_ensemble.csv" in proc.stdout and "results/transfer/embeddings.h5" in proc.stdout


def test_lint_is_clean(workflow_dir):
    proc = run_snakemake(workflow_dir, "--lint")
    assert "Congratulations" in proc.stdout + proc.stderr
