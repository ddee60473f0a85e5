"""The launcher env (envs/snakemake.yaml: snakemake + the SLURM plugin, nothing the rules need) plans
the workflow: the Snakefile and rules/*.smk import no image stack, no torch at parse time."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, SHARED, TINY, copy_workflow, fake_weights, needs_shared, plan, run_snakemake, write_config

VENV = REPO / ".venv-launcher"


def launcher_pins() -> list[str]:
    deps = yaml.safe_load((REPO / "envs/snakemake.yaml").read_text())["dependencies"]
    return [d for dep in deps if isinstance(dep, dict) for d in dep["pip"]]


@pytest.fixture(scope="module")
def launcher() -> str:
    """A fresh venv with exactly the launcher env's pip packages (and what pip brings with them);
    kept in .venv-launcher/ while the pins are the same."""
    pins = launcher_pins()
    stamp = VENV / "pins.txt"
    if not stamp.exists() or stamp.read_text().split() != pins:
        shutil.rmtree(VENV, ignore_errors=True)
        subprocess.run([sys._base_executable, "-m", "venv", str(VENV)], check=True, timeout=120)
        subprocess.run(
            [str(VENV / "bin/python"), "-m", "pip", "install", "-q", *pins],
            check=True,
            timeout=900,
            capture_output=True,
        )
        stamp.write_text("\n".join(pins))
    python = str(VENV / "bin/python")
    for module in ["h5py", "cv2", "tifffile", "torch", "hpaflow"]:  # truly the launcher alone
        probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True)
        assert probe.returncode != 0, f"{module} is importable in the launcher venv"
    return python


def launch(python: str, workdir, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [python, "-m", "snakemake", "--cores", "2", *args], cwd=workdir, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_launcher_plans_the_demo_and_the_slurm_profile(launcher, tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    write_config(wf / "config/config.yaml", TINY)
    launch(launcher, wf, "-n", "demo_data")
    run_snakemake(wf, "demo_data")  # the demo's csvs, which planning reads
    counts = plan(launch(launcher, wf, "-n"))
    assert counts["shard"] == "6" and counts["train"] == "2" and counts["submission"] == "1", counts
    profiled = plan(launch(launcher, wf, "-n", "--profile", str(REPO / "profiles/slurm")))
    assert profiled["train"] == "2" and profiled["predict"] == "2", profiled


@needs_shared
def test_launcher_plans_the_full_scale_config(launcher, tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    for name in ["train.csv", "sample_submission.csv", "HPAv18RBGY_wodpl.csv"]:
        shutil.copy(SHARED / "hpa" / name, tmp_path / name)
    weights = fake_weights(tmp_path / "pretrained")
    config = ["--config", f"data_root={tmp_path}", f"pretrained_dir={weights}"]
    counts = plan(launch(launcher, wf, "-n", "--configfile", "config/hpa_kaggle.yaml", *config))
    assert counts["shard"] == "116" and counts["train"] == "15" and counts["embed"] == "1", counts
    assert counts["total"] == "164", counts
