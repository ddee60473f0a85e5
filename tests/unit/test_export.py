"""ONNX export of the ensemble: the module computes what predict + model_summary + ensemble compute, and
the exported graph (onnxruntime, CPU) computes what the module computes, for any batch size."""

from __future__ import annotations

import copy
import re

import h5py
import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml

from conftest import REPO
from hpaflow import h5names as h5n
from hpaflow import versions
from hpaflow.config import ConfigError, check_exportable, validate_config
from hpaflow.data import ShardRows
from hpaflow.ensemble import weighted_mean
from hpaflow.export import (
    UNWRITTEN,
    EnsembleModule,
    ExportError,
    ExportSettings,
    bioimageio_rdf,
    check_onnx,
    check_rdf,
    crops_phrase,
    export_onnx,
    member_weights,
    package_readme,
    preprocessing,
    write_package,
)
from hpaflow.models import build_model
from hpaflow.predict import combine, load_checkpoint, load_model, model_crops, predict_probs, predict_rows
from hpaflow.transforms import CHANNELS

VIEWS = [0, 3, 6]
WEIGHTS = [0.7, 0.3]  # per model, as results/ensemble.h5 stores them
SIZE = 32


NO_CROPS = {"crops": 0, "crop_placement": "fixed", "seed": 0}


def checkpoint(path, color_mode: str, seed: int, crop_size: int | None = None, normalize: str = "imagenet") -> str:
    """A tiny best.pt as training writes it (cf. test_predict.checkpoint), random weights."""
    torch.manual_seed(seed)
    model = build_model("resnet18", CHANNELS[color_mode])
    cfg = {"name": path.parent.name, "backbone": "resnet18", "color_mode": color_mode, "image_size": SIZE}
    cfg |= {"crop_size": crop_size, "normalize": normalize, "head": "linear", "head_hidden": 512, "dropout": 0.5}
    state = {"format_version": h5n.CHECKPOINT_FORMAT, "model": model.state_dict(), "config": cfg, "train_ids": ["a"]}
    torch.save(state, path)
    return str(path)


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Tiny convolutions: torch on one thread for the whole module (conftest)."""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[list[str]]:
    """Two models (gyb, rgby), two folds each: one list of best.pt files per model."""
    root = tmp_path_factory.mktemp("models")
    out = []
    for n, mode in enumerate(["gyb", "rgby"]):
        files = []
        for fold in range(2):
            d = root / f"m{n}" / f"fold{fold}"
            d.mkdir(parents=True)
            files.append(checkpoint(d / "best.pt", mode, seed=10 * n + fold))
        out.append(files)
    return out


def images(n: int, seed: int = 0) -> torch.Tensor:
    x = torch.randint(0, 256, (n, 4, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    x[0, :, 0, 0] = 0  # the range's ends
    x[0, :, 0, 1] = 255
    return x


def by_predict(checkpoints: list[list[str]], rgby: torch.Tensor, tta_combine: str) -> np.ndarray:
    """The workflow's way: per fold predict_probs + combine (predict), mean over folds (summary), weighted
    mean over models (ensemble)."""
    batches = [(rgby[:3], None, None), (rgby[3:], None, None)]  # as a loader gives them
    per_model = []
    for files in checkpoints:
        folds = []
        for f in files:
            model, cfg = load_model(load_checkpoint(f), torch.device("cpu"))
            views = predict_probs(model, batches, torch.device("cpu"), cfg["color_mode"], tuple(VIEWS))
            folds.append(combine(views, tta_combine))
        per_model.append(np.mean(folds, 0).astype(np.float32))
    return weighted_mean(per_model, np.array(WEIGHTS))


@pytest.mark.parametrize("tta_combine", ["mean", "max"])
def test_module_computes_what_predict_summary_and_ensemble_compute(checkpoints, tta_combine):
    module = EnsembleModule.from_checkpoints(checkpoints, WEIGHTS, VIEWS, tta_combine, **NO_CROPS)
    x = images(5)
    with torch.no_grad():
        got = module(x).numpy()
    expected = by_predict(checkpoints, x, tta_combine)
    assert got.shape == (5, 28) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-6
    # The parts matter, so a shortcut could not match by chance: views, members and weights all differ.
    with torch.no_grad():
        members = module.member_probs(x).numpy()
        rule = {"mean": "max", "max": "mean"}[tta_combine]
        other = EnsembleModule(module.members, VIEWS, rule, module.weights.tolist())
        assert np.abs(other(x).numpy() - got).max() > 1e-3
    assert np.abs(members[0] - members[1]).max() > 1e-3  # the folds of one model
    assert np.abs(weighted_mean([members[:2].mean(0), members[2:].mean(0)], np.ones(2)) - got).max() > 1e-3


@pytest.mark.parametrize("tta_combine", ["mean", "max"])
def test_onnx_graph_matches_the_module_for_any_batch_size(checkpoints, tta_combine, tmp_path):
    module = EnsembleModule.from_checkpoints(checkpoints, WEIGHTS, VIEWS, tta_combine, **NO_CROPS)
    path = tmp_path / "ensemble.onnx"
    export_onnx(module, SIZE, path)
    assert [p.name for p in tmp_path.iterdir()] == ["ensemble.onnx"]  # one file, weights inside
    graph = onnx.load(str(path))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,) = graph.graph.input
    assert inp.name == "rgby" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim][1:] == [4, SIZE, SIZE]
    assert inp.type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    x = images(5, seed=1)
    for n in (1, 5):
        assert check_onnx(path, module, x[:n]) <= 1e-4
    path.unlink()  # ~180 MB


def shard_rows(path, n: int, seed: int) -> ShardRows:
    """A shard of n random whole SIZE px RGBY rows, as the shard step writes them (the keys predict reads)."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as h5:
        h5.create_dataset(h5n.IMAGES, data=rng.integers(0, 256, (n, SIZE, SIZE, 4), dtype=np.uint8))
        h5.create_dataset(h5n.IDS, data=np.array([f"i{k}" for k in range(n)], dtype=object), dtype=h5py.string_dtype())
        h5.attrs[h5n.FORMAT] = h5n.SHARD_FORMAT
    return ShardRows.from_files([path])


def test_onnx_graph_scores_crops_and_per_image_normalisation_as_predict_does(tmp_path):
    """Members with their own crop sizes and normalisations, crops=4 fixed, tta_combine max: the exported graph
    gives what predict gives (each member's crops x views from the shard rows, combined by max; the members'
    weighted mean), to 1e-5."""
    files = []
    for name, mode, seed, crop, norm in [("a", "gyb", 1, 24, "per_image"), ("b", "rgby", 2, 16, "imagenet")]:
        (tmp_path / name).mkdir()
        files.append(checkpoint(tmp_path / name / "best.pt", mode, seed, crop_size=crop, normalize=norm))
    rows = shard_rows(tmp_path / "s.h5", 3, seed=5)
    crops = {"crops": 4, "crop_placement": "fixed", "seed": 0}
    expected = []
    for f in files:
        model, cfg = load_model(load_checkpoint(f), torch.device("cpu"))
        offsets = model_crops(cfg, **crops)
        _, probs, per_view = predict_rows(
            model, cfg, rows, torch.device("cpu"), VIEWS, "max", "mean", 2, 0, offsets=offsets
        )
        assert per_view.shape == (4 * len(VIEWS), 3, 28)
        expected.append(probs)
    expected = weighted_mean(expected, np.array(WEIGHTS))
    module = EnsembleModule.from_checkpoints([[files[0]], [files[1]]], WEIGHTS, VIEWS, "max", **crops)
    assert module.describe()[0] == {
        "color_mode": "gyb",
        "normalize": "per_image",
        "crop_size": 24,
        "crop_offsets_yx": [[0, 0], [0, 8], [8, 0], [8, 8]],  # the corners of 32 px
    }
    assert module.describe()[1]["crop_size"] == 16 and module.describe()[1]["crop_offsets_yx"][3] == [16, 16]
    path = tmp_path / "ensemble.onnx"
    export_onnx(module, SIZE, path)

    with h5py.File(tmp_path / "s.h5") as h5:  # the shard rows as the graph takes them (SIZE px: no resize)
        x = np.ascontiguousarray(h5[h5n.IMAGES][...].transpose(0, 3, 1, 2))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"rgby": x})
    path.unlink()
    assert np.abs(got - expected).max() <= 1e-5
    # The crops matter: the whole image, or mean over crops, would not match by chance.
    whole = EnsembleModule.from_checkpoints([[files[0]], [files[1]]], WEIGHTS, VIEWS, "max", **NO_CROPS)
    mean = EnsembleModule(module.members, VIEWS, "mean", module.weights.tolist())
    with torch.no_grad():
        assert np.abs(whole(torch.as_tensor(x)).numpy() - expected).max() > 1e-3
        assert np.abs(mean(torch.as_tensor(x)).numpy() - expected).max() > 1e-3
    # What the package says of it.
    settings = ExportSettings(VIEWS, "max", True, [], ["A B"], "CC-BY-4.0", 4, "fixed", 0)
    assert crops_phrase(module, settings) == " x 4 crops (fixed placement) of 16/24 px"
    assert crops_phrase(whole, settings) == ""
    assert preprocessing(SIZE, [], SIZE, module.describe())["members"] == module.describe()


def test_member_weights_split_each_model_weight_over_its_folds():
    assert member_weights([0.7, 0.3], [2, 2]) == pytest.approx([0.35, 0.35, 0.15, 0.15])
    assert member_weights([2, 2], [3, 1]) == pytest.approx([1 / 6, 1 / 6, 1 / 6, 0.5])  # normalised
    with pytest.raises(ValueError, match=re.escape("2 model weights for 1 models")):
        member_weights([0.5, 0.5], [2])
    with pytest.raises(ValueError, match="non-negative with a positive sum"):
        member_weights([0.0, 0.0], [1, 1])


def test_module_refuses_what_it_cannot_compute():
    model = build_model("resnet18", 3)
    with pytest.raises(ValueError, match=re.escape("unknown combine 'median' (mean or max)")):
        EnsembleModule([(model, "gyb")], VIEWS, "median", [1.0])
    with pytest.raises(ValueError, match=re.escape("2 weights for 1 members")):
        EnsembleModule([(model, "gyb")], VIEWS, "mean", [0.5, 0.5])
    with pytest.raises(ValueError, match=re.escape("TTA views must be dihedral views 0-7, got [0, 8]")):
        EnsembleModule([(model, "gyb")], [0, 8], "mean", [1.0])


def test_members_of_different_image_sizes_are_refused(checkpoints, tmp_path):
    state = load_checkpoint(checkpoints[1][0])
    state["config"]["image_size"] = 64
    torch.save(state, tmp_path / "best.pt")
    with pytest.raises(ValueError, match=re.escape("the members' image sizes differ ([32, 64])")):
        EnsembleModule.from_checkpoints(
            [checkpoints[0], [str(tmp_path / "best.pt")]], WEIGHTS, VIEWS, "mean", **NO_CROPS
        )


# --- what export refuses before it writes, or before anything is trained ----------------------------------

SCHEMA = REPO / "config" / "schemas" / "config.schema.yaml"
METRICS = {
    "n_train": 10,
    "ensemble": {"f1_cross_fitted": 0.3, "f1_at_0.5": 0.2, "final_method": "per_class"},
    "prior_baseline": {"f1": 0.05},
}


def test_the_readme_lists_each_stages_key_packages_and_says_where_the_full_lists_are():
    here = versions.environment_versions()
    node = {**here, "packages": {**here["packages"], "torch": "2.13.0"}}
    software = versions.merge({"train and predict": [here, node], "ensemble": [here], "export": [here]})
    readme = package_readme(METRICS, ["m"], 2, SIZE, VIEWS, software=software)
    section = readme.split("\n## Software versions\n", 1)[1]
    assert "results/metrics.json" in section
    table = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| ")]
    rows = {row[0].strip(): [c.strip() for c in row[1:]] for row in table}
    torch_version = here["packages"]["torch"]
    assert rows["package"] == ["train and predict", "ensemble", "export"]
    assert rows["torch"] == [f"{torch_version} / 2.13.0", torch_version, torch_version]
    assert "## Software versions" not in package_readme(METRICS, ["m"], 2, SIZE, VIEWS)


def demo_config(**changes) -> dict:
    config = copy.deepcopy(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    config.update(changes)
    return validate_config(config, SCHEMA)


def settings(license: str) -> ExportSettings:
    return ExportSettings(VIEWS, "mean", True, [], ["A B"], license, 0, "fixed", 0)


def test_check_exportable_names_the_key_export_cannot_take():
    """Planning stops on what one ONNX graph cannot be: tiled models, or models of different input sizes (a model
    without image_size takes the shards' image_size); a config it can export passes."""
    models = [{"name": "a", "backbone": "resnet18"}, {"name": "b", "backbone": "resnet18"}]
    check_exportable(demo_config(models=copy.deepcopy(models)))
    same = [{**models[0], "image_size": 64}, models[1]]  # 64 given and 64 from image_size: one size
    check_exportable(demo_config(models=same))
    with pytest.raises(ConfigError, match=r"^tiling: grid cannot be exported: the ONNX graph scores whole images"):
        # Label transfer off: the schema refuses tiling with it before export is asked.
        check_exportable(demo_config(tiling="grid", tile_size=32, transfer={"enabled": False}))
    larger = [models[0], {**models[1], "image_size": 48}]
    message = "models[1].image_size: 48 differs from models[0] (64, from image_size): one ONNX graph takes one size"
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        check_exportable(demo_config(models=larger))
    first = [{**models[0], "image_size": 48}, models[1], {**models[1], "name": "c", "image_size": 48}]
    message = "models[1].image_size: 64 (from image_size) differs from models[0] (48): one ONNX graph"
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        check_exportable(demo_config(models=first))


def test_the_schema_takes_only_an_spdx_shaped_licence():
    assert demo_config(export={"license": "CC-BY-4.0"})["export"]["license"] == "CC-BY-4.0"
    with pytest.raises(ConfigError, match=r"export\.license: 'my own licence' does not match"):
        demo_config(export={"license": "my own licence"})


@pytest.fixture
def offline(monkeypatch) -> list:
    """No network: every HTTP request bioimageio.spec could make is recorded and refused."""
    calls = []

    def refuse(self, request, *args, **kwargs):
        calls.append(str(request.url))
        raise httpx.ConnectError("offline test", request=request)

    monkeypatch.setattr(httpx.Client, "send", refuse)
    return calls


@pytest.mark.parametrize("license", ["my own licence", "MY-LICENCE-1.0"])
def test_an_invalid_licence_stops_export_naming_the_field_and_writes_nothing(checkpoints, tmp_path, offline, license):
    """A licence that is no SPDX id (a free text, or an id-shaped name that SPDX does not list) fails bioimage.io's
    validation, offline, before anything is written: the error names `license`, and there is no package folder."""
    module = EnsembleModule.from_checkpoints(checkpoints[:1], [1.0], VIEWS, "mean", **NO_CROPS)
    out = tmp_path / "export" / "hpa_classifier"
    sample = images(2).numpy()
    message = f"{out}: no package written: the package's bioimage.io description (rdf.yaml, format 0.5.4) fails "
    message += f"bioimageio.spec's validation (export.license '{license}' is no SPDX licence id, e.g. CC-BY-4.0):"
    with pytest.raises(ExportError, match="^" + re.escape(message)) as e:
        write_package(out, module, SIZE, settings(license), np.full(28, 0.5), METRICS, ["m"], 2, sample, shard_size=64)
    assert re.search(r"\n  license: Input should be '0BSD', .* \.\.\.$", str(e.value), re.S), str(e.value)
    assert not out.exists() and not out.parent.exists()
    assert offline == []


def test_check_rdf_passes_a_valid_description_and_names_each_failing_field(offline):
    """The package's description as export makes it is valid (format 0.5); fields bioimage.io refuses are named
    with their place in the description (a list item by its index)."""
    sha = dict.fromkeys(("ensemble.onnx", "test_input.npy", "test_output.npy", "thresholds.json"), UNWRITTEN)
    sha |= dict.fromkeys(("classes.json", "preprocessing.json"), UNWRITTEN)
    rdf = bioimageio_rdf(SIZE, settings("CC-BY-4.0"), METRICS, sha)
    check_rdf(rdf)
    bad = copy.deepcopy(rdf)
    del bad["name"]
    bad["inputs"][0]["axes"][2]["size"] = -1
    with pytest.raises(ExportError) as e:
        check_rdf(bad)
    fields = [line.split(":")[0].strip() for line in str(e.value).splitlines()[1:]]
    assert fields == ["name", "inputs[0].axes[2].size"], str(e.value)
    assert "license" not in str(e.value)
    assert offline == []
