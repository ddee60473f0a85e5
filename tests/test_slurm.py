"""The workflow on a real one-node SLURM cluster (tests/slurm/cluster.sh), through profiles/slurm.

One run covers the issue's checks: every non-local job goes through sbatch, train and predict run
in partition gpu, the submission is right, and a train job requeued mid-training by
`scontrol requeue` resumes from its checkpoint.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import REPO, TINY, copy_workflow, write_config
from hpaflow.submission import check_submission

CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
PROFILES = ["--profile", str(REPO / "profiles/slurm"), "--workflow-profile", str(REPO / "tests/slurm/profile")]


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster needs root (it installs slurm-wlm/munge and starts daemons)")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("no apt-get to install slurm-wlm and no slurmctld on this machine")
    proc = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.skip(f"the SLURM test cluster could not be started: {proc.stderr.strip()[-500:]}")
    return True


def squeue_all() -> dict[str, tuple[str, str, str]]:
    """job id -> (partition, state, comment) of every job slurmctld still knows (MinJobAge=600)."""
    out = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i|%P|%T|%k"], capture_output=True, text=True,
                         check=True).stdout
    return {i: (p, s, k) for i, p, s, k in (line.split("|", 3) for line in out.splitlines() if line)}


def test_dry_run_with_the_users_profile(workflow_dir):
    subprocess.run([sys.executable, "-m", "snakemake", "-n", "demo_data", "--profile", str(REPO / "profiles/slurm")],
                   cwd=workflow_dir, check=True, capture_output=True, text=True, timeout=120)


SLURM_CONFIG = {**TINY, "resources": {}, "models": [
    {"name": "m", "backbone": "resnet18", "color_mode": "gyb", "pretrained": False, "epochs": 12, "batch_size": 8}]}


def test_workflow_on_slurm_with_a_requeued_train_job(cluster, tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    write_config(wf / "config" / "config.yaml", SLURM_CONFIG)
    before = set(squeue_all())
    subprocess.run(["timeout", "-k", "20", "300", sys.executable, "-m", "snakemake", "demo_data", *PROFILES],
                   cwd=wf, check=True, capture_output=True, timeout=330)
    log = open(tmp_path / "snakemake.log", "w")
    # Snakemake ignores SIGTERM while it waits on jobs: timeout -k follows with SIGKILL.
    run = subprocess.Popen(["timeout", "-k", "20", "1200", sys.executable, "-m", "snakemake", *PROFILES],
                           cwd=wf, stdout=log, stderr=subprocess.STDOUT)
    requeued = None
    ckpt = wf / "results/models/m/fold0/checkpoints/last.pt"
    deadline = time.monotonic() + 900
    while run.poll() is None and time.monotonic() < deadline:
        if requeued is None and ckpt.exists():
            running = [i for i, (_, state, comment) in squeue_all().items()
                       if i not in before and state == "RUNNING" and comment == "rule_train_wildcards_m_0"]
            if running:
                requeued = running[0]
                subprocess.run(["scontrol", "requeue", requeued], check=True)
                # A requeued job waits ~2 minutes (BeginTime); let it start at once.
                time.sleep(1)
                subprocess.run(["scontrol", "update", f"JobId={requeued}", "StartTime=now"], check=False)
        time.sleep(0.5)
    if run.poll() is None:
        run.kill()
    log.close()
    output = (tmp_path / "snakemake.log").read_text()
    assert run.returncode == 0, output[-3000:]
    assert requeued is not None, "no running train job was caught to requeue"

    jobs = {i: v for i, v in squeue_all().items() if i not in before}
    slurm_logs = list((wf / ".snakemake" / "slurm_logs").rglob("*.log"))
    logged_ids = {p.stem for p in slurm_logs}
    # Every non-local job was an sbatch job: demo_data, shard x6, folds, train x2, predict x2, model_summary,
    # ensemble, submission, plots; `all` and `preprocess` run in the Snakemake process.
    rules = [re.match(r"rule_(.+?)(?:_wildcards_.*)?$", c).group(1) for _, _, c in jobs.values()]
    assert sorted(rules) == sorted(["demo_data", "folds", "model_summary", "ensemble", "submission", "plots"]
                                   + ["shard"] * 6 + ["train"] * 2 + ["predict"] * 2), rules
    assert logged_ids <= set(jobs) and len(logged_ids) == len(jobs)
    for i, (partition, state, comment) in jobs.items():
        assert state == "COMPLETED", (i, state, comment)
        expected = "gpu" if comment.startswith(("rule_train", "rule_predict")) else "cpu"
        assert partition == expected, (i, partition, comment)

    train_log = (wf / "logs/train/m/fold0.log").read_text()
    assert "resuming from" in train_log, train_log[-2000:]
    metrics = pd.read_csv(wf / "results/models/m/fold0/metrics.csv")
    assert metrics["epoch"].tolist() == list(range(1, 13))

    sample = pd.read_csv(wf / "data/demo/sample_submission.csv")["Id"].tolist()
    check_submission(pd.read_csv(wf / "results/submission.csv", keep_default_na=False), sample)
