"""Checks of the validated config that a JSON schema cannot express, and dataset paths.

Every error names the config key (e.g. `datasets[1].labels`) and what is wrong.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import jsonschema
import yaml

from .labels import LabelError, LabelTable, read_labels
from .weights import MIN_SIDE

MAX_ERRORS_SHOWN = 5


class ConfigError(ValueError):
    pass


def _strict_integer(checker, instance) -> bool:
    # JSON Schema counts 64.0 as an integer; a size or count given as a float is a mistake here.
    return isinstance(instance, int) and not isinstance(instance, bool)


def _with_defaults(cls):
    """A validator class that also fills in each property's `default` (like snakemake's validate; a
    mapping default also fills the keys a partly given mapping lacks), and whose `integer` is a Python
    int only."""
    check_properties = cls.VALIDATORS["properties"]

    def properties(validator, props, instance, schema):
        if isinstance(instance, dict):
            for name, sub in props.items():
                if "default" in sub:
                    given = instance.setdefault(name, copy.deepcopy(sub["default"]))
                    if isinstance(given, dict) and isinstance(sub["default"], dict):
                        for key, value in sub["default"].items():  # a partly given mapping keeps the rest
                            given.setdefault(key, copy.deepcopy(value))
        yield from check_properties(validator, props, instance, schema)

    return jsonschema.validators.extend(
        cls, {"properties": properties}, type_checker=cls.TYPE_CHECKER.redefine("integer", _strict_integer)
    )


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
    if error.validator == "anyOf" and error.context:  # say what each alternative wanted
        return f"{where}: " + ", nor ".join(dict.fromkeys(e.message for e in error.context if not e.relative_path))
    return f"{where}: {error.message}"


def _types(schema: dict, root: dict) -> tuple[dict, set[str]]:
    if "$ref" in schema:  # local refs only: "#/$defs/name"
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    t = schema.get("type", [])
    return schema, set([t] if isinstance(t, str) else t)


def coerce_strings(value, schema: dict, root: dict):
    """Snakemake's --config reads nested values as strings (`--config 'classify={bits: 12}'` gives '12'):
    where the schema takes no string, a string that spells an integer, number, boolean or null becomes one.
    And YAML files read `off` as false: where the schema's choices include "off", false becomes "off"."""
    schema, types = _types(schema, root)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: coerce_strings(v, props[k], root) if k in props else v for k, v in value.items()}
    if isinstance(value, list) and "items" in schema:
        return [coerce_strings(v, schema["items"], root) for v in value]
    if isinstance(value, bool) and ("on" if value else "off") in schema.get("enum", []):
        return "on" if value else "off"  # YAML 1.1 reads an unquoted `policy: off` as false
    if not isinstance(value, str) or "enum" in schema:
        return value
    if "null" in types and value in ("null", "~"):
        return None
    if "string" in types:
        return value
    if "boolean" in types and value.lower() in ("true", "false"):
        return value.lower() == "true"
    for kind, parse in (("integer", int), ("number", float)):
        if kind in types:
            try:
                return parse(value)
            except ValueError:
                pass
    return value


def validate_config(config: dict, schema_path: str | Path) -> dict:
    """Validate against the JSON schema, filling defaults in place; errors name each key."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    config.update(coerce_strings(config, schema, schema))
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
PATH_KEYS = (("data_root",), ("pretrained_dir",), ("demo", "dir"), ("classify", "images"), ("classify", "package"))


def check_config(config: dict) -> None:
    """Cross-key rules; run after the schema (which fills defaults). Expands `~` in folder keys."""
    for keys in PATH_KEYS:
        *parents, last = keys
        node = config
        for k in parents:
            node = node.get(k) or {}  # an optional block (classify) may be absent
        if node.get(last) is not None:
            node[last] = os.path.expanduser(node[last])
    names = [d["name"] for d in config["datasets"]]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise ConfigError(f"datasets[{i}].name: {name!r} is used by datasets[{names.index(name)}] too")
    if not any(d["role"] == "train" for d in config["datasets"]):
        raise ConfigError("datasets: no dataset has role: train")
    for i, d in enumerate(config["datasets"]):
        if d.get("reduced_decode") and d["format"] != "jpg":
            raise ConfigError(
                f"datasets[{i}].reduced_decode: dataset {d['name']!r} has format {d['format']}; the reduced "
                "decode is libjpeg's scaled decode, for jpg only (set reduced_decode: false)"
            )
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
    for i, m in enumerate(config.get("models", [])):
        check_model(config, i, m)
    if config["transfer"]["enabled"]:
        check_transfer(config)


def check_transfer(config: dict) -> None:
    """What label transfer needs (transfer.enabled): whole fields, antibodies to learn, fields to transfer to."""
    t = config["transfer"]
    if config["tiling"] != "none":
        raise ConfigError(
            f"transfer.enabled: label transfer embeds whole fields; tiling: {config['tiling']} stores tiles "
            "(set tiling: none)"
        )
    ds = config["datasets"]
    if not any(d["role"] == "train" and d.get("external") and d.get("id_format") == "hpav18" for d in ds):
        raise ConfigError(
            "transfer.enabled: no train dataset has external: true and id_format: hpav18, so there are no antibodies "
            "to learn and no external fields to take labels from"
        )
    if not any(d["role"] == "test" for d in ds):
        raise ConfigError("transfer.enabled: no dataset has role: test, so there are no fields to transfer labels to")
    size = t["image_size"] or config["image_size"]
    if size > config["image_size"]:
        raise ConfigError(f"transfer.image_size: {size} is larger than the shards' image_size {config['image_size']}")
    smallest = MIN_SIDE.get(t["backbone"], 16)
    if size < smallest:
        raise ConfigError(f"transfer.image_size: {size} px is below the {smallest} px that {t['backbone']} takes")


def check_model(config: dict, i: int, m: dict) -> None:
    """A model entry's keys that only make sense together (the schema checks each alone)."""
    where = f"models[{i}]"
    size = m.get("image_size") or (config.get("tile_size") if config["tiling"] == "grid" else config["image_size"])
    if m["crop_size"] is not None and m["crop_size"] > size:
        raise ConfigError(f"{where}.crop_size: {m['crop_size']} is larger than the model's image_size {size}")
    smallest = MIN_SIDE.get(m["backbone"], 16)
    side = m["crop_size"] or size
    if side < smallest:
        key = "crop_size" if m["crop_size"] else "image_size"
        raise ConfigError(f"{where}.{key}: {side} px is below the {smallest} px that {m['backbone']} takes")
    steps, rates = m["step_epochs"], m["step_rates"]
    if (steps is None) != (rates is None) or (steps is not None and len(steps) != len(rates)):
        raise ConfigError(
            f"{where}.step_rates: give one rate per step_epochs entry (step_epochs {steps}, step_rates {rates})"
        )
    if steps is not None:
        if m["scheduler"] != "step":
            raise ConfigError(f"{where}.step_epochs: set with scheduler {m['scheduler']!r}; it applies to step only")
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ConfigError(f"{where}.step_epochs: {steps} must increase")
    if m["warmup_epochs"] >= m["epochs"]:
        raise ConfigError(f"{where}.warmup_epochs: {m['warmup_epochs']} leaves none of the {m['epochs']} epochs")
    if m["average_last"] > m["epochs"]:
        raise ConfigError(f"{where}.average_last: {m['average_last']} is more than the {m['epochs']} epochs")


def check_exportable(config: dict) -> None:
    """What `snakemake export` cannot export, found when planning it (before any training) with the key named:
    the package is one ONNX graph that scores whole images at one input size."""
    if config["tiling"] != "none":
        raise ConfigError(
            f"tiling: {config['tiling']} cannot be exported: the ONNX graph scores whole images, while predict "
            "aggregates a field's tiles per TTA view before combining the views; train with tiling: none to export"
        )
    default = config["image_size"]  # a model's input size defaults to the shards' (rules/common.smk)
    sizes = [m.get("image_size") for m in config["models"]]
    first = sizes[0] or default
    origin = "" if sizes[0] else ", from image_size"
    for i, size in enumerate(sizes[1:], 1):
        if (size or default) != first:
            given = size or f"{default} (from image_size)"
            raise ConfigError(
                f"models[{i}].image_size: {given} differs from models[0] ({first}{origin}): one ONNX graph takes "
                "one size; give every model the same image_size to export"
            )


def check_fold_count(config: dict, tables: dict[str, LabelTable]) -> None:
    """n_folds needs at least as many train Ids (checked when planning, from the label csvs)."""
    n = sum(len(t) for t in tables.values())
    if n < config["n_folds"]:
        counts = ", ".join(f"{name} {len(t)}" for name, t in tables.items())
        raise ConfigError(
            f"n_folds: {config['n_folds']} folds need at least {config['n_folds']} train images; "
            f"the train datasets hold {n} ({counts})"
        )


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


def _type_of(node: dict) -> str:
    if "anyOf" in node:
        return " or ".join(_type_of(alt) for alt in node["anyOf"])
    if "pattern" in node:
        return f"string `{node['pattern']}`"
    if "const" in node:
        return str(node["const"])
    if "enum" in node:
        return " \\| ".join("null" if v is None else str(v) for v in node["enum"])
    t = node.get("type", "object" if "properties" in node else "")
    types = t if isinstance(t, list) else [t]
    if "array" in types and "items" in node:
        return f"list of {_type_of(node['items'])}"
    return " or ".join(types)


def _bounds(node: dict) -> str:
    parts = [
        f"{word} {node[key]}"
        for key, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("minItems", "items >="))
        if key in node
    ]
    return f" ({', '.join(parts)})" if parts else ""


def _rows(node: dict, prefix: str, required: set[str]):
    for name, sub in node.get("properties", {}).items():
        key = f"{prefix}{name}"
        if "$ref" in sub:  # a shared shape (#/$defs/name), listed once after the table; its default here
            ref = sub["$ref"].rsplit("/", 1)[-1]
            default = f"`{json.dumps(sub['default'])}`" if "default" in sub else "required" * (name in required)
            yield key, f"[{ref}](#{ref})", default, sub.get("description", "")
            continue
        if "default" in sub and (not isinstance(sub["default"], dict) or sub["default"]):
            default = f"`{json.dumps(sub['default'])}`"
        elif name in required:
            default = "required"
        else:
            default = ""
        desc = " ".join(sub.get("description", "").split())
        yield key, _type_of(sub) + _bounds(sub), default, desc
        if "properties" in sub:
            yield from _rows(sub, key + ".", set(sub.get("required", [])))
        items = sub.get("items", {})
        if "properties" in items:
            yield from _rows(items, key + "[].", set(items.get("required", [])))


def schema_reference(schema: dict) -> str:
    """config/README.md: every key of the schema with its type, default and meaning (generated)."""
    lines = [
        "# Configuration keys",
        "",
        "Generated from `config/schemas/config.schema.yaml` by `make config-readme`; a test fails when",
        "this file and the schema differ. " + " ".join(schema.get("description", "").split()),
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    table = [(schema, "", set(schema.get("required", [])))]
    for name, shape in schema.get("$defs", {}).items():
        table.append((shape, f"<{name}>.", set(shape.get("required", []))))
    for node, prefix, required in table:
        if prefix:
            lines += ["", f"### {prefix[1:-2]}", ""]
            if "properties" not in node:  # a shared value, not a mapping: its type and meaning
                lines.append(f"{_type_of(node)}: {' '.join(node.get('description', '').split())}")
                continue
            lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for key, typ, default, desc in _rows(node, prefix, required):
            cells = [f"`{key}`", typ, default, desc.replace("|", "\\|")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m hpaflow.config SCHEMA > config/README.md
    import sys

    sys.stdout.write(schema_reference(yaml.safe_load(Path(sys.argv[1]).read_text())))
