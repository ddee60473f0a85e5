"""benchmarks/gpu_check.py: one line and exit 0 without CUDA; its checks run end to end on the CPU; the
recipes' projection (benchmarks/recipe_cost.py) against hours worked by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402
import recipe_cost as rc  # noqa: E402

RECIPE = """
data_root: data
datasets:
  - {name: tr, format: png, images: train, labels: train.csv, role: train}
  - {name: te, format: png, images: test, labels: sample_submission.csv, role: test}
image_size: 768
n_folds: 4
models:
  - {name: a, backbone: resnet18, crop_size: 512, epochs: 3}
  - {name: b, backbone: resnet18, image_size: 384, epochs: 2, average_last: 2}
predict: {tta_views: [0, 5], crops: 4}
"""


def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [proc.stdout.strip()] and "no CUDA GPU" in proc.stdout
    assert not out.exists()


def test_checks_run_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "tiny.yaml").write_text(RECIPE)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--recipe-dir", str(recipes), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["train"]["epochs"] == 1 and r["train"]["images"] == 12 and 0 <= r["train"]["best_val_f1"] <= 1
    # Same device and precision on both sides here: the comparison must find them identical.
    assert r["cpu_vs_device"] == {"max_abs_prob_diff": 0.0, "label_agreement": 1.0, "rows_identical": 1.0}
    assert [s["backbone"] for s in r["train_step"]] == ["resnet18"] and r["train_step"][0]["loader_img_s"] > 0
    assert r["predict_tta"][0]["views"] == 2 and r["predict_tta"][0]["images_per_s"] > 0
    assert "(b) CPU fp32 vs cpu: max |p diff| 0.00e+00" in proc.stdout
    # (e): both members measured (quick: 96 px, batch 2), and projected from the csvs' 31,072 + 11,702 rows
    a = r["recipe_rates"]["tiny"]["a"]
    assert (a["train_size"], a["train_batch"], r["recipe_precision"]) == (96, 2, "float32")
    train_h = 31072 * 3 * 3 / a["train_img_s"] / 3600  # 4 folds: 3/4 of the rows, 3 epochs, 4 times
    assert r["recipe_gpu_hours"]["tiny"]["a"]["train"] == pytest.approx(train_h, abs=0.006)
    assert set(r["recipe_gpu_hours"]["tiny"]) == {"a", "b", "total"} and "tiny: " in proc.stdout


def test_gpu_hours_known_answer():
    # 1000 train images, 4 folds, 3 epochs: 750 trained a fold and epoch -> 750 x 3 x 4 / 100 img/s = 90 s;
    # validation 1000 a epoch x 3 / 200 = 15 s; predict (1000 oof + 4 x 100 test) x 2 views x 4 crops / 400 = 28 s
    h = rc.gpu_hours(1000, 100, 4, 3, 2, 4, 100.0, 200.0, 400.0)
    assert h == pytest.approx({"train": 90 / 3600, "validate": 15 / 3600, "predict": 28 / 3600, "total": 133 / 3600})
    # average_last: one more pass over the 750 training rows a fold (x 4) and one more validation, at 200 img/s
    avg = rc.gpu_hours(1000, 100, 4, 3, 2, 4, 100.0, 200.0, 400.0, average=True)
    assert avg["validate"] == pytest.approx((4000 + 3000) / 200 / 3600)


def test_recipe_gpu_hours_of_each_member(tmp_path):
    (tmp_path / "tiny.yaml").write_text(RECIPE)
    r = rc.load_recipe(tmp_path / "tiny.yaml")
    rows = {"tr": {"role": "train", "rows": 36000}, "te": {"role": "test", "rows": 3600}}
    rates = {
        "a": {"train_img_s": 100.0, "validate_img_s": 200.0, "predict_img_s": 400.0},
        "b": {"train_img_s": 50.0, "validate_img_s": 100.0, "predict_img_s": 100.0},
    }
    h = rc.recipe_gpu_hours(r, rows, rates)
    # a: 36000 x 3 x 3 / 100 = 3240 s; 36000 x 3 / 200 = 540 s; (36000 + 4 x 3600) x 2 views x 4 crops / 400 = 1008 s
    assert h["a"] == {"train": 0.9, "validate": 0.15, "predict": 0.28, "total": 1.33}
    # b (no crop_size: 1 crop; average_last 2): 36000 x 3 x 2 / 50 = 4320 s; (36000 x 3 + 36000 x 3) / 100 = 2160 s;
    # 50400 x 2 / 100 = 1008 s
    assert h["b"] == {"train": 1.2, "validate": 0.6, "predict": 0.28, "total": 2.08}
    assert h["total"] == 3.4
    tiled = rc.load_recipe(tmp_path / "tiny.yaml")
    tiled.config.update(tiling="grid", tile_size=256)  # 768 / 256: 9 tiles a field
    assert rc.recipe_rows(tiled, rows) == (9 * 36000, 9 * 3600)


def test_each_member_is_measured_as_its_jobs_run(tmp_path):
    (tmp_path / "tiny.yaml").write_text(RECIPE.replace("crops: 4}", "crops: 4, batch_size: 16}"))
    r = rc.load_recipe(tmp_path / "tiny.yaml")
    a, b = r.members
    # a trains on 512 crops of its 768 px images (batch 32, the default), validates whole 768 px images, and
    # predicts 512 px crops in predict.batch_size; b has no crop_size: 384 px throughout
    assert gpu_check.workloads(r, a) == {"train": (512, 32), "validate": (768, 32), "predict": (512, 16)}
    assert gpu_check.workloads(r, b) == {"train": (384, 32), "validate": (384, 32), "predict": (384, 16)}


def test_projection_reads_the_shipped_recipes():
    recipes = rc.load_recipes()
    rates = {
        r.name: {m.name: dict.fromkeys(("train_img_s", "validate_img_s", "predict_img_s"), 1e6) for m in r.members}
        for r in recipes
    }
    hours = gpu_check.recipe_projection(recipes, rates)
    assert set(hours) == {r.name for r in recipes}
    assert all(set(h) == {m.name for m in r.members} | {"total"} for r, h in zip(recipes, hours.values()))
