"""The benchmark scripts keep running (at their smallest size; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from hpaflow.shards import COMPRESSIONS


def test_train_step_benchmark_runs(tmp_path):
    out = tmp_path / "train_step.json"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "train_step.py"),
            "--size",
            "32",
            "--batch",
            "4",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--workers",
            "0",
            "--backbones",
            "resnet18",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    rows = json.loads(out.read_text())
    assert [r["backbone"] for r in rows] == ["resnet18"]
    assert rows[0]["in_memory_img_s"] > 0 and rows[0]["loader_img_s"] > 0


def test_benchmark_suite_runs_at_its_smallest_size(tmp_path):
    out = tmp_path / "benchmarks.json"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "run.py"),
            "--quick",
            "--images",
            "2",
            "--recipes",
            "seed",
            "--recipe-scale",
            "0.125",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=1500,  # the recipe costs add minutes (snakemake -n, shards, step times) on a busy 2-core machine
    )
    res = json.loads(out.read_text())
    for key in [
        "shard_png_ratio",
        "shard_tiff_ratio",
        "shard_jpg_ratio",
        "loader_speedup_vs_png",
        "thresholds_100k_seconds",
        "dryrun_fullscale_seconds",
        "dryrun_demo_seconds",
        "classify_onnx_vs_torch_cpu",
        "duplicates_117k_seconds",
        "codec_read_img_s_512",
        "loader_img_s_per_worker_512",
        "loader_img_s_per_worker_1024",
        "loader_workers_for_1000_img_s_512",
        "loader_workers_for_300_img_s_1024",
    ]:
        assert isinstance(res[key], (int, float)) and res[key] > 0, key
    # codecs: every codec on every field kind at 512 and 1024 px; the real field where this clone has it
    codecs = res["codecs"]
    real = (REPO.parent / "shared" / "data" / "hpav18_sample").is_dir()
    assert set(codecs["fields"]) == ({"real", "kaggle", "demo"} if real else {"demo"})
    for sizes in codecs["fields"].values():
        assert set(sizes) == {"512", "1024"} and all(set(by) == set(COMPRESSIONS) for by in sizes.values())
    none = codecs["fields"]["demo"]["512"]["none"]
    assert 0.99 < none["bytes_ratio"] < 1.01 and none["read_img_s"] > 0  # none stores the raw bytes
    if real:
        assert 0 < res["codec_bytes_ratio_real"] <= 1.01
    assert res["duplicates"]["exact_on_subset"] is True
    # the seed recipe's cost: 5 folds x 3 members; 31 + 73 + 12 shards of 1024 rows; bytes per codec; ratios
    jobs = res["recipe_jobs"]["seed"]
    assert (jobs["train"], jobs["predict"], jobs["shard"]) == (15, 15, 116)
    assert res["recipe_images"]["seed"] == {"kaggle_train": 31072, "hpav18": 74606, "kaggle_test": 11702}
    disk = res["recipe_shard_bytes"]["seed"]
    assert set(disk) == set(COMPRESSIONS) and disk["none"] > 117_380 * 512 * 512 * 4 > disk["gzip"]
    assert res["recipe_step_ratios"]["seed"]["resnet18"] == 1.0
    assert res["recipe_step_ratios"]["seed"]["resnet50"] > 0 and res["recipe_step"]["scale"] == 0.125


# --- benchmarks/recipe_cost.py: the recipes' cost before running (its CPU-side parts, known answers)

sys.path.insert(0, str(REPO / "benchmarks"))
import recipe_cost as rc  # noqa: E402

TINY_RECIPE = """
data_root: data
datasets:
  - {name: tr, format: png, images: train, labels: train.csv, role: train}
  - {name: te, format: png, images: test, labels: sample_submission.csv, role: test}
image_size: 768
n_folds: 4
models:
  - {name: a, backbone: resnet18, crop_size: 512, epochs: 3}
  - {name: b, backbone: resnet34, image_size: 384, epochs: 2, average_last: 2, head: concat_pool}
predict: {tta_views: [0, 5], crops: 4}
"""


def write_recipe(folder: Path, name: str = "tiny", text: str = TINY_RECIPE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(text)
    return folder / f"{name}.yaml"


def test_members_take_the_schema_defaults_and_their_sizes(tmp_path):
    r = rc.load_recipe(write_recipe(tmp_path))
    a, b = r.members
    assert (r.name, r.folds, r.views, r.crops, r.shard_geometry) == ("tiny", 4, 2, 4, (768, "none", None))
    # a: image_size from the shards' 768, trained on 512 crops, predicted on 4 crops of 512
    assert (a.image_size, a.train_size, a.predict_size(r.crops), a.crops_scored(r.crops)) == (768, 512, 512, 4)
    assert (a.head, a.batch_size, a.average_last, a.color_mode) == ("linear", 32, 1, "gyb")
    # b: no crop_size, so the whole 384 px image everywhere, one "crop"
    assert (b.image_size, b.train_size, b.predict_size(r.crops), b.crops_scored(r.crops)) == (384, 384, 384, 1)
    assert (b.head, b.head_hidden, b.dropout, b.average_last) == ("concat_pool", 512, 0.5, 2)
    assert a.predict_size(0) == 768 and a.crops_scored(0) == 1  # predict.crops 0: the whole image


def test_every_shipped_recipe_loads_with_its_members():
    recipes = rc.load_recipes()
    assert recipes, "no config/recipes/*.yaml"
    for r in recipes:
        assert r.members and all(m.train_size <= m.image_size for m in r.members), r.name


def test_csv_rows_and_dataset_rows(tmp_path, monkeypatch):
    (tmp_path / "train.csv").write_text("Id,Target\na,1\nb,2 3\n\nc,3\n")
    r = rc.load_recipe(write_recipe(tmp_path / "recipes"))
    assert rc.csv_rows(tmp_path / "train.csv") == 3
    # sample_submission.csv is not there: the competition csv's known rows stand in
    assert rc.dataset_rows(r, tmp_path) == {"tr": {"role": "train", "rows": 3}, "te": {"role": "test", "rows": 11702}}
    monkeypatch.chdir(tmp_path)  # no data_root: the known rows, not a train.csv that happens to be here
    assert rc.dataset_rows(r, None)["tr"]["rows"] == 31072
    other = rc.load_recipe(write_recipe(tmp_path / "r2", text=TINY_RECIPE.replace("train.csv", "mine.csv")))
    with pytest.raises(FileNotFoundError, match="mine.csv"):
        rc.dataset_rows(other, tmp_path)


SNAKEMAKE_OUT = """Building DAG of jobs...
job              count
-------------  -------
shard                9
all                  1
total               10

Job stats:
job              count
-------------  -------
shard              116
shard_content        3
train               15
all                  1
total              135

Reasons:
    (check individual jobs above for details)
This was a dry-run (flag -n).
"""


def test_job_stats_reads_the_last_table():
    assert rc.job_stats(SNAKEMAKE_OUT) == {"shard": 116, "shard_content": 3, "train": 15, "all": 1, "total": 135}
    with pytest.raises(ValueError, match="Job stats"):
        rc.job_stats("Nothing to be done.")


def test_shard_disk_counts_a_header_per_shard():
    # 2048 rows: 2 shards of 1024; 1000 rows: 1 shard; 10 bytes a row, 5 a shard
    assert rc.shard_disk([2048, 1000], 1024, 10, 5) == 3048 * 10 + 3 * 5
    assert rc.shard_disk([1025], 1024, 0, 1) == 2


def test_shard_bytes_per_image_and_codec(tmp_path):
    from hpaflow.demo import write_png

    write_png(tmp_path, "z", np.zeros((32, 32, 4), np.uint8))
    src = ("png", str(tmp_path), "z")
    none = rc.shard_bytes(src, (32, "none", None), "none", tmp_path)
    gzip = rc.shard_bytes(src, (32, "none", None), "gzip", tmp_path)
    # uncompressed: the 32 x 32 x 4 bytes, plus the row's Id, labels, hashes, digest and origin
    assert 4096 < none["per_image"] < 4096 + 256 and none["per_shard"] > 0
    assert gzip["per_image"] < 1000  # zeros compress
    tiles = rc.shard_bytes(src, (32, "grid", 16), "none", tmp_path)  # 4 rows of 16 x 16 x 4, one metadata row each
    assert tiles["per_image"] - 4096 == 4 * (none["per_image"] - 4096)
    assert not list(tmp_path.glob("*.h5"))


def test_weights_are_laid_out_where_planning_looks(tmp_path):
    from hpaflow.weights import weights_path

    rc.lay_out_weights(tmp_path, ["resnet18", "timm/foo"])
    assert weights_path("resnet18", tmp_path).stat().st_size == 46_827_520
    assert weights_path("timm/foo", tmp_path) == tmp_path / "timm/foo/model.safetensors"


def test_step_ratios_of_the_reference_network_is_one(tmp_path):
    text = TINY_RECIPE.split("models:")[0] + (
        "models:\n"
        "  - {name: same, backbone: resnet18, image_size: 512}\n"  # resnet18, gyb, linear, 512: the reference
        "  - {name: four, backbone: resnet18, image_size: 512, color_mode: rgby}\n"
    )
    r = rc.load_recipe(write_recipe(tmp_path, text=text))
    s = rc.step_ratios([r], scale=1 / 16)
    assert s["ratios"]["tiny"]["same"] == 1.0 and s["ratios"]["tiny"]["four"] > 0
    assert [d["side"] for d in s["seconds"]] == [32]  # only `four` is timed beside the reference


def test_cost_tables(tmp_path):
    r = rc.load_recipe(write_recipe(tmp_path))
    res = {
        "recipe_jobs": {"tiny": {"shard": 3, "train": 8, "total": 11}},
        "recipe_images": {"tiny": {"tr": 2000, "te": 500}},
        "recipe_shard_bytes": {"tiny": {"none": 12e9, "lzf": 6e9, "gzip": 5.2e9}},
        "recipe_plan": {"tiny": rc.recipe_plan(r) | {"shard_side": "768"}},
        "recipe_step_ratios": {"tiny": {"a": 2.0, "b": 1.5}},
    }
    # a: 2 x 3 epochs x 3 (4 folds, each on 3/4 of the images); b: 1.5 x 2 x 3
    assert rc.training_passes(res, "tiny") == 2.0 * 3 * 3 + 1.5 * 2 * 3
    table = rc.cost_table(res)
    assert "| train | 8 |" in table and "| **total** | **11** |" in table
    assert "| tiny | 768 | 2,500 | 12 GB | 6 GB | 5 GB |" in table
    assert "| tiny/b | resnet34 + concat_pool | 384 | 2 | 1.5 |" in table and "**27** passes" in table
    assert "| tiny | gpu_check.py |" in table
    gpu = {
        "recipe_gpu_hours": {
            "tiny": {
                "a": {"train": 1.0, "validate": 0.25, "predict": 0.5, "total": 1.75},
                "b": {"train": 2.0, "validate": 0.5, "predict": 0.25, "total": 2.75},
                "total": 4.5,
            }
        }
    }
    assert "| tiny | 3.0 | 0.8 | 0.8 | **4.5** |" in rc.cost_table(res, gpu)
