"""Checks of the validated config that a JSON schema cannot express, and dataset paths.

Every error names the config key (e.g. `datasets[1].labels`) and what is wrong.
"""

from __future__ import annotations

from pathlib import Path

from .labels import LabelError, LabelTable, read_labels


class ConfigError(ValueError):
    pass


def check_config(config: dict) -> None:
    """Cross-key rules; run after the schema (which fills defaults)."""
    names = [d["name"] for d in config["datasets"]]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise ConfigError(f"datasets[{i}].name: {name!r} is used by datasets[{names.index(name)}] too")
    if not any(d["role"] == "train" for d in config["datasets"]):
        raise ConfigError("datasets: no dataset has role: train")
    if config["tiling"] == "grid":
        tile = config.get("tile_size")
        if tile is None:
            raise ConfigError("tile_size: required when tiling is grid")
        if config["image_size"] % tile:
            raise ConfigError(f"tile_size: {tile} does not divide image_size {config['image_size']}")
    models = [m["name"] for m in config.get("models", [])]
    for i, name in enumerate(models):
        if models.index(name) != i:
            raise ConfigError(f"models[{i}].name: {name!r} is used by models[{models.index(name)}] too")


def dataset_path(config: dict, i: int, key: str) -> Path:
    return Path(config["data_root"]) / config["datasets"][i][key]


def read_dataset(config: dict, i: int) -> LabelTable:
    """The Ids (and train labels) of dataset i, from its csv; errors name the config key."""
    root = Path(config["data_root"])
    demo_dir = config.get("demo", {}).get("dir")
    hint = " (the demo set: run `snakemake demo_data` or `make demo` first)" if root == Path(demo_dir or "") else ""
    if not root.is_dir():
        raise ConfigError(f"data_root: folder {root} does not exist{hint}")
    d = config["datasets"][i]
    path = dataset_path(config, i, "labels")
    if not path.is_file():
        raise ConfigError(f"datasets[{i}].labels: {path} does not exist (dataset {d['name']!r}){hint}")
    try:
        return read_labels(str(path), d["role"] == "train")
    except LabelError as e:
        raise ConfigError(f"datasets[{i}] ({d['name']!r}): {e}") from None
