"""Shared fixtures: the repo, a copy of the workflow to run in a temp dir (hpaflow is installed in .venv)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
SHARED = REPO.parent / "shared" / "data"

CONFIGS = Path(__file__).resolve().parent / "configs"


def write_noise_pngs(folder: Path, ids: list[str], rng, side: int = 32) -> None:
    """Kaggle-style PNG fields of uniform noise: each Id's 4 channel files in folder."""
    import cv2
    import numpy as np

    for i in ids:
        for c in ["red", "green", "blue", "yellow"]:
            cv2.imwrite(str(Path(folder) / f"{i}_{c}.png"), rng.integers(0, 256, (side, side), dtype=np.uint8))


def workflow_config(name: str = "tiny") -> dict:
    """A workflow test config (tests/configs/{name}.yaml): an overlay whose top-level keys replace those of
    tiny.yaml, itself an overlay over the shipped demo config (config/config.yaml)."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for overlay in ["tiny"] + ([name] if name != "tiny" else []):
        config.update(yaml.safe_load((CONFIGS / f"{overlay}.yaml").read_text()))
    return json.loads(json.dumps(config))  # plain values, no shared objects (no YAML aliases when written)


# The shipped demo config, shrunk: same datasets, tiny images and shards (tests/configs/tiny.yaml).
TINY = workflow_config()


needs_shared = pytest.mark.skipif(
    not (SHARED / "hpa" / "train.csv").exists(), reason=f"real competition csvs not found at {SHARED}"
)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny convolutions: one thread is fastest, and keeps a busy machine's cores free (restored after)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def run_snakemake(
    workdir: Path, *args: str, check: bool = True, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    proc = subprocess.run(
        cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def kill_snakemake_when(workdir: Path, args: list[str], ready: Callable[[], bool], timeout: float = 300) -> None:
    """Start Snakemake, and SIGKILL it with all its jobs (as a node failure or `kill -9` would) once
    `ready()` holds. Fails if the run ends first."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(
                    f"snakemake ended ({proc.returncode}) before it could be killed:\n{proc.stderr.read()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing to kill on after {timeout} s")
            time.sleep(0.01)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the whole group may have ended already
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()


def plan(proc: subprocess.CompletedProcess) -> dict[str, str]:
    """The job counts of a `snakemake -n` run: rule -> count, and total."""
    return dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, re.M))


def fake_weights(folder: Path) -> Path:
    """Empty files under every backbone's weight file name: enough for planning, which makes a pretrained
    model's weight file an input of its train job (a real load needs real weights: tests/unit/test_models.py)."""
    from hpaflow.weights import WEIGHTS

    folder.mkdir(parents=True, exist_ok=True)
    for spec in WEIGHTS.values():
        (folder / spec.files[0]).touch()
    return folder


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def workflow_dir(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path / "wf")


class Preempted(BaseException):
    """A job killed from outside once an epoch is recorded (as a preempted node)."""


class KillAfterEpoch(logging.Handler):
    """Raises Preempted when the epoch line (a log record starting with `line`, epoch first) of `epoch` is logged."""

    def __init__(self, epoch: int, line: str) -> None:
        super().__init__()
        self.epoch, self.line = epoch, line

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith(self.line) and record.args[0] == self.epoch:
            raise Preempted
