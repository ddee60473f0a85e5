"""The report's front-page table, rendered as Snakemake renders the front page (docutils)."""

from __future__ import annotations

import re

import h5py
import numpy as np
from docutils.core import publish_parts

from conftest import write_noise_pngs
from hpaflow import versions
from hpaflow.plots import headline_table, software_versions_table
from hpaflow.shards import ShardSpec, write_shard


def block(at05: float, methods: dict[str, tuple[float, float]]) -> dict:
    return {
        "f1_at_0.5": at05,
        "thresholds": {m: {"f1_cross_fitted": c, "f1_in_sample": i} for m, (c, i) in methods.items()},
    }


def cells_of(html: str) -> list[list[str]]:
    rows = [
        re.findall(r"<(?:td|th)[^>]*>(.*?)</(?:td|th)>", r, re.S)
        for r in re.findall(r"<tr[^>]*>(.*?)</tr>", html, re.S)
    ]
    return [[re.sub(r"<[^>]+>|&nbsp;", "", c).strip() for c in r] for r in rows]


def test_software_versions_table_has_the_shards_the_stages_of_metrics_json_and_the_plots_job(tmp_path):
    """Stages: shards (the stamps of the shard files; one from before the stamps adds nothing), those of
    metrics.json (train and predict on two nodes, another torch on one), plots (this job)."""
    write_noise_pngs(tmp_path, ["a"], np.random.default_rng(0))
    spec = ShardSpec(dataset="d", fmt="png", images_dir=str(tmp_path), role="test", image_size=16)
    write_shard(tmp_path / "0.h5", spec, ["a"], None)
    with h5py.File(tmp_path / "old.h5", "w") as h5:
        h5.attrs["format_version"] = 2
    here = versions.environment_versions()
    node = {**here, "packages": {**here["packages"], "torch": "2.13.0"}}
    metrics = {"software_versions": versions.merge({"train and predict": [here, node], "ensemble": [here]})}
    html = publish_parts(
        software_versions_table(metrics, [str(tmp_path / "0.h5"), str(tmp_path / "old.h5")]), writer="html"
    )["html_body"]
    table = {row[0]: row[1:] for row in cells_of(html)}
    torch_version = here["packages"]["torch"]
    assert table["package"] == ["shards", "train and predict", "ensemble", "plots"]
    assert table["torch"] == [torch_version, f"{torch_version} / 2.13.0", torch_version, torch_version]
    assert table["python"] == [here["python"]] * 4
    # metrics.json from before the stamps: the shards and this job alone.
    html = publish_parts(software_versions_table({}, [str(tmp_path / "0.h5")]), writer="html")["html_body"]
    assert cells_of(html)[0] == ["package", "shards", "plots"]


def test_headline_table_rows_and_columns():
    metrics = {
        "models": {
            "r18": block(0.25, {"global": (0.31, 0.33), "per_class": (0.41, 0.47)}),
            "r50": block(0.2, {"global": (0.3, 0.32), "per_class": (0.4, 0.5)}),
        },
        "ensemble": block(0.26, {"global": (0.35, 0.36), "per_class": (0.45, 0.52)}),
        "prior_baseline": {"f1": 0.0712},
    }
    html = publish_parts(headline_table(metrics), writer="html")["html_body"]
    rows = [
        re.findall(r"<(?:td|th)[^>]*>(.*?)</(?:td|th)>", r, re.S)
        for r in re.findall(r"<tr[^>]*>(.*?)</tr>", html, re.S)
    ]
    cells = [[re.sub(r"<[^>]+>|&nbsp;", "", c).strip() for c in r] for r in rows]
    assert cells == [
        ["", "F1 at 0.5", "global cross-fitted", "global in-sample", "per_class cross-fitted", "per_class in-sample"],
        ["r18", "0.2500", "0.3100", "0.3300", "0.4100", "0.4700"],
        ["r50", "0.2000", "0.3000", "0.3200", "0.4000", "0.5000"],
        ["ensemble", "0.2600", "0.3500", "0.3600", "0.4500", "0.5200"],
        ["prior-only baseline", "0.0712", "", "", "", ""],
    ]
