"""benchmarks/gpu_check.py: one line and exit 0 without CUDA; its checks run end to end on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [proc.stdout.strip()] and "no CUDA GPU" in proc.stdout
    assert not out.exists()


def test_checks_run_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["train"]["epochs"] == 1 and r["train"]["images"] == 12 and 0 <= r["train"]["best_val_f1"] <= 1
    # Same device and precision on both sides here: the comparison must find them identical.
    assert r["cpu_vs_device"] == {"max_abs_prob_diff": 0.0, "label_agreement": 1.0, "rows_identical": 1.0}
    assert [s["backbone"] for s in r["train_step"]] == ["resnet18"] and r["train_step"][0]["loader_img_s"] > 0
    assert r["predict_tta"][0]["views"] == 2 and r["predict_tta"][0]["images_per_s"] > 0
    assert "(b) CPU fp32 vs cpu: max |p diff| 0.00e+00" in proc.stdout
