"""The benchmark scripts keep running (at their smallest size; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_train_step_benchmark_runs(tmp_path):
    out = tmp_path / "train_step.json"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "train_step.py"),
            "--size",
            "32",
            "--batch",
            "4",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--workers",
            "0",
            "--backbones",
            "resnet18",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    rows = json.loads(out.read_text())
    assert [r["backbone"] for r in rows] == ["resnet18"]
    assert rows[0]["in_memory_img_s"] > 0 and rows[0]["loader_img_s"] > 0


def test_benchmark_suite_runs_at_its_smallest_size(tmp_path):
    out = tmp_path / "benchmarks.json"
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--images", "2", "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=900,
    )
    res = json.loads(out.read_text())
    for key in [
        "preprocess_png_ratio",
        "loader_speedup_vs_png",
        "thresholds_100k_seconds",
        "dryrun_fullscale_seconds",
        "dryrun_demo_seconds",
        "classify_onnx_vs_torch_cpu",
        "duplicates_117k_seconds",
    ]:
        assert isinstance(res[key], (int, float)) and res[key] > 0, key
    assert res["duplicates"]["exact_on_subset"] is True
