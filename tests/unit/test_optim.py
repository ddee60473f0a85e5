"""Optimisation: learning-rate schedules and warm-up, gradient accumulation, weight averaging of the last
epochs with BatchNorm statistics recomputed, and an exact resume inside the averaging window."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch.optim.optimizer import register_optimizer_step_pre_hook

from conftest import REPO, KillAfterEpoch, Preempted, write_noise_pngs
from hpaflow import versions
from hpaflow.config import validate_config
from hpaflow.schedules import Schedule, accumulation_plan, batch_sizes, lr_at
from hpaflow.shards import ShardSpec, write_shard
from hpaflow.train import (
    TrainConfig,
    WeightAverage,
    backward,
    loader,
    optimizer_step,
    recompute_batchnorm,
    train,
    train_step,
)

SCHEMA = REPO / "config" / "schemas" / "config.schema.yaml"
DEMO = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def rates(s: Schedule) -> list[float]:
    return [lr_at(s, e) for e in range(s.epochs)]


# --- learning rate per epoch -----------------------------------------------------------------------------


def test_bestfittings_step_schedule_counts_absolute_epochs():
    s = Schedule(3e-4, 45, "step", [25, 30, 35, 40], [1.5e-4, 7.5e-5, 3e-5, 1e-5])
    assert rates(s) == [3e-4] * 25 + [1.5e-4] * 5 + [7.5e-5] * 5 + [3e-5] * 5 + [1e-5] * 5
    # warm-up runs first; the steps stay at their absolute epochs
    assert rates(Schedule(1.0, 6, "step", [3], [0.2], warmup_epochs=2)) == [1 / 3, 2 / 3, 1.0, 0.2, 0.2, 0.2]


def test_wairs_cosine_restarts_every_period():
    cycle = [1e-3 * 0.5 * (1 + math.cos(math.pi * t / 10)) for t in range(10)]
    got = rates(Schedule(1e-3, 24, "cosine_restarts", restart_period=10))
    assert got == pytest.approx(cycle + cycle + cycle[:4], rel=1e-12)
    assert got[0] == got[10] == got[20] == 1e-3 and got[5] == pytest.approx(5e-4)


def test_cosine_after_two_warmup_epochs():
    # 2 warm-up epochs at 1/3 and 2/3 of the rate, then a cosine over the 4 epochs left: cos(k pi / 4)
    half_root2 = math.sqrt(2) / 2
    expected = [1 / 3, 2 / 3, 1.0, (1 + half_root2) / 2, 0.5, (1 - half_root2) / 2]
    assert rates(Schedule(1.0, 6, "cosine", warmup_epochs=2)) == pytest.approx(expected, rel=1e-12)


def test_cosine_and_default_step_equal_torchs_schedulers():
    """Without warm-up, cosine and step are what CosineAnnealingLR(T_max=epochs) and StepLR(epochs // 3,
    0.1) gave before the schedules moved to lr_at."""
    for name, make in [
        ("cosine", lambda o, n: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=n)),
        ("step", lambda o, n: torch.optim.lr_scheduler.StepLR(o, step_size=max(1, n // 3), gamma=0.1)),
    ]:
        for n in [2, 7, 10]:
            opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
            sched, torch_rates = make(opt, n), []
            for _ in range(n):
                torch_rates.append(opt.param_groups[0]["lr"])
                opt.step()
                sched.step()
            assert rates(Schedule(0.3, n, name)) == pytest.approx(torch_rates, rel=1e-12), (name, n)


def test_default_step_thirds_and_constant():
    assert rates(Schedule(1.0, 9, "step")) == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01])
    assert rates(Schedule(1.0, 2, "step")) == pytest.approx([1, 0.1])  # fewer than 3 epochs: a step each
    # one warm-up epoch at half the rate, then thirds of the 9 epochs left
    assert rates(Schedule(1.0, 10, "step", warmup_epochs=1)) == pytest.approx([0.5] + [1] * 3 + [0.1] * 3 + [0.01] * 3)
    assert rates(Schedule(0.02, 4, "constant")) == [0.02] * 4
    assert rates(Schedule(1.0, 5, "constant", warmup_epochs=3)) == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_an_unknown_scheduler_or_epoch_is_named():
    with pytest.raises(ValueError, match=r"^scheduler: unknown 'linear' \(one of cosine, step, cosine_restarts"):
        lr_at(Schedule(1.0, 3, "linear"), 0)
    with pytest.raises(ValueError, match=r"^epoch 3 is outside the 3 epochs$"):
        lr_at(Schedule(1.0, 3, "constant"), 3)


# --- gradient accumulation ------------------------------------------------------------------------------


def test_accumulation_plan_weighs_batches_by_their_share_of_the_group():
    assert (
        batch_sizes(10, 4, False) == [4, 4, 2]
        and batch_sizes(9, 4, True) == [4, 4]
        and batch_sizes(8, 4, False) == [4, 4]
    )
    assert accumulation_plan([4, 4, 4, 4, 2], 1) == [(1.0, True)] * 5
    assert accumulation_plan([4, 4, 4, 4, 2], 2) == [(0.5, False), (0.5, True), (0.5, False), (0.5, True), (1.0, True)]
    # the last group (2 batches, 6 images) steps with its own count
    assert accumulation_plan([4, 4, 4, 4, 2], 3) == [
        (1 / 3, False),
        (1 / 3, False),
        (1 / 3, True),
        (4 / 6, False),
        (2 / 6, True),
    ]


def test_batch_sizes_are_the_training_loaders():
    for n, b in [(9, 4), (10, 4), (8, 4), (3, 4), (1, 1)]:
        ds = torch.utils.data.TensorDataset(torch.arange(n))
        dl = loader(ds, b, 0, train=True)
        assert [len(x) for (x,) in dl] == batch_sizes(n, b, dl.drop_last), (n, b)
    assert loader(torch.utils.data.TensorDataset(torch.arange(9)), 4, 0, train=True).drop_last  # a batch of one


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 28))


@pytest.mark.parametrize("sizes", [[4, 4, 4], [4, 4, 2]])
def test_accumulated_step_equals_one_step_on_the_whole_batch(sizes):
    """k batches of b (or a shorter last one), one step: the weights of one step on their concatenation."""
    rng = torch.Generator().manual_seed(1)
    x = torch.randn(sum(sizes), 5, generator=rng)
    y = (torch.rand(sum(sizes), 28, generator=rng) < 0.3).float()
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
    scaler = torch.amp.GradScaler("cuda", enabled=False)

    whole = mlp()
    train_step(whole, x, y, loss_fn, torch.optim.SGD(whole.parameters(), lr=0.5), scaler, None)

    acc = mlp()
    opt = torch.optim.SGD(acc.parameters(), lr=0.5)
    plan = accumulation_plan(sizes, len(sizes))
    assert [step for _, step in plan] == [False] * (len(sizes) - 1) + [True]
    for xb, yb, (weight, step) in zip(x.split(sizes), y.split(sizes), plan):
        backward(acc, xb, yb, loss_fn, scaler, None, weight)
        if step:
            optimizer_step(opt, scaler)
    assert all(p.grad is None for p in acc.parameters())  # cleared for the next group
    for a, w in zip(acc.parameters(), whole.parameters()):
        torch.testing.assert_close(a, w, atol=1e-6, rtol=0)
    assert not torch.allclose(next(acc.parameters()), next(mlp().parameters()))  # it did step


# --- weight averaging and BatchNorm statistics ---------------------------------------------------------


def test_weight_average_is_the_arithmetic_mean_of_the_added_weights():
    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    avg = WeightAverage()
    for w, b in [([1.0, 2.0], 0.5), ([3.0, -2.0], 1.5), ([5.0, 6.0], -0.5)]:
        with torch.no_grad():
            model[0].weight.copy_(torch.tensor([w]))
            model[0].bias.fill_(b)
        model[1].num_batches_tracked.fill_(avg.count + 7)
        avg.add(model)
    resumed = WeightAverage(**avg.state())  # as last.pt carries it
    resumed.load_into(model)
    assert resumed.count == 3
    assert model[0].weight.tolist() == [[3.0, 2.0]] and model[0].bias.item() == pytest.approx(0.5)
    assert model[0].weight.dtype == torch.float32 and model[1].num_batches_tracked.item() == 9  # not averaged
    with pytest.raises(ValueError, match="no weights to average"):
        WeightAverage().load_into(model)


def test_recomputed_batchnorm_statistics_are_the_training_batches():
    """update_bn semantics: each batch's mean and unbiased variance, averaged over the batches (momentum None),
    the old statistics forgotten; the model's mode and momentum are restored."""
    bn = torch.nn.BatchNorm1d(2, momentum=0.3)
    bn.running_mean.fill_(100.0)
    bn.running_var.fill_(100.0)
    bn.eval()
    batches = [
        torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0], [6.0, 1.0]]),  # means 3, 1; variances 20/3, 0
        torch.tensor([[1.0, 0.0], [1.0, 4.0], [1.0, 0.0], [1.0, 4.0]]),  # means 1, 2; variances 0, 16/3
    ]
    recompute_batchnorm(bn, iter(batches))
    assert bn.running_mean.tolist() == pytest.approx([2.0, 1.5])
    assert bn.running_var.tolist() == pytest.approx([10 / 3, 8 / 3])
    assert bn.momentum == 0.3 and not bn.training and bn.num_batches_tracked.item() == 2


# --- the real training loop on tiny shards -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory, one_torch_thread):
    """12 random 32 px fields in one shard: 8 training rows (fold 1), 4 validation rows (fold 0)."""
    d = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    ids = [f"f{i:02d}" for i in range(12)]
    write_noise_pngs(d, ids, rng)
    labels = (rng.random((12, 28)) < 0.2).astype(np.uint8)
    write_shard(d / "train.h5", ShardSpec("ds", "png", str(d), "train", 32), ids, labels)
    (d / "folds.csv").write_text("Id,dataset,fold\n" + "".join(f"{i},ds,{int(k >= 4)}\n" for k, i in enumerate(ids)))
    return [str(d / "train.h5")], str(d / "folds.csv")


def job_config(**model) -> TrainConfig:
    entry = {"name": "m", "backbone": "resnet18", "pretrained": False, "batch_size": 2, "lr": 0.01, **model}
    config = validate_config(
        {"data_root": "x", "datasets": DEMO["datasets"], "models": [entry], "device": "cpu"}, SCHEMA
    )
    return TrainConfig.from_config(config, {**config["models"][0], "image_size": 32}, fold=0, threads=1)


def test_each_epoch_runs_at_lr_at_with_one_step_per_accumulate_batches(tiny_job, tmp_path):
    cfg = job_config(epochs=3, scheduler="cosine", warmup_epochs=1, accumulate=3, optimizer="sgd")
    seen: list[float] = []
    hook = register_optimizer_step_pre_hook(lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"]))
    try:
        train(cfg, *tiny_job, tmp_path)
    finally:
        hook.remove()
    # 8 rows in 4 batches of 2: a group of 3 batches and a last group of 1 -> 2 steps an epoch
    # warm-up 0.01 x 1/2, then a cosine over 2 epochs: 0.01, 0.01 x (1 + cos(pi / 2)) / 2
    assert seen == pytest.approx([0.005, 0.005, 0.01, 0.01, 0.005, 0.005], rel=1e-12)
    assert pd.read_csv(tmp_path / "metrics.csv")["lr"].tolist() == pytest.approx([0.005, 0.01, 0.005], rel=1e-12)


def test_averaging_the_last_epochs_resumes_exactly_and_is_the_mean(tiny_job, tmp_path, caplog):
    """average_last 2 of 3 epochs: best.pt holds the mean of the weights after epochs 2 and 3 (those of
    runs stopping there, at a constant rate), BatchNorm recomputed; a job killed after epoch 2 (inside the
    window) and rerun ends with the same weights as an uninterrupted one."""
    settings = dict(scheduler="constant", optimizer="sgd", head="concat_pool")
    averaged = job_config(epochs=3, average_last=2, **settings)
    caplog.set_level(logging.INFO, logger="hpaflow")
    straight = train(averaged, *tiny_job, tmp_path / "straight")
    assert "average of epochs 2-3, BatchNorm statistics recomputed on 8 training images" in caplog.text
    best = torch.load(tmp_path / "straight" / "best.pt", weights_only=False)
    assert best["averaged_epochs"] == [2, 3] and best["val_f1"] == straight["best_f1"]
    assert best["software_versions"] == versions.environment_versions()  # what trained it, for the report
    assert len(pd.read_csv(tmp_path / "straight" / "metrics.csv")) == 3  # one row per epoch

    killer = KillAfterEpoch(2, "epoch %d/%d: train loss")
    logging.getLogger("hpaflow").addHandler(killer)
    try:
        with pytest.raises(Preempted):
            train(averaged, *tiny_job, tmp_path / "killed")
    finally:
        logging.getLogger("hpaflow").removeHandler(killer)
    last = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=False)
    assert last["epoch"] == 1 and last["average"]["count"] == 1  # killed inside the window
    caplog.clear()
    train(averaged, *tiny_job, tmp_path / "killed")
    assert "resuming from" in caplog.text and "epoch 2 of 3 done" in caplog.text
    resumed = torch.load(tmp_path / "killed" / "best.pt", weights_only=False)["model"]
    for name, w in best["model"].items():
        torch.testing.assert_close(resumed[name], w, atol=1e-6, rtol=0, msg=name)

    # The weights after epochs 2 and 3: the last.pt of runs of 2 and of 3 epochs (nothing averaged).
    after = {}
    for epochs in [2, 3]:
        train(job_config(epochs=epochs, **settings), *tiny_job, tmp_path / f"plain{epochs}")
        after[epochs] = torch.load(tmp_path / f"plain{epochs}" / "checkpoints" / "last.pt", weights_only=False)
    assert after[3]["model"].keys() == best["model"].keys()
    for name, w in best["model"].items():
        if "running" in name:  # BatchNorm statistics: recomputed, not averaged
            assert not torch.allclose(w, (after[2]["model"][name] + after[3]["model"][name]) / 2), name
        elif w.is_floating_point():
            torch.testing.assert_close(w, (after[2]["model"][name] + after[3]["model"][name]) / 2, msg=name)
    moved = [n for n, w in after[3]["model"].items() if w.is_floating_point() and not w.equal(after[2]["model"][n])]
    assert len(moved) > len(after[3]["model"]) / 2  # epoch 3 changed the weights: the mean is no copy of either


@pytest.mark.parametrize("augment", [True, False])
def test_crop_models_train_on_crops_and_validate_on_whole_images(tiny_job, tmp_path, augment):
    """crop_size crops the training batches whether or not they are augmented; validation sees whole images."""
    cfg = job_config(epochs=1, crop_size=16, augment=augment)
    seen: list[tuple[bool, tuple[int, ...]]] = []

    def record(module, args):
        if type(module).__name__ == "Classifier":  # the whole model, not its parts
            seen.append((module.training, tuple(args[0].shape[1:])))

    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        train(cfg, *tiny_job, tmp_path)
    finally:
        hook.remove()
    assert {shape for training, shape in seen if training} == {(3, 16, 16)}
    assert {shape for training, shape in seen if not training} == {(3, 32, 32)}
