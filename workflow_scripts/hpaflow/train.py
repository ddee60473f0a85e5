"""Training loop for one model x fold: resumable checkpoints, metrics CSV, progress, optional Visdom.

Files in `out_dir` (= results/models/{model}/fold{fold}/):
  checkpoints/last.pt  everything needed to resume (written atomically after every epoch)
  checkpoints/best.pt  weights of the best epoch by validation macro F1, with the Ids trained on; with
                       average_last k > 1, at the end the mean of the last k epochs' weights instead
                       (BatchNorm statistics recomputed, validated once more: the log has its figures)
  best.pt, metrics.csv the rule's outputs, (re)written from the above
The checkpoints are not rule outputs, so Snakemake's clean-up of a failed or requeued job
keeps them and the rerun resumes: only when the job is the same one (`job_fingerprint`), so a
change of folds, labels or shards retrains from scratch instead of resuming a stale model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader

from . import h5names as h5n
from . import versions
from .augment import prepare_batch
from .contracts import STAGES
from .data import ShardDataset, ShardRows, fold_of, make_sampler
from .files import atomic_path
from .losses import make_loss
from .metrics import bce_from_probs, macro_f1_at
from .models import build_model
from .predict import predict_probs
from .progress import Progress, format_seconds
from .runtime import autocast_dtype, pick_device, use_threads
from .schedules import (
    SCHEDULERS,  # noqa: F401 (models[].scheduler's registry, beside OPTIMIZERS)
    Schedule,
    accumulation_plan,
    batch_sizes,
    lr_at,
)
from .shards import content_fingerprint
from .thresholds import best_global
from .transforms import CHANNELS
from .visdom import VisdomPlot

log = logging.getLogger("hpaflow")


@dataclass
class TrainConfig:
    """One train job's settings; defaults live in the config schema only (from_config)."""

    name: str
    backbone: str
    fold: int
    image_size: int
    color_mode: str
    pretrained: bool
    pretrained_dir: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    optimizer: str
    scheduler: str
    loss: str | dict[str, float]
    sampler: str
    augment: bool
    seed: int
    device: str
    threads: int
    visdom: dict
    head: str
    head_hidden: int
    dropout: float
    crop_size: int | None
    normalize: str
    accumulate: int
    step_epochs: list[int] | None
    step_rates: list[float] | None
    restart_period: int
    warmup_epochs: int
    average_last: int
    focal_gamma: float
    class_weights: str | list[float] | None

    @classmethod
    def from_config(cls, config: dict, model: dict, fold: int, threads: int) -> TrainConfig:
        """`config`: the validated config (at least seed, device, pretrained_dir, visdom); `model`: its
        entry in `models` with image_size resolved (rules/common.smk: model_settings)."""
        return cls(
            fold=fold,
            threads=threads,
            seed=config["seed"],
            device=config["device"],
            pretrained_dir=config["pretrained_dir"],
            visdom=config["visdom"],
            **model,
        )

    def schedule(self) -> Schedule:
        return Schedule(
            self.lr,
            self.epochs,
            self.scheduler,
            self.step_epochs,
            self.step_rates,
            self.restart_period,
            self.warmup_epochs,
        )

    def settings(self) -> dict:
        """What the model depends on: everything but where and how fast it runs."""
        runs = {"threads", *STAGES["train"].steers}  # device, visdom, pretrained_dir (hpaflow.contracts)
        return {k: v for k, v in asdict(self).items() if k not in runs}


def _sha(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()[:16]


def _sorted_ids(rows: ShardRows) -> bytes:
    return "\0".join(np.sort(rows.ids)).encode()


def _labels_by_id(rows: ShardRows) -> bytes:
    """Every row's labels in Id order: the same bytes whichever fold each row is in."""
    return np.ascontiguousarray(rows.labels[np.argsort(rows.ids, kind="stable")]).tobytes()


def trained_on(fold: np.ndarray, k: int) -> np.ndarray:
    """Rows fold k's model trains on: the other folds' (fold -1: left out everywhere)."""
    return (fold != k) & (fold >= 0)


def job_fingerprint(cfg: TrainConfig, rows: ShardRows, fold: np.ndarray, shard_files: list[str]) -> dict[str, str]:
    """Everything a checkpoint must match to be resumed, part by part, so a mismatch can say what changed."""
    return {
        "model settings": _sha(json.dumps(cfg.settings(), sort_keys=True).encode()),
        "training Ids": _sha(_sorted_ids(rows.subset(trained_on(fold, cfg.fold)))),
        "validation Ids": _sha(_sorted_ids(rows.subset(fold == cfg.fold))),
        "labels": _sha(_labels_by_id(rows)),
        "image contents": content_fingerprint(shard_files)[:16],
    }


def resumable_state(last: Path, fingerprint: dict[str, str]) -> dict | None:
    """The state in `last` if it is this job's; else None, with one log line saying why."""
    if not last.exists():
        return None
    try:
        state = torch.load(last, map_location="cpu", weights_only=False)
        h5n.check_format(last, "checkpoint", state.get(h5n.FORMAT))
        old = state[h5n.CKPT_FINGERPRINT]
    except Exception as e:  # torch raises many types for a truncated or foreign file
        log.warning(
            "checkpoint %s cannot be read (%s: %s), e.g. the job was killed while writing it: starting from scratch",
            last,
            type(e).__name__,
            str(e).splitlines()[0] if str(e) else "",
        )
        return None
    changed = [part for part, value in fingerprint.items() if old.get(part) != value]
    if changed:
        log.warning("checkpoint %s is from another job (changed: %s): starting from scratch", last, ", ".join(changed))
        return None
    return state


# models[].optimizer -> its torch.optim class (built with lr and weight_decay); the schema's enum is these keys.
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": partial(torch.optim.SGD, momentum=0.9, nesterov=True),
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adamax": torch.optim.Adamax,
}


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.optimizer](params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """The epoch's rate on every parameter group (schedules.lr_at): no scheduler state to save or restore."""
    for group in opt.param_groups:
        group["lr"] = lr


def rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def loader(ds: ShardDataset, batch_size: int, workers: int, sampler=None, train: bool = False) -> DataLoader:
    n = len(sampler) if sampler is not None else len(ds)
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        # BatchNorm cannot train on a batch of one: such a last batch is left out (another image each epoch).
        drop_last=train and n > batch_size and n % batch_size == 1,
    )


def backward(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn,
    scaler: torch.amp.GradScaler,
    dtype: torch.dtype | None,
    weight: float = 1.0,
) -> float:
    """Add one batch's gradient, its loss scaled by `weight` (mixed precision when dtype is set); returns the
    batch loss (unweighted)."""
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        loss = loss_fn(model(x).float(), y)
    scaler.scale(loss * weight).backward()
    return float(loss.detach())


def optimizer_step(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Step on the gradient accumulated since the last step, then clear it."""
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)


def train_step(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    dtype: torch.dtype | None,
) -> float:
    """One optimisation step on one batch; returns the batch loss."""
    opt.zero_grad(set_to_none=True)
    loss = backward(model, x, y, loss_fn, scaler, dtype)
    optimizer_step(opt, scaler)
    return loss


@dataclass
class WeightAverage:
    """Running sum of the weights after each of the last average_last epochs (float64, on the CPU)."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    count: int = 0

    def add(self, model: torch.nn.Module) -> None:
        for name, v in model.state_dict().items():
            if v.is_floating_point():  # BatchNorm's batch counters are not weights (and are recomputed)
                v = v.detach().to("cpu", torch.float64)
                self.sums[name] = self.sums[name] + v if name in self.sums else v.clone()
        self.count += 1

    def load_into(self, model: torch.nn.Module) -> None:
        """Set the model's floating-point entries to their mean; the rest stay."""
        if self.count == 0:
            raise ValueError("no weights to average: none were added")
        state = model.state_dict()
        model.load_state_dict({**state, **{n: (s / self.count).to(state[n].dtype) for n, s in self.sums.items()}})

    def state(self) -> dict:
        return {"sums": self.sums, "count": self.count}


@dataclass
class Training:
    """What one job trains: the model and the state that moves with it from epoch to epoch."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None
    history: list[dict]
    best_f1: float = -1.0
    start_epoch: int = 0
    average: WeightAverage = field(default_factory=WeightAverage)

    def state(self, epoch: int, fingerprint: dict) -> dict:
        """last.pt: everything a resumed job needs to go on exactly as an uninterrupted one. The learning
        rate is a function of the epoch (and of the settings, in the fingerprint); gradient accumulation
        starts afresh each epoch."""
        return {
            h5n.FORMAT: h5n.CHECKPOINT_FORMAT,
            h5n.CKPT_MODEL: self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "epoch": epoch,
            "history": self.history,
            "best_f1": self.best_f1,
            "average": self.average.state(),
            h5n.CKPT_FINGERPRINT: fingerprint,
        }

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state[h5n.CKPT_MODEL])
        self.opt.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.start_epoch, self.history, self.best_f1 = state["epoch"] + 1, state["history"], state["best_f1"]
        self.average = WeightAverage(**state["average"])


def split_rows(
    cfg: TrainConfig, shard_files: list[str], folds_csv: str
) -> tuple[ShardRows, np.ndarray, ShardRows, ShardRows]:
    """All rows, their folds, and the job's training (other folds) and validation (cfg.fold) rows; rows
    of fold -1 (left out by duplicates.policy drop_external) are in neither."""
    rows = ShardRows.from_files(shard_files)
    fold = fold_of(rows, folds_csv)
    train_rows, val_rows = rows.subset(trained_on(fold, cfg.fold)), rows.subset(fold == cfg.fold)
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise ValueError(f"fold {cfg.fold}: {len(train_rows)} train and {len(val_rows)} validation samples")
    return rows, fold, train_rows, val_rows


def new_training(cfg: TrainConfig, device: torch.device) -> Training:
    torch.manual_seed(cfg.seed)
    model = build_model(
        cfg.backbone,
        CHANNELS[cfg.color_mode],
        cfg.pretrained,
        cfg.pretrained_dir,
        head=cfg.head,
        head_hidden=cfg.head_hidden,
        dropout=cfg.dropout,
    ).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model.parameters())
    dtype = autocast_dtype(device)
    return Training(model, opt, torch.amp.GradScaler("cuda", enabled=dtype == torch.float16), dtype, [])


def training_input(cfg: TrainConfig, rgby: torch.Tensor, params: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A training batch as the model takes it: augmented only with cfg.augment (the loader always draws
    parameters, for the crops' sake), normalised the model's way."""
    return prepare_batch(rgby, cfg.color_mode, device, params if cfg.augment else None, normalize=cfg.normalize)


def train_epoch(
    t: Training,
    cfg: TrainConfig,
    ds: ShardDataset,
    labels: np.ndarray,
    loss_fn,
    epoch: int,
    device: torch.device,
    workers: int,
) -> tuple[float, float]:
    """One pass over the training rows at the epoch's learning rate, one optimiser step per cfg.accumulate
    batches; returns the mean loss and images per second."""
    t.model.train()
    set_lr(t.opt, lr_at(cfg.schedule(), epoch))
    ds.set_epoch(epoch)
    sampler = make_sampler(cfg.sampler, labels, cfg.seed, epoch)
    dl = loader(ds, cfg.batch_size, workers, sampler, train=True)
    plan = accumulation_plan(batch_sizes(len(sampler), cfg.batch_size, dl.drop_last), cfg.accumulate)
    progress = Progress(len(ds), f"epoch {epoch + 1}/{cfg.epochs}", "img", log=log)
    t0, total_loss, seen = time.monotonic(), 0.0, 0
    t.opt.zero_grad(set_to_none=True)
    for (rgby, params, y), (weight, step) in zip(dl, plan, strict=True):
        x = training_input(cfg, rgby, params, device)
        y = y.to(device, non_blocking=True)
        loss = backward(t.model, x, y, loss_fn, t.scaler, t.dtype, weight)
        if step:
            optimizer_step(t.opt, t.scaler)
        total_loss += loss * len(x)
        seen += len(x)
        progress.suffix = f"loss {total_loss / seen:.4f}"
        progress.update(len(x))
    return total_loss / seen, seen / (time.monotonic() - t0)


def validate(
    model: torch.nn.Module, dl: DataLoader, y: np.ndarray, device: torch.device, color_mode: str, normalize: str
) -> dict:
    """Validation figures of one epoch: BCE, macro F1 at 0.5 and at the best global threshold."""
    probs = predict_probs(model, dl, device, color_mode, normalize=normalize)[0]
    thr, f1_best = best_global(y, probs)
    return {
        "val_bce": bce_from_probs(y, probs),
        "val_f1_at_0.5": macro_f1_at(y, probs, 0.5),
        "val_f1_best_global": f1_best,
        "best_global_threshold": thr,
    }


def recompute_batchnorm(
    model: torch.nn.Module, batches: Iterable[torch.Tensor], dtype: torch.dtype | None = None
) -> None:
    """BatchNorm running statistics from scratch over `batches` (model inputs), as torch's update_bn: forward
    passes in train mode without gradients, each batch's mean and variance weighing equally (momentum None)."""
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        update_bn(batches, model)


def averaged_epochs(cfg: TrainConfig) -> list[int]:
    """The epochs (1-based, as in metrics.csv) whose weights average_last averages."""
    return list(range(cfg.epochs - cfg.average_last + 1, cfg.epochs + 1))


def averaging(cfg: TrainConfig, epoch: int) -> bool:
    """Whether the weights after `epoch` (0-based) join the average (average_last > 1: the last k epochs)."""
    return cfg.average_last > 1 and epoch + 1 in averaged_epochs(cfg)


def average_weights(
    t: Training,
    cfg: TrainConfig,
    train_ds: ShardDataset,
    val_dl: DataLoader,
    val_y: np.ndarray,
    device: torch.device,
    workers: int,
) -> dict:
    """average_last > 1: the model becomes the mean of the weights after each of the last k epochs, its
    BatchNorm statistics recomputed over the training rows (each once, augmented as in training, drawn as
    one more epoch) and validated; returns the validation figures (logged, and kept in best.pt, not in
    metrics.csv, whose rows are the epochs)."""
    t.average.load_into(t.model)
    train_ds.set_epoch(cfg.epochs)
    dl = loader(train_ds, cfg.batch_size, workers, train=True)
    batches = (training_input(cfg, rgby, params, device) for rgby, params, _ in dl)
    recompute_batchnorm(t.model, batches, t.dtype)
    val = validate(t.model, val_dl, val_y, device, cfg.color_mode, cfg.normalize)
    epochs = averaged_epochs(cfg)
    log.info(
        "average of epochs %d-%d, BatchNorm statistics recomputed on %d training images: val BCE %.4f, "
        "val macro F1 %.4f at 0.5, %.4f at %.2f",
        epochs[0],
        epochs[-1],
        len(train_ds),
        val["val_bce"],
        val["val_f1_at_0.5"],
        val["val_f1_best_global"],
        val["best_global_threshold"],
    )
    return val


def best_checkpoint(t: Training, cfg: TrainConfig, row: dict, fingerprint: dict, trained_on: list[str]) -> dict:
    """best.pt: the model's weights, with what predict needs to rebuild it and to refuse leaks."""
    return {
        h5n.FORMAT: h5n.CHECKPOINT_FORMAT,
        h5n.CKPT_MODEL: t.model.state_dict(),
        "epoch": row["epoch"],
        "val_f1": row["val_f1_best_global"],
        "threshold": row["best_global_threshold"],
        h5n.CKPT_CONFIG: asdict(cfg),
        h5n.CKPT_FINGERPRINT: fingerprint,
        h5n.CKPT_TRAIN_IDS: trained_on,
        h5n.CKPT_SOFTWARE: versions.environment_versions(),  # what trained it, for the report
    }


def end_epoch(t: Training, cfg: TrainConfig, row: dict, out: Path, fingerprint: dict, trained_on: list[str]) -> bool:
    """Record an epoch: its row in metrics.csv, best.pt when validation improved, last.pt always."""
    ckpt_dir = out / "checkpoints"
    t.history.append(row)
    if averaging(cfg, row["epoch"] - 1):
        t.average.add(t.model)
    improved = row["val_f1_best_global"] > t.best_f1
    if improved:
        t.best_f1 = row["val_f1_best_global"]
        save(best_checkpoint(t, cfg, row, fingerprint, trained_on), ckpt_dir / "best.pt")
    save(t.state(row["epoch"] - 1, fingerprint), ckpt_dir / "last.pt")
    write_metrics(t.history, out / "metrics.csv")
    return improved


def log_epoch(cfg: TrainConfig, row: dict, improved: bool, eta: float) -> None:
    log.info(
        "epoch %d/%d: train loss %.4f, val BCE %.4f, val macro F1 %.4f at 0.5, %.4f at %.2f%s; %.1f img/s; ETA %s",
        row["epoch"],
        cfg.epochs,
        row["train_loss"],
        row["val_bce"],
        row["val_f1_at_0.5"],
        row["val_f1_best_global"],
        row["best_global_threshold"],
        " (best)" if improved else "",
        row["images_per_s"],
        format_seconds(eta),
    )


def train(cfg: TrainConfig, shard_files: list[str], folds_csv: str, out_dir: str | Path) -> dict:
    """Train on every fold but cfg.fold, validate on cfg.fold; resume from out_dir if possible."""
    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    workers = use_threads(cfg.threads)
    device = pick_device(cfg.device)

    rows, fold, train_rows, val_rows = split_rows(cfg, shard_files, folds_csv)
    log.info(
        "model %s fold %d: %d train, %d validation samples, %s on %s (%d loader workers)",
        cfg.name,
        cfg.fold,
        len(train_rows),
        len(val_rows),
        cfg.backbone,
        device,
        workers,
    )
    # train=True whatever cfg.augment: random crops are drawn either way (the drawn augmentation parameters are
    # only applied with augment, prepare_batch).
    train_ds = ShardDataset(train_rows, cfg.image_size, train=True, seed=cfg.seed, crop_size=cfg.crop_size)
    val_dl = loader(ShardDataset(val_rows, cfg.image_size), cfg.batch_size, workers)  # whole images
    t = new_training(cfg, device)
    loss_fn = make_loss(cfg.loss, cfg.focal_gamma, cfg.class_weights, train_rows.labels)  # class weights: this fold's
    fingerprint = job_fingerprint(cfg, rows, fold, shard_files)
    trained_on = sorted(set(train_rows.ids))  # recorded in best.pt: predict refuses to score these out-of-fold

    last = ckpt_dir / "last.pt"
    state = resumable_state(last, fingerprint)
    if state is not None:
        t.restore(state)
        log.info(
            "resuming from %s: epoch %d of %d done, going on with epoch %d",
            last,
            t.start_epoch,
            cfg.epochs,
            t.start_epoch + 1,
        )
    else:
        (ckpt_dir / "best.pt").unlink(missing_ok=True)  # another job's best epoch must not become ours
    plot = VisdomPlot(cfg.visdom, f"{cfg.name}_fold{cfg.fold}", log)

    run_start = time.monotonic()
    for epoch in range(t.start_epoch, cfg.epochs):
        train_loss, rate = train_epoch(t, cfg, train_ds, train_rows.labels, loss_fn, epoch, device, workers)
        val = validate(t.model, val_dl, val_rows.labels, device, cfg.color_mode, cfg.normalize)
        lr = t.opt.param_groups[0]["lr"]  # the rate this epoch ran at (set at its start)
        row = {"epoch": epoch + 1, "train_loss": train_loss, **val, "lr": lr, "images_per_s": rate}
        improved = end_epoch(t, cfg, row, out, fingerprint, trained_on)
        eta = (time.monotonic() - run_start) / (epoch + 1 - t.start_epoch) * (cfg.epochs - epoch - 1)
        log_epoch(cfg, row, improved, eta)
        plot.update(t.history)

    if cfg.average_last > 1:  # best.pt becomes the average, whichever epoch validated best
        val = average_weights(t, cfg, train_ds, val_dl, val_rows.labels, device, workers)
        t.best_f1 = val["val_f1_best_global"]
        best = best_checkpoint(t, cfg, {"epoch": cfg.epochs, **val}, fingerprint, trained_on)
        save({**best, "averaged_epochs": averaged_epochs(cfg)}, ckpt_dir / "best.pt")
    with atomic_path(out / "best.pt") as tmp:
        shutil.copyfile(ckpt_dir / "best.pt", tmp)
    write_metrics(t.history, out / "metrics.csv")
    kept = "best" if cfg.average_last == 1 else "averaged model's"
    log.info("done: %s validation macro F1 %.4f", kept, t.best_f1)
    return {"best_f1": t.best_f1, "history": t.history}


def write_metrics(history: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)
