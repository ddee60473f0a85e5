"""Config validation: schema errors and cross-key rules name the key; defaults are filled."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from conftest import REPO
from hpaflow.config import ConfigError, validate_config

SCHEMA = REPO / "config" / "schemas" / "config.schema.yaml"
DEMO = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_shipped_configs_are_valid():
    validate_config(copy.deepcopy(DEMO), SCHEMA)
    full = copy.deepcopy(DEMO)
    full.update(yaml.safe_load((REPO / "config" / "hpa_kaggle.yaml").read_text()))
    validate_config(full, SCHEMA)
    assert [m["backbone"] for m in full["models"]] == ["densenet121", "se_resnext50_32x4d", "inception_v3"]
    assert full["image_size"] == 768 and full["n_folds"] == 5  # the recipes: tests/workflow/test_recipes.py


def test_defaults_are_filled():
    minimal = {"data_root": "x", "datasets": DEMO["datasets"], "models": [{"name": "m", "backbone": "resnet18"}]}
    cfg = validate_config(minimal, SCHEMA)
    assert cfg["shard_size"] == 1024 and cfg["tiling"] == "none" and cfg["hdf5_compression"] == "none"
    assert cfg["demo"]["n_train"] == 320 and cfg["demo"]["dir"] == "data/demo"
    assert all(d["bits"] == 16 for d in cfg["datasets"]) and cfg["models"][0]["epochs"] == 10


def test_partly_given_resources_keep_the_other_defaults():
    cfg = validate_config({**copy.deepcopy(DEMO), "resources": {"train": {"mem_mb": 96000}}}, SCHEMA)
    assert cfg["resources"]["train"] == {"mem_mb": 96000, "threads": 8, "gpu": 1, "runtime": 1440}
    assert cfg["resources"]["shard"] == {"threads": 2, "mem_mb": 4000, "runtime": 120}
    unknown = r"resources\.train\.cpus: unknown key \(allowed: gpu, mem_mb, runtime, threads\)"
    with pytest.raises(ConfigError, match=unknown):
        validate_config({**copy.deepcopy(DEMO), "resources": {"train": {"cpus": 2}}}, SCHEMA)


def test_every_rule_has_its_resources_in_the_schema():
    rules = set(re.findall(r"^\s*rule (\w+):", "".join(p.read_text() for p in (REPO / "rules").glob("*.smk")), re.M))
    sized = set(re.findall(r'job_threads\("(\w+)"\)', "".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))))
    schema = set(yaml.safe_load(SCHEMA.read_text())["properties"]["resources"]["properties"])
    assert sized == schema  # every sized rule has a schema entry and the other way round
    assert rules - sized == {"download_hpav18", "download", "preprocess", "classify"}  # these run no job of their own


def schema_defaults(node: dict) -> dict:
    return {k: v["default"] for k, v in node["properties"].items() if "default" in v}


def test_every_schema_default_reaches_the_stage():
    from hpaflow.demo import DemoSpec
    from hpaflow.download import FetchSettings
    from hpaflow.duplicates import DuplicateSettings
    from hpaflow.ensemble import EnsembleSettings
    from hpaflow.export import ExportSettings
    from hpaflow.predict import PredictSettings
    from hpaflow.train import TrainConfig

    schema = yaml.safe_load(SCHEMA.read_text())["properties"]
    minimal = {"data_root": "x", "datasets": DEMO["datasets"], "models": [{"name": "m", "backbone": "resnet18"}]}
    cfg = validate_config(minimal, SCHEMA)
    train = TrainConfig.from_config(cfg, {**cfg["models"][0], "image_size": 77}, fold=1, threads=3)
    expected = {
        **schema_defaults(schema["models"]["items"]),
        "seed": schema["seed"]["default"],
        "device": schema["device"]["default"],
        "pretrained_dir": schema["pretrained_dir"]["default"],
        "visdom": schema_defaults(schema["visdom"]),
    }
    assert {k: getattr(train, k) for k in expected} == expected
    assert (train.name, train.backbone, train.image_size, train.fold, train.threads) == ("m", "resnet18", 77, 1, 3)
    demo = DemoSpec.from_config(cfg)
    assert vars(demo) == {k: v for k, v in schema_defaults(schema["demo"]).items() if k != "dir"}
    assert vars(DuplicateSettings.from_config(cfg)) == schema_defaults(schema["duplicates"])
    assert [d["external"] for d in cfg["datasets"]] == [False, False, True, False]  # config.yaml: hpav18 only
    fetch = FetchSettings.from_config(cfg)
    download = schema_defaults(schema["download"])
    assert vars(fetch) == {
        "base_url": schema["hpav18_base_url"]["default"],
        **{k: download[k] for k in ("concurrency", "retries", "backoff_s", "timeout_s", "resize")},
    }
    th, ens = schema_defaults(schema["thresholds"]), schema_defaults(schema["ensemble"])
    ensemble = EnsembleSettings.from_config(cfg)
    assert vars(ensemble.final) == {
        "method": th["final"],
        "shrink": th["shrink"],
        "min_positives": th["min_positives"],
        "at_least_one": th["at_least_one"],
    }
    assert th["final"] == "best" and ensemble.methods == th["methods"]  # best: chosen among methods, not one of them
    assert (ensemble.weights, ensemble.weight_step) == (ens["weights"], ens["weight_step"])
    export = ExportSettings.from_config(cfg)  # export.tta_views null: predict's views
    assert vars(export) == {
        "views": schema_defaults(schema["predict"])["tta_views"],
        "tta_combine": schema_defaults(schema["predict"])["tta_combine"],
        "at_least_one": th["at_least_one"],
        "datasets": cfg["datasets"][:3],
        "authors": schema_defaults(schema["export"])["authors"],
        "license": schema_defaults(schema["export"])["license"],
        "crops": schema_defaults(schema["predict"])["crops"],
        "crop_placement": schema_defaults(schema["predict"])["crop_placement"],
        "seed": schema["seed"]["default"],
    }
    assert ExportSettings.from_config({**cfg, "export": {**cfg["export"], "tta_views": [0, 4]}}).views == [0, 4]
    with pytest.raises(ValueError, match="tiling: the exported graph scores whole images"):
        ExportSettings.from_config({**cfg, "tiling": "grid"})
    pred, predict = schema_defaults(schema["predict"]), PredictSettings.from_config(cfg, threads=2)
    assert vars(predict) == {
        "views": pred["tta_views"],
        "tta_combine": pred["tta_combine"],
        "tile_combine": pred["tile_combine"],
        "save_views": pred["save_views"],
        "batch_size": pred["batch_size"],
        "device": schema["device"]["default"],
        "threads": 2,
        "crops": pred["crops"],
        "crop_placement": pred["crop_placement"],
        "seed": schema["seed"]["default"],
    }


def test_config_readme_is_generated_from_the_schema():
    from hpaflow.config import schema_reference

    assert (REPO / "config" / "README.md").read_text() == schema_reference(yaml.safe_load(SCHEMA.read_text())), (
        "config/README.md is out of date: run `make config-readme`"
    )


def edited(**changes):
    cfg = copy.deepcopy(DEMO)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = cfg
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        if value is None:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return cfg


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"image_sise": 64}, r"^  image_sise: unknown key \(allowed: classify, data_root, datasets,"),
        ({"datasets__1__fromat": "png"}, r"datasets\[1\]\.fromat: unknown key"),
        ({"datasets__1__format": "gif"}, r"datasets\[1\]\.format: 'gif' is not one of \['png', 'tiff', 'jpg'\]"),
        ({"datasets__0__role": None}, r"datasets\[0\]: 'role' is a required property"),
        ({"shard_size": "big"}, r"shard_size: 'big' is not of type 'integer'"),
        ({"demo__n_train": 1.5}, r"demo\.n_train: 1\.5 is not of type 'integer'"),
        ({"models__0__backbone": "vgg16"}, r"models\[0\]\.backbone: 'vgg16' is not one of"),
        ({"data_root": None}, r"\(top level\): 'data_root' is a required property"),
        ({"datasets__1__name": "kaggle_train"}, r"datasets\[1\]\.name: 'kaggle_train' is used by datasets\[0\] too"),
        (
            {"datasets__0__role": "test", "datasets__1__role": "test", "datasets__2__role": "test"},
            r"datasets: no dataset has role: train",
        ),
        ({"tiling": "grid"}, r"tile_size: required when tiling is grid"),
        ({"tiling": "grid", "tile_size": 48}, r"tile_size: 48 does not divide image_size 64"),
        ({"models__1__name": "r18_gyb"}, r"models\[1\]\.name: 'r18_gyb' is used by models\[0\] too"),
        # Integer keys take integers only: JSON Schema alone would accept 64.0 (then a TypeError deep inside).
        ({"image_size": 64.0}, r"^  image_size: 64\.0 is not of type 'integer'"),
        ({"n_folds": 2.0}, r"^  n_folds: 2\.0 is not of type 'integer'"),
        ({"models__0__epochs": 3.0}, r"models\[0\]\.epochs: 3\.0 is not of type 'integer'"),
        ({"n_folds": True}, r"n_folds: True is not of type 'integer'"),
        ({"models": []}, r"^  models: \[\] should be non-empty"),
        ({"models": None}, r"'models' is a required property"),
        ({"datasets__1__bits": 7}, r"datasets\[1\]\.bits: 7 is less than the minimum of 8"),
        # A model's keys that only make sense together (config.check_model); the demo trains 16 epochs at 64 px.
        (
            {"models__0__backbone": "timm/"},
            r"models\[0\]\.backbone: 'timm/' is not one of .*, nor 'timm/' does not match",
        ),
        ({"models__0__crop_size": 80}, r"models\[0\]\.crop_size: 80 is larger than the model's image_size 64$"),
        (
            {"models__0__backbone": "inception_v3"},
            r"models\[0\]\.image_size: 64 px is below the 75 px that inception_v3",
        ),
        (
            {"models__0__backbone": "densenet121", "models__0__crop_size": 28},
            r"models\[0\]\.crop_size: 28 px is below the 29 px that densenet121 takes",
        ),
        ({"models__0__backbone": "densenet121", "models__0__crop_size": 29}, None),
        (
            {"models__0__scheduler": "step", "models__0__step_epochs": [5, 10]},
            r"models\[0\]\.step_rates: give one rate per step_epochs entry \(step_epochs \[5, 10\], step_rates None\)",
        ),
        (
            {"models__0__step_epochs": [5], "models__0__step_rates": [0.1]},
            r"models\[0\]\.step_epochs: set with scheduler 'cosine'; it applies to step only",
        ),
        (
            {"models__0__scheduler": "step", "models__0__step_epochs": [5, 5], "models__0__step_rates": [0.1, 0.01]},
            r"models\[0\]\.step_epochs: \[5, 5\] must increase",
        ),
        ({"models__0__warmup_epochs": 16}, r"models\[0\]\.warmup_epochs: 16 leaves none of the 16 epochs"),
        ({"models__0__warmup_epochs": 15}, None),
        ({"models__0__average_last": 17}, r"models\[0\]\.average_last: 17 is more than the 16 epochs"),
        ({"models__0__average_last": 16}, None),
        ({"models__0__loss": {"focal": 1.0, "dice": 0.5}}, r"models\[0\]\.loss: .*'dice'"),
        ({"models__0__class_weights": [1.0] * 27}, r"models\[0\]\.class_weights: "),
        # What label transfer needs (config.check_transfer); the demo enables it on 64 px shards.
        ({"tiling": "grid", "tile_size": 32}, r"^transfer\.enabled: label transfer embeds whole fields; tiling: grid"),
        ({"tiling": "grid", "tile_size": 32, "transfer__enabled": False}, None),
        ({"datasets__2__external": False}, r"^transfer\.enabled: no train dataset has external: true and id_format"),
        ({"datasets__2__id_format": "plain"}, r"^transfer\.enabled: no train dataset has external: true and id_format"),
        ({"datasets__3__role": "train"}, r"^transfer\.enabled: no dataset has role: test"),
        ({"transfer__image_size": 96}, r"^transfer\.image_size: 96 is larger than the shards' image_size 64$"),
        ({"transfer__backbone": "inception_v3"}, r"^transfer\.image_size: 64 px is below the 75 px that inception_v3"),
        ({"transfer__tau": 1.5}, r"transfer\.tau: "),
        ({"transfer__tau": "auto"}, None),
        ({"transfer__tau": -0.2}, None),
    ],
)
def test_errors_name_the_key(changes, message):
    if message is None:  # the edge that is still allowed
        validate_config(edited(**changes), SCHEMA)
        return
    with pytest.raises(ConfigError) as e:
        validate_config(edited(**changes), SCHEMA)
    assert re.search(message, str(e.value), re.M), str(e.value)


def test_home_folder_is_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = validate_config(edited(data_root="~/hpa", pretrained_dir="~/weights"), SCHEMA)
    assert cfg["data_root"] == f"{tmp_path}/hpa" and cfg["pretrained_dir"] == f"{tmp_path}/weights"


def test_policy_off_unquoted_in_yaml_means_off():
    """YAML 1.1 reads `policy: off` as false; the schema's choice "off" is meant."""
    cfg = copy.deepcopy(DEMO)
    cfg["duplicates"] = yaml.safe_load("policy: off")
    assert cfg["duplicates"] == {"policy": False}
    assert validate_config(cfg, SCHEMA)["duplicates"]["policy"] == "off"
    with pytest.raises(ConfigError, match=r"duplicates\.policy: True is not one of"):
        validate_config({**copy.deepcopy(DEMO), "duplicates": {"policy": True}}, SCHEMA)


def test_reduced_decode_is_for_jpg_datasets_only():
    cfg = validate_config(edited(datasets__2__reduced_decode=True), SCHEMA)  # hpav18: jpg
    assert cfg["datasets"][2]["reduced_decode"] is True and cfg["datasets"][0]["reduced_decode"] is False
    for i, fmt in [(0, "png"), (1, "tiff")]:
        with pytest.raises(ConfigError) as e:
            validate_config(edited(**{f"datasets__{i}__reduced_decode": True}), SCHEMA)
        assert str(e.value).startswith(f"datasets[{i}].reduced_decode: dataset "), str(e.value)
        assert f"has format {fmt}; " in str(e.value) and "for jpg only" in str(e.value)
