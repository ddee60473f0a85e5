"""Where two parts meet, each fact is stated once: members found by key, the package found in this clone,
what cannot be exported stopped at planning, ImageNet weights decided by content (issue 20)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from conftest import REPO, TINY, copy_workflow, plan, run_snakemake, workflow_config, write_config
from hpaflow.weights import WEIGHTS


def test_each_clone_imports_its_own_package_whatever_venv_runs_it(tmp_path):
    """A venv shared by two clones: each clone's tests import that clone's hpaflow (pytest.ini pythonpath),
    and the venv holds no hpaflow of its own that could point at one clone (or at a deleted one)."""
    clone = copy_workflow(tmp_path / "clone")
    shutil.copy(REPO / "pytest.ini", clone / "pytest.ini")
    (clone / "tests").mkdir()
    shutil.copy(REPO / "tests" / "conftest.py", clone / "tests" / "conftest.py")
    shutil.copytree(REPO / "tests" / "configs", clone / "tests" / "configs")
    (clone / "tests" / "test_where.py").write_text(
        "import hpaflow\n"
        "from pathlib import Path\n\n\n"
        "def test_where():\n"
        f"    assert Path(hpaflow.__file__).is_relative_to({str(clone)!r}), hpaflow.__file__\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_where.py"],
        cwd=clone,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    bare = subprocess.run([sys.executable, "-c", "import hpaflow"], cwd=tmp_path, capture_output=True, text=True)
    assert bare.returncode != 0 and "No module named 'hpaflow'" in bare.stderr


@pytest.fixture(scope="module")
def demo_csvs(tmp_path_factory):
    """A copy of the workflow with the tiny demo set written (planning reads its csvs)."""
    wf = copy_workflow(tmp_path_factory.mktemp("seams") / "wf")
    write_config(wf / "config/config.yaml", TINY)
    run_snakemake(wf, "demo_data")
    return wf


@pytest.mark.parametrize(
    "change,message",
    [
        ({"tiling": "grid", "tile_size": 16}, "tiling: grid cannot be exported"),
        (
            {"models": [TINY["models"][0], {**TINY["models"][0], "name": "big", "image_size": 48}]},
            "models[1].image_size: 48 differs from models[0] (32, from image_size)",
        ),
    ],
    ids=["tiling", "sizes"],
)
def test_what_cannot_be_exported_stops_the_planning_before_any_training(demo_csvs, change, message):
    write_config(demo_csvs / "config/config.yaml", {**TINY, **change})
    try:
        proc = run_snakemake(demo_csvs, "-n", "export", check=False)
        assert proc.returncode != 0 and message in proc.stdout + proc.stderr, proc.stdout[-2000:] + proc.stderr
        # The default target (no export) plans as before.
        assert int(plan(run_snakemake(demo_csvs, "-n"))["train"]) >= 2
    finally:
        write_config(demo_csvs / "config/config.yaml", TINY)


def imagenet_like(path, seed: int) -> None:
    """resnet18's ImageNet state_dict shapes with random values, under its hub file name."""
    from hpaflow.models import BACKBONES

    g = torch.Generator().manual_seed(seed)
    state = BACKBONES["resnet18"].build().state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in state.items()}, path)


def test_imagenet_weights_decide_by_content_not_by_folder(demo_csvs, tmp_path):
    """pretrained: true: a missing file stops the planning, named; the same file in another folder reruns
    nothing (pretrained_dir only steers), other weights under the same name rerun the model."""
    pretrained = {**TINY, "models": [{**TINY["models"][0], "pretrained": True}]}
    name = WEIGHTS["resnet18"].files[0]
    target = "results/models/m/fold0/best.pt"

    def config(folder: str) -> None:
        write_config(demo_csvs / "config/config.yaml", {**pretrained, "pretrained_dir": str(tmp_path / folder)})

    config("a")
    try:
        missing = run_snakemake(demo_csvs, "-n", target, check=False)
        assert missing.returncode != 0
        expected = f"models (m): ImageNet weights for resnet18 not found: expected {tmp_path / 'a' / name}"
        assert expected in missing.stdout + missing.stderr
        imagenet_like(tmp_path / "a" / name, 1)
        run_snakemake(demo_csvs, target)
        assert "train" not in plan(run_snakemake(demo_csvs, "-n", target))
        shutil.copytree(tmp_path / "a", tmp_path / "b")
        config("b")
        assert "train" not in plan(run_snakemake(demo_csvs, "-n", target))
        imagenet_like(tmp_path / "b" / name, 2)
        assert plan(run_snakemake(demo_csvs, "-n", target))["train"] == "1"
    finally:
        write_config(demo_csvs / "config/config.yaml", TINY)


TWO_MODELS = workflow_config("two_models")


def outputs(wf) -> dict:
    """What the member-assembling jobs wrote: ensemble, metrics, thresholds, report table, package."""
    out = {
        "metrics": json.loads((wf / "results/metrics.json").read_text()),
        "thresholds": (wf / "results/thresholds.csv").read_text(),
        "headline": (wf / "results/plots/headline.rst").read_text(),
        "package_thresholds": (wf / "results/export/hpa_classifier/thresholds.json").read_text(),
        "package_output": np.load(wf / "results/export/hpa_classifier/test_output.npy"),
    }
    with h5py.File(wf / "results/ensemble.h5", "r") as h5:
        out["weights"] = h5.attrs["weights"][...]
        for name in ("oof_probs", "test_probs", "thresholds"):
            out[name] = h5[name][...]
    return out


@pytest.mark.slow
def test_members_are_found_by_key_whatever_the_input_order(tmp_path):
    """The ensemble, plots and export take their members as named inputs `kind:model:fold`: with the input
    lists built in reverse (folds outer, models and folds reversed), the outputs are identical."""
    wf = copy_workflow(tmp_path / "wf")
    write_config(wf / "config/config.yaml", TWO_MODELS)
    run_snakemake(wf, "demo_data")
    run_snakemake(wf, "all", "export", timeout=1200)
    before = outputs(wf)
    common = wf / "rules/common.smk"
    text = common.read_text()
    assert text.count("for m in MODELS for k in FOLDS}") == 1 and "for m in MODELS}" in text
    common.write_text(
        text.replace("for m in MODELS for k in FOLDS}", "for k in reversed(FOLDS) for m in reversed(MODELS)}").replace(
            "for m in MODELS}", "for m in reversed(MODELS)}"
        )
    )
    proc = run_snakemake(wf, "all", "export", "--forcerun", "ensemble", "plots", "export", timeout=1200)
    assert "Finished jobid" in proc.stdout + proc.stderr and "(Rule: ensemble)" in proc.stdout + proc.stderr
    after = outputs(wf)
    for key, value in before.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(after[key], value, err_msg=key)
        else:
            assert after[key] == value, key
    assert not np.allclose(before["weights"], before["weights"][0])  # fitted, unequal: the order would show


def test_folds_rerun_when_id_format_decides_them_and_shards_do_not(tmp_path):
    """The shipped hpav18 entry declares id_format hpav18; plain instead reruns the folds (not the shards);
    with group_by_antibody false the id_format decides nothing."""
    wf = copy_workflow(tmp_path / "wf")
    assert [d.get("id_format") for d in TINY["datasets"]] == [None, None, "hpav18", None]
    write_config(wf / "config/config.yaml", TINY)
    run_snakemake(wf, "demo_data")
    run_snakemake(wf, "preprocess", "folds")
    plain = {"datasets": [{**d, "id_format": "plain"} for d in TINY["datasets"]]}
    p = write_config(tmp_path / "plain.yaml", plain)
    changed = run_snakemake(wf, "-n", "preprocess", "folds", "--configfile", str(p))
    assert plan(changed) == {"folds": "1", "total": "1"}
    off = {"duplicates": {"group_by_antibody": False}}
    run_snakemake(wf, "preprocess", "folds", "--configfile", str(write_config(tmp_path / "off.yaml", off)))
    both = write_config(tmp_path / "both.yaml", {**off, **plain})
    again = run_snakemake(wf, "-n", "preprocess", "folds", "--configfile", str(both))
    assert "Nothing to be done" in again.stdout + again.stderr
