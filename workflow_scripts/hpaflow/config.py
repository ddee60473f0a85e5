"""Checks of the validated config that a JSON schema cannot express, and dataset paths.

Every error names the config key (e.g. `datasets[1].labels`) and what is wrong.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import jsonschema
import yaml

from .labels import LabelError, LabelTable, read_labels

MAX_ERRORS_SHOWN = 5


class ConfigError(ValueError):
    pass


def _strict_integer(checker, instance) -> bool:
    # JSON Schema counts 64.0 as an integer; a size or count given as a float is a mistake here.
    return isinstance(instance, int) and not isinstance(instance, bool)


def _with_defaults(cls):
    """A validator class that also fills in each property's `default` (like snakemake's validate),
    and whose `integer` is a Python int only."""
    check_properties = cls.VALIDATORS["properties"]

    def properties(validator, props, instance, schema):
        if isinstance(instance, dict):
            for name, sub in props.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, props, instance, schema)

    return jsonschema.validators.extend(cls, {"properties": properties},
                                        type_checker=cls.TYPE_CHECKER.redefine("integer", _strict_integer))


def key_path(path) -> str:
    """('datasets', 0, 'format') -> 'datasets[0].format'."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    where = key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        prefix = "" if not error.absolute_path else where + "."
        return "; ".join(f"{prefix}{k}: unknown key (allowed: {', '.join(allowed)})" for k in unknown)
    return f"{where}: {error.message}"


def validate_config(config: dict, schema_path: str | Path) -> dict:
    """Validate against the JSON schema, filling defaults in place; errors name each key."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    cls = _with_defaults(jsonschema.validators.validator_for(schema))
    errors = sorted(cls(schema).iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [_describe(e) for e in errors[:MAX_ERRORS_SHOWN]]
        if len(errors) > MAX_ERRORS_SHOWN:
            lines.append(f"... and {len(errors) - MAX_ERRORS_SHOWN} more")
        raise ConfigError("invalid config (schema " + str(schema_path) + "):\n  " + "\n  ".join(lines))
    check_config(config)
    return config


# Folder keys where `~` means the home folder, as in a shell.
PATH_KEYS = (("data_root",), ("pretrained_dir",), ("demo", "dir"))


def check_config(config: dict) -> None:
    """Cross-key rules; run after the schema (which fills defaults). Expands `~` in folder keys."""
    for keys in PATH_KEYS:
        *parents, last = keys
        node = config
        for k in parents:
            node = node[k]
        if last in node:
            node[last] = os.path.expanduser(node[last])
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


def check_fold_count(config: dict, tables: dict[str, LabelTable]) -> None:
    """n_folds needs at least as many train Ids (checked when planning, from the label csvs)."""
    n = sum(len(t) for t in tables.values())
    if n < config["n_folds"]:
        counts = ", ".join(f"{name} {len(t)}" for name, t in tables.items())
        raise ConfigError(f"n_folds: {config['n_folds']} folds need at least {config['n_folds']} train images; "
                          f"the train datasets hold {n} ({counts})")


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
