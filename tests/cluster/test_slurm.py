"""The workflow on a real one-node SLURM cluster with 2 GPUs as GRES (tests/slurm/cluster.sh), through
profiles/slurm with the test layer (tests/slurm/profile) merged over it.

One run covers: every non-local job goes through sbatch; train and predict ask for and get one GPU
(gpu:1 in their allocation, CUDA_VISIBLE_DEVICES in their environment), in partition gpu, at
most 2 at once; the other jobs get none; the submission is right; and a train job requeued
mid-training by `scontrol requeue` resumes from its checkpoint.
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
import yaml

from conftest import REPO, copy_workflow, workflow_config, write_config
from hpaflow.submission import check_submission

CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
GPU_RULES = ("rule_train", "rule_predict")


def merged(base: dict, layer: dict) -> dict:
    """`layer` over `base`: mappings merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in layer.items():
        out[key] = merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def test_profile(tmp_path) -> list[str]:
    production = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    profile = merged(production, yaml.safe_load((REPO / "tests/slurm/profile/config.yaml").read_text()))
    for rule in ("train", "predict"):  # the production GPU lines reach sbatch unchanged
        assert profile["set-resources"][rule]["slurm_partition"] == production["set-resources"][rule]["slurm_partition"]
    # Job sizes live in the workflow config only (resources.<rule>); profiles place jobs.
    sizes = {"threads", "cpus_per_task", "mem_mb", "mem_mb_per_cpu", "runtime", "gpu"}
    assert "set-threads" not in profile
    for values in [profile["default-resources"], *profile["set-resources"].values()]:
        assert not sizes & set(values), values
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile/config.yaml").write_text(yaml.safe_dump(profile))
    return ["--profile", str(tmp_path / "profile")]


test_profile.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def cluster():
    # In CI (CI=true, as root) a cluster that cannot start is a failure, not a skip.
    problem = pytest.fail if os.environ.get("CI") == "true" and os.geteuid() == 0 else pytest.skip
    if os.geteuid() != 0:
        problem("the SLURM test cluster needs root (it installs slurm-wlm/munge and starts daemons)")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        problem("no apt-get to install slurm-wlm and no slurmctld on this machine")
    proc = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        problem(f"the SLURM test cluster could not be started: {proc.stderr.strip()[-500:]}")
    return True


def job_fields(job_id: str) -> dict[str, str]:
    """`scontrol show job -d -o` as key -> value (the job stays known for MinJobAge=600 s)."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-d", "-o", job_id], capture_output=True, text=True, check=True
    ).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def squeue_all() -> dict[str, tuple[str, str, str]]:
    """job id -> (partition, state, comment) of every job slurmctld still knows (MinJobAge=600)."""
    out = subprocess.run(
        ["squeue", "--states=all", "-h", "-o", "%i|%P|%T|%k"], capture_output=True, text=True, check=True
    ).stdout
    return {i: (p, s, k) for i, p, s, k in (line.split("|", 3) for line in out.splitlines() if line)}


def test_dry_run_with_the_users_profile(workflow_dir):
    subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "demo_data", "--profile", str(REPO / "profiles/slurm")],
        cwd=workflow_dir,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )


SLURM_CONFIG = workflow_config("slurm")  # job sizes for the 2-CPU test node (tests/configs/slurm.yaml)


def test_workflow_on_slurm_with_a_requeued_train_job(cluster, tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    write_config(wf / "config" / "config.yaml", SLURM_CONFIG)
    before = set(squeue_all())
    profile = test_profile(tmp_path)
    subprocess.run(
        ["timeout", "-k", "20", "300", sys.executable, "-m", "snakemake", "demo_data", *profile],
        cwd=wf,
        check=True,
        capture_output=True,
        timeout=330,
    )
    log = open(tmp_path / "snakemake.log", "w")
    # Snakemake ignores SIGTERM while it waits on jobs: timeout -k follows with SIGKILL.
    run = subprocess.Popen(
        ["timeout", "-k", "20", "1200", sys.executable, "-m", "snakemake", *profile],
        cwd=wf,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    requeued = None
    most_gpu_jobs = 0
    ckpt = wf / "results/models/m/fold0/checkpoints/last.pt"
    deadline = time.monotonic() + 900
    while run.poll() is None and time.monotonic() < deadline:
        running_gpu = [
            i
            for i, (_, state, comment) in squeue_all().items()
            if i not in before and state == "RUNNING" and comment.startswith(GPU_RULES)
        ]
        most_gpu_jobs = max(most_gpu_jobs, len(running_gpu))
        if requeued is None and ckpt.exists():
            running = [
                i
                for i, (_, state, comment) in squeue_all().items()
                if i not in before and state == "RUNNING" and comment == "rule_train_wildcards_m_0"
            ]
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
    # Every non-local job was an sbatch job: demo_data, shard x6, duplicates, folds, train x2, predict x2,
    # model_summary, ensemble, submission, plots; `all` and `preprocess` run in the Snakemake process.
    rules = [re.match(r"rule_(.+?)(?:_wildcards_.*)?$", c).group(1) for _, _, c in jobs.values()]
    assert sorted(rules) == sorted(
        ["demo_data", "duplicates", "folds", "model_summary", "ensemble", "submission", "plots"]
        + ["shard"] * 6
        + ["train"] * 2
        + ["predict"] * 2
    ), rules
    assert logged_ids <= set(jobs) and len(logged_ids) == len(jobs)
    for i, (partition, state, comment) in jobs.items():
        assert state == "COMPLETED", (i, state, comment)
        gpu_job = comment.startswith(GPU_RULES)
        assert partition == ("gpu" if gpu_job else "cpu"), (i, partition, comment)
        fields = job_fields(i)
        # Without an accounting database SLURM 22.05 lists GPUs in JOB_GRES and TresPerJob, not in TRES.
        assert (fields["JOB_GRES"] == "gpu:1") == gpu_job, (i, comment, fields["JOB_GRES"])
        assert (fields.get("TresPerJob") == "gres:gpu:1") == gpu_job, (i, comment, fields.get("TresPerJob"))
    assert 1 <= most_gpu_jobs <= 2, most_gpu_jobs

    # Each GPU job's environment had CUDA_VISIBLE_DEVICES (no driver here, so it says so and uses the CPU).
    for log_file in [*(wf / "logs/train/m").glob("fold*.log"), *(wf / "logs/predict/m").glob("fold*.log")]:
        assert re.search(r"given GPU\(s\) \(CUDA_VISIBLE_DEVICES=\d\) but torch", log_file.read_text()), log_file

    train_log = (wf / "logs/train/m/fold0.log").read_text()
    assert "resuming from" in train_log, train_log[-2000:]
    metrics = pd.read_csv(wf / "results/models/m/fold0/metrics.csv")
    assert metrics["epoch"].tolist() == list(range(1, 13))

    sample = pd.read_csv(wf / "data/demo/sample_submission.csv")["Id"].tolist()
    check_submission(pd.read_csv(wf / "results/submission.csv", keep_default_na=False), sample)
