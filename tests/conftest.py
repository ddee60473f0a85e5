"""Shared fixtures: the package on sys.path, the repo, a copy of the workflow to run in a temp dir."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "workflow_scripts"))

# The shipped demo config, shrunk: same datasets, tiny images and shards.
TINY = {
    **yaml.safe_load((REPO / "config" / "config.yaml").read_text()),
    "image_size": 32,
    "shard_size": 10,
    "n_folds": 2,
    "models": [],
    "demo": {"dir": "data/demo", "seed": 3, "n_train": 24, "n_test": 8, "n_tiff": 6, "n_jpg": 6,
             "size": 64, "tiff_size": 96, "jpg_size": 80},
}


needs_shared = pytest.mark.skipif(not (SHARED / "hpa" / "train.csv").exists(),
                                  reason=f"real competition csvs not found at {SHARED}")


def copy_workflow(dest: Path) -> Path:
    """The workflow's own files (no results, no data) copied into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ["Snakefile", "rules", "workflow_scripts", "config", "envs"]:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / name)
    return dest


def run_snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 600,
                  env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def workflow_dir(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path / "wf")
