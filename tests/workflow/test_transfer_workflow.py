"""Label transfer end to end on a tiny demo (tests/configs/transfer.yaml): the default target with rules embed,
transfer and transfer_figure, then export and classify with the package's references. The shipped demo's
acceptance (hidden-label gain, retrieval accuracy) is tests/workflow/test_demo_acceptance.py."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import copy_workflow, run_snakemake, workflow_config, write_config
from hpaflow import h5names as h5n
from hpaflow.duplicates import antibody
from hpaflow.package import Package

pytestmark = pytest.mark.slow


def read_csv(path):
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    wf = copy_workflow(tmp_path_factory.mktemp("transfer") / "wf")
    write_config(wf / "config/config.yaml", workflow_config("transfer"))
    run_snakemake(wf, "demo_data")
    run_snakemake(wf, timeout=1200)
    run_snakemake(wf, "export", timeout=1200)
    return wf


def test_the_submission_is_the_ensembles_with_the_replaced_fields_given_their_neighbours_labels(run):
    res = run / "results"
    for f in ["transfer/embeddings.h5", "transfer/embed.pt", "plots/transfer_neighbours.png"]:
        assert (res / f).stat().st_size > 0, f
    metrics = json.loads((res / "transfer/metrics.json").read_text())["transfer"]
    sub, ens = read_csv(res / "submission.csv"), read_csv(res / "submission_ensemble.csv")
    samples = read_csv(run / "data/demo/sample_submission.csv")
    assert sub.Id.tolist() == ens.Id.tolist() == samples.Id.tolist()
    nb = read_csv(res / "transfer/neighbours.csv")
    assert list(nb.columns) == ["Id", "part", "neighbour_id", "similarity", "replaced"]
    test = nb[nb.part == "test"].set_index("Id").loc[sub.Id]
    assert len(nb[nb.part == "oof"]) == metrics["n_oof"] > 0
    external = read_csv(run / "data/demo/hpav18.csv").set_index("Id").Target
    assert test.neighbour_id.isin(external.index).all()  # references are the external fields only
    tau = np.inf if metrics["tau"] is None else metrics["tau"]
    replaced = test.replaced.to_numpy() == "True"
    assert np.array_equal(replaced, test.similarity.astype(float).to_numpy() >= tau - 1e-6)
    assert metrics["replaced_test"] == replaced.sum() and metrics["n_test"] == len(sub)
    want = np.where(replaced, external.reindex(test.neighbour_id).to_numpy(), ens.Predicted.to_numpy())
    assert sub.Predicted.tolist() == want.tolist()


def test_no_field_meets_its_own_antibody_and_no_test_field_is_trained_on(run):
    res = run / "results"
    with h5py.File(res / "transfer/embeddings.h5", "r") as h5:
        ids = h5[h5n.IDS].asstr()[...]
        test, trained, group = h5[h5n.EMB_TEST][...], h5[h5n.EMB_TRAINED][...], h5[h5n.EMB_GROUP][...]
        emb = h5[h5n.EMBEDDINGS][...]
    assert trained.any() and not (trained & test).any()
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    group_of = dict(zip(ids, group))
    oof = read_csv(res / "transfer/neighbours.csv").query("part == 'oof'")
    assert len(oof) and all(group_of[a] != group_of[b] for a, b in zip(oof.Id, oof.neighbour_id))
    # Fields of one antibody are one group: an HPAv18 field never takes the labels of its own antibody.
    pairs = [(antibody(a), antibody(b)) for a, b in zip(oof.Id, oof.neighbour_id) if antibody(a)]
    assert pairs and all(a != b for a, b in pairs)


def test_the_package_carries_the_references_and_classify_transfers_as_the_workflow_did(run):
    package = Package(run / "results/export/hpa_classifier.zip")
    package.verify()
    t = package.transfer()
    metrics = json.loads((run / "results/transfer/metrics.json").read_text())["transfer"]
    assert t.tau == metrics["tau"] and len(t.ids) == metrics["references"]
    # The demo's test fields classified with the package: the neighbours and similarities the workflow found.
    zip_path = run / "results/export/hpa_classifier.zip"
    run_snakemake(
        run, "classify", "--config", f"classify={{name: t, images: data/demo/test, format: png, package: {zip_path}}}"
    )
    got = read_csv(run / "results/classify/t/predictions.csv").set_index("Id")
    nb = read_csv(run / "results/transfer/neighbours.csv").query("part == 'test'").set_index("Id").loc[got.index]
    assert got.neighbour_id.tolist() == nb.neighbour_id.tolist()
    assert np.abs(got.similarity.astype(float) - nb.similarity.astype(float)).max() < 1e-4
