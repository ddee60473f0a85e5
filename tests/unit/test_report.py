"""The report's front-page table, rendered as Snakemake renders the front page (docutils)."""

from __future__ import annotations

import re

from docutils.core import publish_parts

from hpaflow.plots import headline_table


def block(at05: float, methods: dict[str, tuple[float, float]]) -> dict:
    return {
        "f1_at_0.5": at05,
        "thresholds": {m: {"f1_cross_fitted": c, "f1_in_sample": i} for m, (c, i) in methods.items()},
    }


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
