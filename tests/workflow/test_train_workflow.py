"""Training and prediction through real Snakemake runs on the CPU: end to end, and resume after a kill."""

from __future__ import annotations

import json
import re
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import DATA, copy_workflow, kill_snakemake_when, run_snakemake, workflow_config, write_config
from hpaflow.labels import CLASS_NAMES, encode, parse_target

E2E = workflow_config("e2e")
MODELS = E2E["models"]


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    wf = copy_workflow(tmp_path_factory.mktemp("e2e"))
    write_config(wf / "config" / "config.yaml", E2E)
    run_snakemake(wf, "demo_data")
    run_snakemake(wf)  # the default target: shards, folds, train, predict
    return wf


def train_truth(wf) -> pd.DataFrame:
    frames = [pd.read_csv(wf / "data/demo" / d["labels"], dtype=str) for d in E2E["datasets"] if d["role"] == "train"]
    return pd.concat(frames, ignore_index=True)


def test_out_of_fold_predictions_cover_every_train_id_once(e2e):
    truth = train_truth(e2e)
    y = dict(zip(truth["Id"], encode([parse_target(t, "") for t in truth["Target"]])))
    folds = pd.read_csv(e2e / "results/folds.csv")
    for m in MODELS:
        seen = []
        for k in range(E2E["n_folds"]):
            with h5py.File(e2e / f"results/predictions/{m['name']}/fold{k}.h5") as h5:
                ids = h5["oof/ids"].asstr()[...]
                probs, labels = h5["oof/probs"][...], h5["oof/labels"][...]
                assert h5.attrs["views"].tolist() == list(range(8))
            assert set(ids) == set(folds.loc[folds["fold"] == k, "Id"])  # this fold's validation Ids
            assert probs.dtype == np.float32 and probs.shape == (len(ids), 28)
            assert (probs >= 0).all() and (probs <= 1).all()
            assert np.array_equal(labels, np.stack([y[i] for i in ids]))
            seen += list(ids)
        assert sorted(seen) == sorted(truth["Id"]) and len(seen) == len(set(seen))


def test_test_predictions_in_sample_submission_order(e2e):
    sample = pd.read_csv(e2e / "data/demo/sample_submission.csv")["Id"].tolist()
    for m in MODELS:
        for k in range(E2E["n_folds"]):
            with h5py.File(e2e / f"results/predictions/{m['name']}/fold{k}.h5") as h5:
                assert h5["test/ids"].asstr()[...].tolist() == sample
                assert h5["test/probs"].shape == (len(sample), 28)


def test_training_wrote_metrics_and_progress(e2e):
    for m in MODELS:
        for k in range(E2E["n_folds"]):
            metrics = pd.read_csv(e2e / f"results/models/{m['name']}/fold{k}/metrics.csv")
            assert metrics["epoch"].tolist() == list(range(1, m["epochs"] + 1))
            assert {"train_loss", "val_bce", "val_f1_at_0.5", "val_f1_best_global"} <= set(metrics.columns)
            best = torch.load(e2e / f"results/models/{m['name']}/fold{k}/best.pt", weights_only=False)
            assert np.isclose(best["val_f1"], metrics["val_f1_best_global"].max())
            log = (e2e / f"logs/train/{m['name']}/fold{k}.log").read_text()
            assert "img/s" in log and "ETA" in log and "done: best validation macro F1" in log


RESUME = workflow_config("resume")
TARGET = "results/models/m/fold0/best.pt"


def prepared(path):
    wf = copy_workflow(path)
    write_config(wf / "config" / "config.yaml", RESUME)
    run_snakemake(wf, "demo_data")
    return wf


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    killed = prepared(tmp_path / "killed")
    run_dir = killed / "results/models/m/fold0"
    # Snakemake and its job killed from outside once an epoch is done (a preempted node): metrics.csv, an
    # output, is written right after the epoch's checkpoint, so the job has begun writing its outputs.
    kill_snakemake_when(killed, [TARGET], lambda: (run_dir / "metrics.csv").exists())
    assert not (run_dir / "best.pt").exists()

    # What Snakemake then asks for, and docs/usage.md says: --rerun-incomplete, and --unlock for its lock.
    first = run_snakemake(killed, TARGET, check=False)
    assert first.returncode != 0 and "--rerun-incomplete" in first.stderr and "metrics.csv" in first.stderr
    second = run_snakemake(killed, "--rerun-incomplete", TARGET, check=False)
    assert second.returncode != 0 and "--unlock" in second.stderr
    run_snakemake(killed, "--unlock")
    run_snakemake(killed, "--rerun-incomplete", TARGET)
    log = (killed / "logs/train/m/fold0.log").read_text()
    done = int(re.search(r"resuming from \S+: epoch (\d) of 4 done", log)[1])
    assert 1 <= done < 4
    after_resume = log.split("resuming from")[1]
    assert f"epoch {done}/4" not in after_resume and "epoch 4/4" in after_resume

    straight = prepared(tmp_path / "straight")
    shutil.rmtree(straight / "data")  # same seed -> same data; reuse the killed run's to be sure
    shutil.copytree(killed / "data", straight / "data")
    run_snakemake(straight, TARGET)
    assert_same_training(run_dir, straight / "results/models/m/fold0")

    # A checkpoint damaged on disk: one warning naming it, then training from scratch, to the same result.
    last = run_dir / "checkpoints/last.pt"
    last.write_bytes(last.read_bytes()[:100_000])
    run_snakemake(killed, "--forcerun", "train", "--", TARGET)
    log = (killed / "logs/train/m/fold0.log").read_text().split("=== start")[-1]
    assert f"checkpoint {last.relative_to(killed)} cannot be read" in log and "starting from scratch" in log
    assert "resuming" not in log and "epoch 1/4" in log
    assert_same_training(run_dir, straight / "results/models/m/fold0")


def assert_same_training(a, b):
    ma = pd.read_csv(a / "metrics.csv").drop(columns="images_per_s")
    mb = pd.read_csv(b / "metrics.csv").drop(columns="images_per_s")
    assert ma["epoch"].tolist() == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(ma, mb, rtol=1e-5)
    wa = torch.load(a / "best.pt", weights_only=False)["model"]
    wb = torch.load(b / "best.pt", weights_only=False)["model"]
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-5) for k in wa)


def test_model_summary_averages_folds_and_assembles_oof(e2e):
    for m in MODELS:
        folds = []
        for k in range(E2E["n_folds"]):
            with h5py.File(e2e / f"results/predictions/{m['name']}/fold{k}.h5") as h5:
                folds.append((h5["oof/ids"].asstr()[...], h5["oof/probs"][...], h5["test/probs"][...]))
        with h5py.File(e2e / f"results/summary/{m['name']}.h5") as h5:
            assert np.allclose(h5["test_probs"][...], np.mean([f[2] for f in folds], 0), atol=1e-6)
            oof = dict(zip(h5["oof_ids"].asstr()[...], h5["oof_probs"][...]))
            assert h5["oof_ids"].asstr()[...].tolist() == pd.read_csv(e2e / "results/folds.csv")["Id"].tolist()
        for ids, probs, _ in folds:
            assert all(np.array_equal(oof[i], p) for i, p in zip(ids, probs))


def test_submission_and_metrics(e2e):
    from hpaflow.submission import check_submission

    sample = pd.read_csv(e2e / "data/demo/sample_submission.csv")["Id"].tolist()
    sub = pd.read_csv(e2e / "results/submission.csv", keep_default_na=False)
    check_submission(sub, sample)
    assert (sub["Predicted"] != "").all()  # at_least_one is on by default

    import json

    metrics = json.loads((e2e / "results/metrics.json").read_text())
    assert set(metrics["models"]) == {m["name"] for m in MODELS}
    for block in [*metrics["models"].values(), metrics["ensemble"]]:
        assert set(block["thresholds"]) == {"global", "per_class", "rate"}
        for method in block["thresholds"].values():
            assert 0 <= method["f1_cross_fitted"] <= 1 and 0 <= method["f1_in_sample"] <= 1
            assert len(method["values"]) == 28
        assert len(block["per_class_f1"]) == 28 and len(block["predicted_frequency"]) == 28
    truth = train_truth(e2e)
    y = encode([parse_target(t, "") for t in truth["Target"]])
    assert np.isclose(metrics["prior_baseline"]["f1"], y.mean(0).mean(), atol=1e-4)  # 2pq/(p+q) = q when p = q
    # The leak report: the demo plants near-duplicates (data/demo/duplicates_truth.csv); policy group keeps
    # every pair in one fold.
    planted = pd.read_csv(e2e / "data/demo/duplicates_truth.csv")
    pairs = pd.read_csv(e2e / "results/duplicates.csv", dtype={"id_a": str, "id_b": str})
    found = set(zip(pairs["id_a"], pairs["id_b"]))
    assert set(zip(planted["id_a"], planted["id_b"])) <= found
    leaks = metrics["duplicates"]
    assert leaks["policy"] == "group" and leaks["pairs_split_across_folds"] == 0
    assert (
        leaks["train_train_pairs"] == (pairs["kind"] == "train-train").sum() >= (planted["kind"] == "train-train").sum()
    )
    assert leaks["train_test_pairs"] == (pairs["kind"] == "train-test").sum() >= (planted["kind"] == "train-test").sum()
    assert leaks["label_conflicts"] == planted["label_changed"].sum()
    folds = pd.read_csv(e2e / "results/folds.csv", dtype={"Id": str})
    assert (folds.groupby("group")["fold"].nunique() == 1).all()
    assert metrics["folds"]["class_spread_max"] == max(metrics["folds"]["class_spread"].values())


def test_report(e2e):
    for name in [
        "training_curves",
        "per_class_f1",
        "threshold_curves",
        "label_frequency",
        "image_grid",
        "duplicate_pairs",
    ]:
        assert (e2e / f"results/plots/{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run_snakemake(e2e, "--report", "results/report.html")
    html = (e2e / "results/report.html").read_text()
    assert "training_curves.png" in html and "image_grid.png" in html
    # The front page holds the headline table, with the figures of metrics.json.
    metrics = json.loads((e2e / "results/metrics.json").read_text())
    assert "Out-of-fold macro F1 (cross-fitted" in html and "prior-only baseline" in html
    for block in [*metrics["models"].values(), metrics["ensemble"]]:
        assert f"{block['thresholds']['per_class']['f1_cross_fitted']:.4f}" in html
    assert f"{metrics['prior_baseline']['f1']:.4f}" in html
    # What ran: the software versions table of the front page, with torch as the jobs' environment has it.
    torch_version = metrics["software_versions"]["train and predict"][0]["packages"]["torch"]
    assert "Software versions" in html and torch_version in html


def test_export_package_reproduces_the_ensembles_test_probabilities(e2e):
    """`snakemake export`: the ONNX graph, run with onnxruntime on the test shards' rows, gives the
    ensemble's own test probabilities (predict -> model_summary -> ensemble); the package's files."""
    import zipfile

    import onnxruntime as ort

    run_snakemake(e2e, "export")
    pkg = e2e / "results/export/hpa_classifier"
    names = [
        *["README.md", "classes.json", "cover.png", "ensemble.onnx", "manifest.json", "preprocessing.json"],
        *["rdf.yaml", "test_input.npy", "test_output.npy", "thresholds.json"],
    ]
    assert sorted(p.name for p in pkg.iterdir() if p.name != ".snakemake_timestamp") == names  # Snakemake's marker
    with zipfile.ZipFile(e2e / "results/export/hpa_classifier.zip") as z:
        assert sorted(z.namelist()) == names
    with h5py.File(e2e / "results/ensemble.h5") as h5:
        expected = dict(zip(h5["test_ids"].asstr()[...], h5["test_probs"][...]))
        thresholds = h5["thresholds"][...]
    sess = ort.InferenceSession(str(pkg / "ensemble.onnx"), providers=["CPUExecutionProvider"])
    seen = 0
    for shard in sorted((e2e / "results/shards/kaggle_test").glob("*.h5")):
        with h5py.File(shard) as h5:
            ids, images = h5["ids"].asstr()[...], h5["images"][...]
        (got,) = sess.run(None, {"rgby": np.ascontiguousarray(images.transpose(0, 3, 1, 2))})
        assert np.abs(got - np.stack([expected[i] for i in ids])).max() <= 1e-4
        seen += len(ids)
    assert seen == len(expected) == E2E["demo"]["n_test"]
    th = json.loads((pkg / "thresholds.json").read_text())
    assert th["at_least_one"] is True and th["thresholds"] == thresholds.tolist()  # exact, not rounded
    assert json.loads((pkg / "classes.json").read_text())["0"] == "Nucleoplasm"
    assert json.loads((pkg / "preprocessing.json").read_text())["resize"]["size"] == E2E["image_size"]
    assert "max abs difference" in (e2e / "logs/export.log").read_text()


def test_exported_package_passes_the_bioimageio_model_test(e2e):
    """The package's rdf.yaml is a valid bioimage.io model (format 0.5) whose ONNX weights reproduce its test
    tensors (real shard rows in, the PyTorch ensemble's output out): bioimageio.core's own test, offline."""
    from bioimageio.core import test_model

    run_snakemake(e2e, "export")
    pkg = e2e / "results/export/hpa_classifier"
    summary = test_model(pkg / "rdf.yaml")
    assert summary.status == "passed", summary.format()
    names = [d.name for d in summary.details if d.status == "passed"]
    assert "Reproduce test outputs from test inputs (onnx)" in names
    rows = np.load(pkg / "test_input.npy")
    with h5py.File(sorted((e2e / "results/shards/kaggle_train").glob("*.h5"))[0]) as h5:
        assert np.array_equal(rows, h5["images"][: len(rows)].transpose(0, 3, 1, 2))  # real shard rows


def classify_config(name: str, images, fmt: str, package=None) -> str:
    extra = f", package: {package}" if package else ""
    return f"classify={{name: {name}, images: {images}, format: {fmt}{extra}}}"


def test_classify_the_demo_test_images_as_new_fields(e2e, tmp_path):
    """`snakemake classify` on a copy of the demo's test images, as a user's new folder: every Id gets
    exactly the labels of results/submission.csv and the ensemble's test probabilities (within 1e-4)."""
    new = tmp_path / "plate42"
    shutil.copytree(e2e / "data/demo/test", new)
    run_snakemake(e2e, "classify", "--config", classify_config("plate42", new, "png"))
    out = e2e / "results/classify/plate42"
    got = pd.read_csv(out / "predictions.csv", dtype={"Id": str, "Predicted": str}, keep_default_na=False)
    sub = pd.read_csv(e2e / "results/submission.csv", dtype=str, keep_default_na=False)
    assert sorted(got.Id) == sorted(sub.Id) and len(got) == E2E["demo"]["n_test"]
    assert dict(zip(got.Id, got.Predicted)) == dict(zip(sub.Id, sub.Predicted))
    with h5py.File(e2e / "results/ensemble.h5") as h5:
        expected = dict(zip(h5["test_ids"].asstr()[...], h5["test_probs"][...]))
    probs = got.iloc[:, 3:].to_numpy()
    assert list(got.columns[3:]) == list(CLASS_NAMES)
    assert np.abs(probs - np.stack([expected[i] for i in got.Id])).max() <= 1e-4
    first = got.Predicted.iloc[0].split()
    assert got.Labels.iloc[0] == "; ".join(CLASS_NAMES[int(k)] for k in first)
    assert (out / "gallery.png").stat().st_size > 0
    assert re.search(
        r"classify: \d+/\d+ \(100%\) [\d.]+ images/s", (e2e / "logs/classify/plate42/predict.log").read_text()
    )


def test_classify_with_a_package_on_a_machine_that_never_trained(e2e, tmp_path):
    """A clean copy of the workflow (no results, no demo data) given only the exported zip classifies the
    real HPAv18 sample field (1728 px JPEGs), and agrees with onnxruntime run on that field by hand."""
    import onnxruntime as ort

    from hpaflow.io import read_rgby

    run_snakemake(e2e, "export")
    lab = copy_workflow(tmp_path / "lab")
    assert not (lab / "results").exists() and not (lab / "data").exists()
    package = e2e / "results/export/hpa_classifier.zip"
    run_snakemake(lab, "classify", "--config", classify_config("hpav18", DATA, "jpg", package))
    got = pd.read_csv(lab / "results/classify/hpav18/predictions.csv", dtype={"Id": str}, keep_default_na=False)
    assert list(got.Id) == ["89_B5_1"] and got.Predicted.iloc[0] != ""
    assert not (lab / "results/models").exists()
    rgby = read_rgby(DATA, "89_B5_1", "jpg", E2E["image_size"])
    sess = ort.InferenceSession(str(e2e / "results/export/hpa_classifier/ensemble.onnx"))
    (p,) = sess.run(None, {"rgby": rgby.transpose(2, 0, 1)[None]})
    assert np.abs(got.iloc[0, 3:].to_numpy(np.float64) - p[0]).max() <= 1e-5
