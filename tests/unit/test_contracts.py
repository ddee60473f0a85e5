"""Each stage declares what decides its result (hpaflow.contracts): the settings classes read exactly
those keys, the steering keys never reach a rule's params, and members are found by key."""

from __future__ import annotations

import copy

import pytest
import yaml

from conftest import REPO
from hpaflow.config import validate_config
from hpaflow.contracts import STAGES, decided_by, job_config, member_key, members, pick, rerun_table, reruns
from hpaflow.demo import DemoSpec
from hpaflow.download import FetchSettings
from hpaflow.duplicates import DuplicateSettings
from hpaflow.embed import EmbedSettings
from hpaflow.ensemble import EnsembleSettings
from hpaflow.export import ExportSettings
from hpaflow.predict import PredictSettings
from hpaflow.train import TrainConfig
from hpaflow.transfer import TransferSettings

SCHEMA = REPO / "config/schemas/config.schema.yaml"
MODEL = {"name": "m", "backbone": "resnet18", "image_size": 32}


def full_config(**changes) -> dict:
    return validate_config({**yaml.safe_load((REPO / "config/config.yaml").read_text()), **changes}, SCHEMA)


def model_entry() -> dict:
    """A models[] entry with its defaults, as rules/common.smk's model_settings gives it."""
    return full_config(models=[MODEL])["models"][0]


# The settings each stage's script builds from job_config(stage, params, config).
BUILDERS = {
    "train": lambda c: TrainConfig.from_config(c, model_entry(), 0, 1),
    "predict": lambda c: PredictSettings.from_config(c, 1),
    "ensemble": lambda c: (EnsembleSettings.from_config(c), DuplicateSettings.from_config(c)),
    "export": ExportSettings.from_config,
    "download_hpav18_part": FetchSettings.from_config,
    "demo_data": DemoSpec.from_config,
    "embed": lambda c: EmbedSettings.from_config(c, 1),
    "transfer": TransferSettings.from_config,
}


def leaves(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        key = f"{prefix}{k}"
        out += leaves(v, key + ".") if isinstance(v, dict) and v and k != "demo" else [key]
    return out


def drop(tree: dict, key: str) -> dict:
    out = copy.deepcopy(tree)
    *parents, last = key.split(".")
    node = out
    for p in parents:
        node = node[p]
    del node[last]
    return out


@pytest.mark.parametrize("stage", list(BUILDERS))
def test_settings_read_exactly_the_declared_keys(stage):
    """Built from the declared keys alone, and each declared key is read: without it the build fails,
    so a key that decides a result cannot be left out of the rule's params."""
    config = full_config()
    # A train job's own models[] entry reaches TrainConfig whole (params.model), as rules/train.smk passes it.
    decided = decided_by(stage, config, but=("models",) if stage == "train" else ())
    declared = job_config(stage, decided, config)
    BUILDERS[stage](declared)
    for key in leaves(decided):
        if key == "predict.tta_views" and stage == "export":
            continue  # read only where export.tta_views is null (the default): checked below
        with pytest.raises(KeyError):
            BUILDERS[stage](drop(declared, key))


def test_export_reads_predict_views_when_its_own_are_null():
    config = full_config()
    declared = job_config("export", decided_by("export", config), config)
    assert declared["export"]["tta_views"] is None
    with pytest.raises(KeyError):
        ExportSettings.from_config(drop(declared, "predict.tta_views"))


def test_steering_keys_never_reach_params():
    config = full_config()
    for name, stage in STAGES.items():
        params = decided_by(name, config)
        for key in stage.steers:
            top, *rest = key.split(".")
            assert not rest or rest[0] not in params.get(top, {}), (name, key)
            assert rest or top not in params, (name, key)


def test_pick_takes_dataset_keys_and_skips_absent_ones():
    config = {"datasets": [{"name": "a", "bits": 12, "external": True}, {"name": "b", "bits": 16}], "image_size": 64}
    assert pick(config, ["image_size", "tile_size", "datasets[].bits", "datasets[].external"]) == {
        "image_size": 64,
        "datasets": [{"bits": 12, "external": True}, {"bits": 16}],
    }


def test_reruns_follow_consumers_and_stop_at_storage_and_steering_keys():
    assert reruns("device") == reruns("visdom") == reruns("predict.batch_size") == reruns("pretrained_dir") == []
    assert reruns("hdf5_compression") == ["shard", "shard_index", "classify_shard"]
    assert reruns("shard_size") == ["shard", "shard_index"]
    assert reruns("thresholds.shrink") == ["ensemble", "submission", "plots", "export", "transfer", "transfer_figure"]
    assert reruns("models[0].epochs") == [
        "train",
        "predict",
        "model_summary",
        "ensemble",
        "submission",
        "plots",
        "export",
        "transfer",
        "transfer_figure",
    ]
    # The embedding does not depend on the classifiers, nor they on it.
    assert reruns("transfer.margin") == ["export", "embed", "transfer", "transfer_figure"]
    assert reruns("transfer.tau") == ["transfer", "transfer_figure"]
    assert reruns("datasets[1].bits")[:4] == ["shard", "shard_content", "shard_index", "duplicates"]
    assert "| `shard_size` | shard, shard_index |" in rerun_table()


def test_members_by_key_whatever_the_order():
    named = [(member_key("curves", "b", 1), "b1"), ("metrics", "x"), (member_key("curves", "a", 0), "a0")]
    assert members(named, "curves") == {("a", 0): "a0", ("b", 1): "b1"}
    assert members(reversed(named), "curves") == members(named, "curves")
    assert members([(member_key("summary", "m.1"), "s")], "summary") == {"m.1": "s"}


def test_docs_hold_the_rerun_table():
    assert rerun_table() in (REPO / "docs/usage.md").read_text()
