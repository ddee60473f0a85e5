"""The shipped demo, end to end as `make demo` runs it (about 16 minutes on 2 cores), against its acceptance:
fitted thresholds beat 0.5, the ensemble is at least its members' mean (within 0.002), every model clearly beats the
prior-only baseline, and the submission scored on the hidden test labels lands near the cross-fitted estimate."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from sklearn.metrics import f1_score

from conftest import copy_workflow, run_snakemake
from hpaflow.labels import encode, parse_target

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    wf = copy_workflow(tmp_path_factory.mktemp("demo"))
    run_snakemake(wf, "demo_data")
    run_snakemake(wf, timeout=1800)
    run_snakemake(wf, "--report", "results/report.html")
    return wf


def test_demo_meets_its_acceptance(demo):
    m = json.loads((demo / "results/metrics.json").read_text())
    ens, baseline = m["ensemble"], m["prior_baseline"]["f1"]
    assert ens["f1_cross_fitted"] > ens["f1_at_0.5"] + 0.05
    # At least the members' mean, within 0.002: with near-duplicates kept in one fold (policy group) the demo's
    # equal-weight ensemble scored 0.2492 against a mean of 0.2497 (members 0.2555, 0.2439), a gap far below
    # what a change of folds moves these figures by (0.002-0.02 between policy off and group).
    assert ens["f1_cross_fitted"] >= ens["members_mean_f1_cross_fitted"] - 0.002
    for name, model in m["models"].items():
        assert model["f1_cross_fitted"] > 2 * baseline, name

    sub = pd.read_csv(demo / "results/submission.csv", keep_default_na=False)
    truth = pd.read_csv(demo / "data/demo/test_labels.csv")
    assert sub["Id"].tolist() == truth["Id"].tolist()
    predicted = encode([[int(t) for t in s.split()] for s in sub["Predicted"]])
    true = encode([parse_target(t, "") for t in truth["Target"]])
    test_f1 = f1_score(true, predicted, average="macro", zero_division=0)
    assert abs(test_f1 - ens["f1_cross_fitted"]) < 0.08, (test_f1, ens["f1_cross_fitted"])
    assert (demo / "results/report.html").stat().st_size > 100_000


def test_label_transfer_on_the_demo(demo):
    """The antibody embedding finds the demo's antibodies again (held-out retrieval), the transferred submission
    is the ensemble's with the replaced fields given their neighbours' labels, and tau leaves the fields that are
    no sibling of an HPAv18 antibody alone: a demo without siblings differs from this one in the siblings only
    (tests/unit/test_demo.py), so at most 1% of its test fields would be replaced."""
    t = json.loads((demo / "results/transfer/metrics.json").read_text())["transfer"]
    assert t["retrieval_accuracy"] >= 0.8
    sub = pd.read_csv(demo / "results/submission.csv", keep_default_na=False).set_index("Id")
    ens = pd.read_csv(demo / "results/submission_ensemble.csv", keep_default_na=False).set_index("Id")
    nb = pd.read_csv(demo / "results/transfer/neighbours.csv", keep_default_na=False).query("part == 'test'")
    replaced = nb.set_index("Id").replaced.astype(str) == "True"
    assert (sub.Predicted != ens.Predicted).sum() <= replaced.sum() == t["replaced_test"]
    assert (sub.Predicted[~replaced] == ens.Predicted[~replaced]).all()
    siblings = set(pd.read_csv(demo / "data/demo/siblings_truth.csv", dtype=str).Id)
    others = ~replaced.index.isin(list(siblings))
    assert replaced[others].sum() <= 0.01 * others.sum()
