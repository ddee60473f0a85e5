"""One registry each: every choice the config schema offers (an `enum`) is exactly the keys of the code
registry that implements it, so a backbone (loss, sampler, ...) joins by one entry in code plus the
schema's enum, and this test says which of the two was forgotten. Each registry entry also works."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import h5py
import numpy as np
import pytest
import torch
import yaml

from conftest import REPO
from hpaflow import (
    augment,
    data,
    duplicates,
    ensemble,
    layout,
    losses,
    models,
    predict,
    shards,
    thresholds,
    train,
    transforms,
)
from hpaflow.summary import Predictions

SCHEMA = yaml.safe_load((REPO / "config" / "schemas" / "config.schema.yaml").read_text())

# Schema key (`[]` = each item of a list) -> the names its code registry accepts.
REGISTRIES: dict[str, Callable[[], object]] = {
    "datasets[].format": lambda: layout.EXTENSIONS,
    "datasets[].id_format": lambda: duplicates.ID_FORMATS,
    "hdf5_compression": lambda: shards.COMPRESSIONS,
    "duplicates.channels[]": lambda: layout.COLORS,
    "duplicates.policy": lambda: duplicates.POLICIES,
    "models[].backbone": lambda: models.BACKBONES,  # and timm/<name> (a pattern, no enum)
    "transfer.backbone": lambda: models.BACKBONES,  # the embedding network: the same backbones
    "models[].head": lambda: models.HEADS,
    "models[].color_mode": lambda: transforms.COLOR_MATRICES,
    "models[].normalize": lambda: augment.NORMALIZERS,
    "models[].class_weights": lambda: losses.CLASS_WEIGHTS,
    "models[].optimizer": lambda: train.OPTIMIZERS,
    "models[].scheduler": lambda: train.SCHEDULERS,
    "models[].loss": lambda: losses.LOSSES,
    "models[].loss{}": lambda: losses.LOSSES,  # the terms of a weighted sum
    "models[].sampler": lambda: data.SAMPLERS,
    "predict.tta_combine": lambda: predict.REDUCERS,
    "predict.tile_combine": lambda: predict.REDUCERS,
    "predict.crop_placement": lambda: transforms.CROP_PLACEMENTS,
    "thresholds.methods[]": lambda: thresholds.METHODS,
    "thresholds.final": lambda: thresholds.FINAL_METHODS,
    "ensemble.weights": lambda: ensemble.WEIGHTINGS,
    "classify.format": lambda: layout.EXTENSIONS,
}
# Two-way switches the workflow branches on by name in the Snakefile and several scripts, where a new
# value needs new code everywhere rather than a registry entry.
SWITCHES = {"datasets[].role", "tiling", "device"}


def schema_enums(node: dict, path: str = "") -> Iterator[tuple[str, list]]:
    """(key path, enum) of every enum in the schema, `[]` standing for a list's items."""
    if "$ref" in node:  # a shared shape (#/$defs/name): its enum at each place that uses it
        node = SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    if "enum" in node:
        yield path, node["enum"]
    for alt in node.get("anyOf", []):  # a choice of shapes (backbone: a name or timm/<name>)
        yield from schema_enums(alt, path)
    if "propertyNames" in node:  # a mapping keyed by names (a weighted sum of losses)
        yield from schema_enums(node["propertyNames"], f"{path}{{}}")
    for name, sub in node.get("properties", {}).items():
        yield from schema_enums(sub, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        yield from schema_enums(node["items"], f"{path}[]")


ENUMS = dict(schema_enums(SCHEMA))


def test_every_schema_enum_has_a_registry_or_is_a_named_switch():
    assert set(ENUMS) == set(REGISTRIES) | SWITCHES
    assert not set(REGISTRIES) & SWITCHES


@pytest.mark.parametrize("key", sorted(REGISTRIES))
def test_schema_enum_equals_its_code_registry(key):
    names = list(REGISTRIES[key]())
    assert len(ENUMS[key]) == len(set(ENUMS[key])), key
    assert sorted(ENUMS[key]) == sorted(names), f"{key}: schema {ENUMS[key]} vs code {names}"


def test_a_registry_entry_missing_from_the_schema_is_caught(monkeypatch):
    monkeypatch.setitem(models.BACKBONES, "vgg16", models.BACKBONES["resnet18"])
    assert sorted(ENUMS["models[].backbone"]) != sorted(REGISTRIES["models[].backbone"]())


# --- each entry works -----------------------------------------------------------------------------------


def test_every_sampler_draws_one_epoch_of_row_indices_and_an_unknown_one_is_named():
    labels = np.eye(28, dtype=np.uint8)[np.arange(40) % 3]
    for name in data.SAMPLERS:
        drawn = list(data.make_sampler(name, labels, 0, 1))
        assert len(drawn) == 40 and 0 <= min(drawn) and max(drawn) < 40, name
    assert sorted(data.make_sampler("uniform", labels, 0, 1)) == list(range(40))  # a permutation
    with pytest.raises(ValueError, match=r"^unknown sampler 'random' \(one of uniform, oversample_rare\)$"):
        data.make_sampler("random", labels, 0, 1)


def test_every_optimizer_and_scheduler_builds_what_its_name_says():
    from hpaflow.schedules import Schedule, lr_at

    p = [torch.nn.Parameter(torch.zeros(2))]
    built = {name: make(p, lr=0.1, weight_decay=0.01) for name, make in train.OPTIMIZERS.items()}
    assert {name: type(opt) for name, opt in built.items()} == {
        "sgd": torch.optim.SGD,
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "adamax": torch.optim.Adamax,
    }
    assert all((opt.defaults["lr"], opt.defaults["weight_decay"]) == (0.1, 0.01) for opt in built.values())
    assert (built["sgd"].defaults["momentum"], built["sgd"].defaults["nesterov"]) == (0.9, True)
    # the rate of each of 4 epochs at lr 1 (cosine_restarts: every 2 epochs)
    got = {name: [lr_at(Schedule(1.0, 4, name, restart_period=2), e) for e in range(4)] for name in train.SCHEDULERS}
    c = 2**0.5 / 4  # cos(pi / 4) / 2
    assert got == {
        "cosine": pytest.approx([1, 0.5 + c, 0.5, 0.5 - c]),
        "step": pytest.approx([1, 0.1, 0.01, 0.001]),  # x0.1 every third of the epochs (at least every epoch)
        "cosine_restarts": pytest.approx([1, 0.5, 1, 0.5]),
        "constant": [1, 1, 1, 1],
    }


def test_every_threshold_method_fits_28_thresholds():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 28)) < 0.3).astype(np.uint8)
    p = np.clip(y * 0.5 + rng.random((60, 28)) * 0.5, 0, 1)
    for method in thresholds.METHODS:
        t = thresholds.fit(y, p, thresholds.ThresholdSettings(method, 0.0, 0, True))
        assert t.shape == (28,) and np.isfinite(t).all(), method


def test_every_combine_reduces_the_views():
    views = np.array([[[0.2, 0.8]], [[0.6, 0.4]]])
    got = {how: predict.combine(views, how).tolist() for how in predict.REDUCERS}
    assert got == {"mean": [[0.4, 0.6000000000000001]], "max": [[0.6, 0.8]]}


def test_every_compression_writes_readable_chunks(tmp_path):
    x = np.arange(64, dtype=np.uint8).reshape(4, 4, 4)
    for name, kwargs in shards.COMPRESSIONS.items():
        with h5py.File(tmp_path / f"{name}.h5", "w") as h5:
            h5.create_dataset("x", data=x, chunks=(1, 4, 4), **kwargs)
        with h5py.File(tmp_path / f"{name}.h5") as h5:
            # h5py names its built-in filters (lzf, gzip); hdf5plugin's appear by their HDF5 filter id
            filters = list(h5["x"]._filters)
            assert np.array_equal(h5["x"][...], x), name
            assert filters == ([] if name == "none" else [str(kwargs["compression"])]), name


def test_every_loss_is_a_scalar_and_every_colour_mode_maps_rgby():
    logits, target = torch.zeros(2, 28), torch.ones(2, 28)
    for name, loss in losses.LOSSES.items():
        assert loss(logits, target).shape == (), name
    for mode, m in transforms.COLOR_MATRICES.items():
        assert m.shape == (transforms.CHANNELS[mode], 4), mode


def test_every_weighting_combines_and_an_unknown_one_is_named():
    rng = np.random.default_rng(1)
    y = (rng.random((20, 28)) < 0.3).astype(np.uint8)

    def member(seed):
        probs = np.random.default_rng(seed).random((20, 28))
        return Predictions(np.arange(20).astype(str), probs, y, np.arange(20) % 2, np.array([], str), np.zeros((0, 28)))

    members = {"a": member(2), "b": member(3)}
    for weighting in ensemble.WEIGHTINGS:
        _, w, _ = ensemble.combine_models(members, weighting, 0.5)
        assert w.shape == (2,) and np.isclose(w.sum(), 1), weighting
    with pytest.raises(ValueError, match=r"^ensemble.weights: 'median' is not one of equal, fitted$"):
        ensemble.combine_models(members, "median", 0.5)


def test_an_unknown_duplicates_policy_is_named():
    d = {"max_distance": 12, "channels": ["red"], "group_by_antibody": True}
    assert duplicates.DuplicateSettings.from_config({"duplicates": {**d, "policy": "off"}}).policy == "off"
    with pytest.raises(ValueError, match=r"^duplicates.policy: 'none' is not one of group, drop_external, off$"):
        duplicates.DuplicateSettings.from_config({"duplicates": {**d, "policy": "none"}})
