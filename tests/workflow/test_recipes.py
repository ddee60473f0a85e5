"""The winners' recipes (config/recipes/*.yaml): each plans at full scale with the real competition csvs, and
its models (and those of the full-scale default, config/hpa_kaggle.yaml) run one epoch through train and predict
at the smallest size their backbones take (docs/recipes.md)."""

from __future__ import annotations

import copy
import math
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO, SHARED, TINY, copy_workflow, fake_weights, needs_shared, plan, run_snakemake, write_config
from hpaflow.weights import MIN_SIDE

RECIPES = ["seed", "bestfitting", "pudae", "wair"]


def recipe_path(name: str) -> str:
    return "config/hpa_kaggle.yaml" if name == "hpa_kaggle" else f"config/recipes/{name}.yaml"


def load_recipe(name: str) -> dict:
    return yaml.safe_load((REPO / recipe_path(name)).read_text())


# Full scale: 31,072 / 1024 -> 31 shards, 74,606 -> 73, 11,702 -> 12 (116); per model 5 folds of train and
# predict and one model_summary; then duplicates, folds, ensemble, submission, plots and all once each.
# Worked by hand: total = 116 + 3 + 3 + 1 + 1 + 11 x models + 4 (ensemble, submission, plots, all), + 3 with
# label transfer (embed, transfer, transfer_figure: bestfitting).
PLANS = {
    "seed": {"models": 3, "train": 15, "total": 161},
    "bestfitting": {"models": 1, "train": 5, "total": 142, "transfer": True},
    "pudae": {"models": 2, "train": 10, "total": 150},
    "wair": {"models": 6, "train": 30, "total": 194},
}


@pytest.fixture(scope="module")
def full_scale(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A workflow copy, a data_root holding only the real csvs (planning opens no image), fake weights."""
    root = tmp_path_factory.mktemp("recipes_plan")
    data = root / "hpa"
    data.mkdir()
    for name in ["train.csv", "sample_submission.csv", "HPAv18RBGY_wodpl.csv"]:
        shutil.copy(SHARED / "hpa" / name, data / name)
    return copy_workflow(root / "wf"), data, fake_weights(root / "pretrained")


@needs_shared
@pytest.mark.parametrize("name", RECIPES)  # hpa_kaggle (164 jobs): test_workflow.py
def test_recipe_plans_at_full_scale(full_scale, name):
    wf, data, weights = full_scale
    args = ["-n", "--configfile", recipe_path(name), "--config", f"data_root={data}", f"pretrained_dir={weights}"]
    proc = run_snakemake(wf, *args)
    n = PLANS[name]["models"]
    assert len(load_recipe(name)["models"]) == n
    assert plan(proc) == {
        "shard": "116",
        "shard_content": "3",
        "shard_index": "3",
        "duplicates": "1",
        "folds": "1",
        "train": str(PLANS[name]["train"]),
        "predict": str(PLANS[name]["train"]),
        "model_summary": str(n),
        "ensemble": "1",
        "submission": "1",
        "plots": "1",
        **({"embed": "1", "transfer": "1", "transfer_figure": "1"} if PLANS[name].get("transfer") else {}),
        "all": "1",
        "total": str(PLANS[name]["total"]),
    }
    # Every train and predict job asks for one GPU; pudae's 1024 px jobs for 48 h and 4 h (the recipe says why).
    jobs = re.findall(r"^rule (train|predict):\n(?:    .*\n)*?    resources: (.*)$", proc.stdout, re.M)
    assert len(jobs) == 2 * PLANS[name]["train"]
    runtime = {"train": "2880", "predict": "240"} if name == "pudae" else {"train": "1440", "predict": "120"}
    for rule, resources in jobs:
        assert re.search(r"\bgpu=1\b", resources) and re.search(rf"\bruntime={runtime[rule]}\b", resources), resources


def test_recipes_keep_the_published_ingredients():
    """The keys that carry each published figure's recipe (issue 21), read back from the files."""
    seed = load_recipe("seed")
    assert [m["backbone"] for m in seed["models"]] == ["resnet18", "resnet50", "se_resnet50"]
    assert {(m["color_mode"], m["loss"], m["sampler"], m["image_size"]) for m in seed["models"]} == {
        ("gyb", "bce", "uniform", 512)
    }
    (best,) = load_recipe("bestfitting")["models"]
    assert (best["backbone"], best["head"], best["color_mode"], best["optimizer"]) == (
        "densenet121",
        "concat_pool",
        "rgby",
        "adam",
    )
    assert (best["image_size"], best["crop_size"], best["epochs"]) == (768, 512, 45)
    # 30, 15, 7.5, 3, 1 x 1e-5, changing at epochs 25/30/35/40.
    rates = [best["lr"], *best["step_rates"]]
    assert best["step_epochs"] == [25, 30, 35, 40] and np.allclose(rates, [30e-5, 15e-5, 7.5e-5, 3e-5, 1e-5])
    assert best["loss"] == {"focal": 1.0, "lovasz": 0.5} and best["sampler"] == "uniform"
    bf = load_recipe("bestfitting")
    assert bf["predict"]["crops"] == 4 and bf["predict"]["tta_combine"] == "max"
    assert bf["thresholds"]["final"] == "rate" and bf["duplicates"]["policy"] == "drop_external"
    inception, resnet34 = load_recipe("pudae")["models"]
    assert (inception["backbone"], inception["image_size"], resnet34["backbone"], resnet34["image_size"]) == (
        "inception_v3",
        1024,
        "resnet34",
        512,
    )
    for m in (inception, resnet34):
        assert (m["loss"], m["focal_gamma"], m["optimizer"], m["lr"]) == ("focal", 2.0, "adam", 0.0005)
        assert (m["batch_size"] * m["accumulate"], m["normalize"], m["average_last"]) == (32, "per_image", 10)
    wair_recipe = load_recipe("wair")
    wair = wair_recipe["models"]
    members = ["densenet121"] * 3 + ["densenet169", "se_resnext50_32x4d", "xception"]
    assert sorted(m["backbone"] for m in wair) == members
    for m in wair:
        size = m.get("image_size", wair_recipe["image_size"])
        assert (size, m["batch_size"], m["optimizer"], m["lr"]) == (512, 48, "adamax", 0.001)
        assert (m["scheduler"], m["restart_period"], m["epochs"]) == ("cosine_restarts", 10, 24)
        assert (m["loss"], m["class_weights"], m["sampler"]) == ("bce", "inverse_sqrt", "oversample_rare")
    # Variations must differ, or one seed would train the three DenseNet121s to the same weights.
    variants = [{k: v for k, v in m.items() if k != "name"} for m in wair if m["backbone"] == "densenet121"]
    assert all(a != b for i, a in enumerate(variants) for b in variants[i + 1 :])


# ---- each recipe's models, shrunk, through train and predict -------------------------------------------------

# The models[] keys that carry the recipes' ingredients, read back from each trained checkpoint.
INGREDIENTS = [
    "backbone",
    "head",
    "head_hidden",
    "dropout",
    "color_mode",
    "normalize",
    "crop_size",
    "optimizer",
    "lr",
    "scheduler",
    "step_epochs",
    "step_rates",
    "restart_period",
    "accumulate",
    "average_last",
    "loss",
    "focal_gamma",
    "class_weights",
    "sampler",
]

SHRINK = 16  # 512 px -> 32 px


def smallest(backbone: str) -> int:
    """32 px, or more where the backbone takes no less (hpaflow.weights.MIN_SIDE: the Inception V3's 75)."""
    return max(32, MIN_SIDE.get(backbone, 0))


def shrunk(name: str) -> dict:
    """The tiny workflow config (demo datasets, 2 folds) with a recipe's models, predict, thresholds,
    duplicates and ensemble keys, its sizes divided by SHRINK (at least each backbone's smallest side),
    one epoch (two where average_last > 1, which then averages both), small batches, no ImageNet weights."""
    recipe = load_recipe(name)
    config = copy.deepcopy(TINY)
    for key in ["duplicates", "predict", "thresholds", "ensemble"]:
        config[key] = {**config.get(key, {}), **recipe.get(key, {})}
    models = []
    for m in recipe["models"]:
        m = dict(m)
        side = max(smallest(m["backbone"]), math.ceil(m.get("image_size", recipe["image_size"]) / SHRINK))
        m["image_size"] = side
        if m.get("crop_size"):
            m["crop_size"] = max(smallest(m["backbone"]), m["crop_size"] // SHRINK)
            assert m["crop_size"] < side, f"{name}/{m['name']}: the crop must stay smaller than the image"
        if m.get("average_last", 1) > 1:
            m["epochs"], m["average_last"] = 2, 2
        else:
            m["epochs"] = 1
        m["batch_size"] = 4 if m.get("accumulate", 1) > 1 else 8
        m["pretrained"] = False
        models.append(m)
    config["models"] = models
    config["image_size"] = max(math.ceil(recipe["image_size"] / SHRINK), *(m["image_size"] for m in models))
    # One thread a job (no loader worker to start): two jobs side by side on 2 cores.
    config["resources"] = {"train": {"threads": 1, "gpu": 0}, "predict": {"threads": 1, "gpu": 0}}
    return config


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    """The tiny demo set, made once and copied into each recipe's workflow."""
    wf = copy_workflow(tmp_path_factory.mktemp("recipes_demo"))
    write_config(wf / "config" / "config.yaml", TINY)
    run_snakemake(wf, "demo_data")
    return wf / "data"


def test_shrunk_configs_keep_the_ingredients():
    """The shrunk configs differ from their recipes in size, epochs, batch and pretrained alone."""
    allowed = {"image_size", "crop_size", "epochs", "average_last", "batch_size", "pretrained"}
    for name in RECIPES:
        recipe, config = load_recipe(name), shrunk(name)
        for given, small in zip(recipe["models"], config["models"], strict=True):
            changed = {k for k in set(given) | set(small) if given.get(k) != small.get(k)}
            assert changed <= allowed, (name, given["name"], changed - allowed)
        for key in ["predict", "thresholds", "duplicates"]:
            assert all(config[key][k] == v for k, v in recipe.get(key, {}).items())
    pudae = shrunk("pudae")
    assert [(m["image_size"], m["epochs"], m["average_last"]) for m in pudae["models"]] == [(75, 2, 2), (32, 2, 2)]
    assert pudae["image_size"] == 75  # 1024 / 16 = 64, raised to the Inception's 75
    (best,) = shrunk("bestfitting")["models"]
    assert (best["image_size"], best["crop_size"], shrunk("bestfitting")["image_size"]) == (48, 32, 48)


@pytest.mark.slow
@pytest.mark.parametrize("name", [*RECIPES, "hpa_kaggle"])
def test_recipe_models_train_and_predict(demo_data, tmp_path, name):
    config = shrunk(name)
    wf = copy_workflow(tmp_path / "wf")
    write_config(wf / "config" / "config.yaml", config)
    shutil.copytree(demo_data, wf / "data")
    targets = [f"results/predictions/{m['name']}/fold0.h5" for m in config["models"]]
    run_snakemake(wf, *targets)
    folds = pd.read_csv(wf / "results/folds.csv")
    val_ids = set(folds.loc[folds["fold"] == 0, "Id"])
    n_test = len(pd.read_csv(wf / "data/demo/sample_submission.csv"))
    for m in config["models"]:
        run = wf / f"results/models/{m['name']}/fold0"
        metrics = pd.read_csv(run / "metrics.csv")
        assert metrics["epoch"].tolist() == list(range(1, m["epochs"] + 1)), m["name"]
        assert np.isfinite(metrics["train_loss"]).all(), m["name"]
        # Every epoch run here is in its schedule's first phase, at the full rate: cosine and cosine_restarts at
        # t = 0 (1 epoch), step before its first change (epoch 25), constant throughout.
        assert np.allclose(metrics["lr"], m["lr"]), (m["name"], metrics["lr"].tolist())
        best = torch.load(run / "best.pt", weights_only=False)
        assert {k: best["config"][k] for k in INGREDIENTS if k in m} == {k: m[k] for k in INGREDIENTS if k in m}
        if m.get("average_last", 1) > 1:
            assert list(best["averaged_epochs"]) == [1, 2], m["name"]
        with h5py.File(wf / f"results/predictions/{m['name']}/fold0.h5") as h5:
            assert set(h5["oof/ids"].asstr()[...]) == val_ids
            assert h5["test/probs"].shape == (n_test, 28)
            for part in ["oof", "test"]:
                probs = h5[f"{part}/probs"][...]
                assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all(), (m["name"], part)
            assert h5.attrs["views"].tolist() == config["predict"]["tta_views"]
            assert h5.attrs["tta_combine"] == config["predict"]["tta_combine"]
            crops = config["predict"]["crops"] if m.get("crop_size") else 0  # no crop_size: the whole image
            assert (h5.attrs["crops"], len(h5.attrs["crop_offsets"])) == (crops, crops), m["name"]
