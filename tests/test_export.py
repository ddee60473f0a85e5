"""ONNX export of the ensemble: the module computes what predict + model_summary + ensemble compute, and
the exported graph (onnxruntime, CPU) computes what the module computes, for any batch size."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
import torch

from hpaflow.ensemble import weighted_mean
from hpaflow.export import EnsembleModule, check_onnx, export_onnx, member_weights
from hpaflow.models import build_model
from hpaflow.predict import combine, load_checkpoint, load_model, predict_probs
from hpaflow.transforms import CHANNELS

VIEWS = [0, 3, 6]
WEIGHTS = [0.7, 0.3]  # per model, as results/ensemble.h5 stores them
SIZE = 32


def checkpoint(path, color_mode: str, seed: int) -> str:
    """A tiny best.pt as training writes it (cf. test_predict.checkpoint), random weights."""
    torch.manual_seed(seed)
    model = build_model("resnet18", CHANNELS[color_mode])
    cfg = {"name": path.parent.name, "backbone": "resnet18", "color_mode": color_mode, "image_size": SIZE}
    torch.save({"model": model.state_dict(), "config": cfg, "train_ids": ["a"]}, path)
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
    module = EnsembleModule.from_checkpoints(checkpoints, WEIGHTS, VIEWS, tta_combine)
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
        other = EnsembleModule(list(zip(module.models, module.color_modes)), VIEWS, rule, module.weights.tolist())
        assert np.abs(other(x).numpy() - got).max() > 1e-3
    assert np.abs(members[0] - members[1]).max() > 1e-3  # the folds of one model
    assert np.abs(weighted_mean([members[:2].mean(0), members[2:].mean(0)], np.ones(2)) - got).max() > 1e-3


@pytest.mark.parametrize("tta_combine", ["mean", "max"])
def test_onnx_graph_matches_the_module_for_any_batch_size(checkpoints, tta_combine, tmp_path):
    module = EnsembleModule.from_checkpoints(checkpoints, WEIGHTS, VIEWS, tta_combine)
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
        EnsembleModule.from_checkpoints([checkpoints[0], [str(tmp_path / "best.pt")]], WEIGHTS, VIEWS, "mean")
