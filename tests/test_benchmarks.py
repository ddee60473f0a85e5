"""The benchmark scripts keep running (at their smallest size; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_train_step_benchmark_runs(tmp_path):
    out = tmp_path / "train_step.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_step.py"), "--size", "32", "--batch", "4",
                    "--steps", "1", "--warmup", "1", "--workers", "0", "--backbones", "resnet18",
                    "--out", str(out)], check=True, capture_output=True, timeout=300)
    rows = json.loads(out.read_text())
    assert [r["backbone"] for r in rows] == ["resnet18"]
    assert rows[0]["in_memory_img_s"] > 0 and rows[0]["loader_img_s"] > 0
