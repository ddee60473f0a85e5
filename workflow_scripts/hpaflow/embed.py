"""Antibody embedding (rule embed): a network trained to tell antibodies apart, then every field embedded.

The 1st place of the HPA 2018 challenge matched test fields to HPAv18 fields of the same antibody by an
embedding trained with ArcFace. Here the classes are the train fields' antibody and near-duplicate groups
(hpaflow.duplicates.train_groups): a group holding at least one antibody field (a dataset with id_format
hpav18) and at least two fields is a class; `holdout` of the classes (drawn from seed) are not trained on,
and the top-1 retrieval accuracy on their fields, each against the others, picks the best epoch. Test
fields are never trained on: only train datasets' shards feed the training rows.

Resumable like train: <dir of the output>/checkpoints/last.pt (not an output) is written atomically after
every epoch with the job's fingerprint; a rerun of the same job goes on from it, another starts over.
Output: results/transfer/embeddings.h5 (layout in hpaflow.h5names), one row per field of every dataset.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from . import h5names as h5n
from . import versions
from .augment import prepare_batch
from .contracts import STAGES, digest
from .data import ShardDataset, ShardRows, make_sampler
from .duplicates import antibodies, train_groups
from .files import atomic_path
from .models import build_model
from .predict import aggregate_tiles
from .progress import Progress, format_seconds
from .runtime import autocast_dtype, pick_device, use_threads
from .schedules import Schedule, lr_at
from .shards import content_fingerprint
from .train import loader, optimizer_step, resumable_state, rng_state, save, set_lr, set_rng_state
from .transfer import nearest
from .transforms import CHANNELS

log = logging.getLogger("hpaflow")

COLOR_MODE, NORMALIZE = "rgby", "imagenet"  # the embedding network sees all four planes


# --- settings -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbedDataset:
    """What embed reads of a datasets[] entry."""

    name: str
    role: str  # train | test
    external: bool
    id_format: str  # plain | hpav18


@dataclass(frozen=True)
class EmbedSettings:
    """One embed job's settings (config `transfer`, seed, datasets; steered by device, pretrained_dir)."""

    backbone: str
    pretrained: bool
    image_size: int | None  # None: the shards' row side
    embedding_size: int
    epochs: int
    batch_size: int
    lr: float
    margin: float
    scale: float
    holdout: float
    seed: int
    datasets: tuple[EmbedDataset, ...]
    device: str
    pretrained_dir: str
    threads: int

    @classmethod
    def from_config(cls, config: dict, threads: int) -> EmbedSettings:
        """From job_config("embed", ...): exactly the keys hpaflow.contracts.STAGES["embed"] declares."""
        t = config["transfer"]
        return cls(
            backbone=t["backbone"],
            pretrained=t["pretrained"],
            image_size=t["image_size"],
            embedding_size=t["embedding_size"],
            epochs=t["epochs"],
            batch_size=t["batch_size"],
            lr=t["lr"],
            margin=t["margin"],
            scale=t["scale"],
            holdout=t["holdout"],
            seed=config["seed"],
            datasets=tuple(
                EmbedDataset(d["name"], d["role"], d["external"], d["id_format"]) for d in config["datasets"]
            ),
            device=config["device"],
            pretrained_dir=config["pretrained_dir"],
            threads=threads,
        )

    def schedule(self) -> Schedule:
        return Schedule(self.lr, self.epochs, "cosine", None, None, 1, 0)  # Adam at lr, cosine decay to 0

    def decided(self) -> dict:
        """What the embedding depends on: everything but where and how fast it runs."""
        runs = {"threads", *STAGES["embed"].steers}
        return {k: v for k, v in asdict(self).items() if k not in runs}


# --- ArcFace --------------------------------------------------------------------------------------------


class ArcFace(nn.Module):
    """Additive angular margin logits (Deng et al. 2019, ArcFace; insightface's `easy_margin` off).

    With unit embedding e and unit class weights w_j, cos(theta_j) = e . w_j. The logits are
    s * cos(theta_j) for j != y and s * cos(theta_y + m) for the target y. Where theta_y + m > pi,
    cos(theta + m) would grow again with theta (the margin would reward a worse angle), so there the
    target logit is s * (cos(theta_y) - m * sin(m)) instead, insightface's fallback
    `cos - sin(pi - m) * m` (sin(pi - m) = sin(m)): monotonic in theta and continuous at theta = pi - m.
    The loss is the cross-entropy of these logits.
    """

    def __init__(self, embedding_size: int, n_classes: int, scale: float, margin: float) -> None:
        super().__init__()
        self.scale, self.margin = float(scale), float(margin)
        self.weight = nn.Parameter(torch.empty(n_classes, embedding_size))
        nn.init.xavier_uniform_(self.weight)

    def cosines(self, embedding: torch.Tensor) -> torch.Tensor:
        """cos(theta_j) of each row (B, D) with each class (B, n_classes)."""
        return F.linear(F.normalize(embedding, dim=1), F.normalize(self.weight, dim=1)).clamp(-1.0, 1.0)

    def forward(self, embedding: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        cos = self.cosines(embedding.float())
        m = self.margin
        # sqrt's gradient is infinite at 0 (cos = +-1): the floor keeps it finite and moves values by < 1e-6.
        sin = torch.sqrt((1.0 - cos * cos).clamp_min(1e-12))
        shifted = cos * math.cos(m) - sin * math.sin(m)  # cos(theta + m), theta in [0, pi]
        shifted = torch.where(cos > math.cos(math.pi - m), shifted, cos - math.sin(math.pi - m) * m)
        is_target = F.one_hot(target, cos.shape[1]).bool()
        return self.scale * torch.where(is_target, shifted, cos)


# --- classes ---------------------------------------------------------------------------------------------


def antibody_groups(
    ids: np.ndarray, datasets: np.ndarray, id_formats: Mapping[str, str], pairs: pd.DataFrame
) -> np.ndarray:
    """Each train field's antibody and near-duplicate group (numbered by its first row), as the folds
    form them: an antibody's fields (id_format hpav18) joined, and fields joined by train-train pairs of
    duplicates.csv (a Kaggle field copying an HPAv18 field joins that antibody's group)."""
    return train_groups(ids, pairs, antibodies(ids, datasets, id_formats))


def antibody_classes(groups: np.ndarray, has_antibody: np.ndarray) -> np.ndarray:
    """The groups the network can learn (sorted): those with an antibody field and at least two fields."""
    names, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    with_antibody = np.zeros(len(names), bool)
    with_antibody[inverse[has_antibody]] = True
    return names[with_antibody & (sizes >= 2)]


def held_out_count(n_classes: int, holdout: float) -> int:
    """How many classes are held out: none without holdout or under 4 classes (retrieval needs 2 held-out
    classes, training 2 trained ones); else holdout x n rounded, at least 2 and at most n - 2."""
    if holdout <= 0 or n_classes < 4:
        return 0
    return min(max(round(holdout * n_classes), 2), n_classes - 2)


def split_classes(classes: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(trained, held out) classes, both sorted: the held-out ones drawn from seed."""
    k = held_out_count(len(classes), holdout)
    held = np.sort(np.random.default_rng(seed).choice(classes, k, replace=False)) if k else classes[:0]
    return np.setdiff1d(classes, held), held


# --- retrieval -----------------------------------------------------------------------------------------


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row divided by its L2 norm (float64 arithmetic; zero rows stay zero)."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_other(emb: np.ndarray) -> np.ndarray:
    """Each row's most cosine-similar other row (the first on ties): transfer's exact search, each row its own
    group so that it never finds itself."""
    e = unit_rows(emb).astype(np.float32)
    own = np.arange(len(e))
    return nearest(e, e, own, own)[0]


def retrieval_accuracy(emb: np.ndarray, groups: np.ndarray) -> float:
    """Top-1 leave-one-out retrieval: the share of rows whose nearest other row (cosine) is of their group,
    over the rows whose group has another row; NaN when none has."""
    groups = np.asarray(groups)
    if len(groups) < 2:
        return float("nan")
    _, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    counted = sizes[inverse] >= 2
    if not counted.any():
        return float("nan")
    hit = groups[nearest_other(emb)] == groups
    return float(hit[counted].mean())


# --- the fields --------------------------------------------------------------------------------------------


@dataclass
class FieldTable:
    """One row per field of view of every dataset (config order, fields in shard order); `rows` holds
    each dataset's shard rows (a tiled field has several)."""

    ids: np.ndarray  # str (N,)
    datasets: np.ndarray  # str (N,)
    test: np.ndarray  # bool (N,)
    external: np.ndarray  # bool (N,)
    labels: np.ndarray  # uint8 (N, 28); zeros for test fields
    rows: dict[str, ShardRows] = field(default_factory=dict)


def read_fields_of(settings: EmbedSettings, shards_by_dataset: Mapping[str, list[str]]) -> FieldTable:
    """Every configured dataset's fields from its shards; a dataset without shards, a train dataset
    without labels, or an Id in two train datasets is an error naming them."""
    unknown = sorted(set(shards_by_dataset) - {d.name for d in settings.datasets})
    if unknown:
        raise ValueError(f"shards of dataset(s) {', '.join(unknown)}, which the config's datasets do not name")
    parts, rows = [], {}
    for d in settings.datasets:
        files = shards_by_dataset.get(d.name) or []
        if not files:
            raise ValueError(f"dataset {d.name}: no shard files")
        r = ShardRows.from_files(files)
        if d.role == "train" and r.labels is None:
            raise ValueError(f"dataset {d.name} (role train): its shards ({files[0]}, ...) hold no labels")
        first = np.sort(np.unique(r.ids, return_index=True)[1])  # one row per field, in shard order
        labels = r.labels[first] if d.role == "train" else np.zeros((len(first), 28), np.uint8)
        parts.append((r.ids[first], d, labels))
        rows[d.name] = r
    ids = np.concatenate([p[0] for p in parts]).astype(str)
    n = [len(p[0]) for p in parts]
    table = FieldTable(
        ids=ids,
        datasets=np.repeat([p[1].name for p in parts], n).astype(str),
        test=np.repeat([p[1].role == "test" for p in parts], n).astype(bool),
        external=np.repeat([p[1].external for p in parts], n).astype(bool),
        labels=np.concatenate([p[2] for p in parts]).astype(np.uint8),
        rows=rows,
    )
    check_unique_train_ids(table)
    return table


def check_unique_train_ids(table: FieldTable) -> None:
    train = ~table.test
    ids = pd.Series(table.ids[train])
    dup = ids[ids.duplicated()]
    if len(dup):
        where = ", ".join(sorted(set(table.datasets[train][(ids == dup.iloc[0]).to_numpy()])))
        raise ValueError(f"Id {dup.iloc[0]!r} appears twice among the train fields ({where}); Ids must be unique")


@dataclass
class Classes:
    """What the network learns: each field's group, which groups are classes, trained or held out."""

    group: np.ndarray  # int64 (N,): the row (in the table) of the group's first field; -1 for test fields
    trained: np.ndarray  # int64: the trained classes' group numbers, sorted (class index = position)
    held_out: np.ndarray  # int64: the held-out classes' group numbers, sorted

    def target(self) -> np.ndarray:
        """Each field's class index among the trained classes; -1 for the others (held out, test, none)."""
        index = pd.Series(np.arange(len(self.trained)), index=self.trained)
        out = index.reindex(self.group).to_numpy()
        return np.where(np.isnan(out), -1, out).astype(np.int64)

    def trained_fields(self) -> np.ndarray:
        return np.isin(self.group, self.trained) & (self.group >= 0)

    def held_out_fields(self) -> np.ndarray:
        return np.isin(self.group, self.held_out) & (self.group >= 0)


def field_classes(table: FieldTable, settings: EmbedSettings, pairs: pd.DataFrame) -> Classes:
    """Groups of the train fields (antibody_groups), the classes among them and their holdout split."""
    train = np.flatnonzero(~table.test)
    id_formats = {d.name: d.id_format for d in settings.datasets if d.role == "train"}
    ids, datasets = table.ids[train], table.datasets[train]
    local = antibody_groups(ids, datasets, id_formats, pairs)
    group = np.full(len(table.ids), -1, np.int64)
    group[train] = train[local]  # numbered by the table row of the group's first field
    has_antibody = np.zeros(len(table.ids), bool)
    has_antibody[train] = [a is not None for a in antibodies(ids, datasets, id_formats)]
    classes = antibody_classes(group[train], has_antibody[train])
    if len(classes) < 2:
        raise ValueError(
            f"{len(classes)} antibody group(s) of at least 2 fields among {len(train)} train fields: the embedding "
            "needs at least 2: label transfer needs a train dataset with id_format hpav18, several fields per antibody"
        )
    trained, held = split_classes(classes, settings.holdout, settings.seed)
    if settings.holdout > 0 and len(held) == 0:
        log.warning(
            "holdout %.2f: only %d classes, none held out; the last epoch is kept", settings.holdout, len(classes)
        )
    return Classes(group, trained.astype(np.int64), held.astype(np.int64))


def train_rows_of(table: FieldTable, settings: EmbedSettings, fields: np.ndarray) -> tuple[ShardRows, np.ndarray]:
    """The shard rows (tiles included) of the given table rows of train datasets, with each row's field
    (table row). Only train datasets' shards are read: a test field can never reach training."""
    train_names = [d.name for d in settings.datasets if d.role == "train"]
    rows = ShardRows.from_files([f for n in train_names for f in table.rows[n].files])
    train = np.flatnonzero(~table.test)
    field_of = pd.Series(train, index=table.ids[train]).reindex(rows.ids).to_numpy()  # Ids unique among train
    keep = np.isin(field_of, fields)
    return rows.subset(keep), field_of[keep].astype(np.int64)


# --- training --------------------------------------------------------------------------------------------


class Targeted(Dataset):
    """A ShardDataset's (image, augmentation parameters) with each row's class index instead of its labels."""

    def __init__(self, ds: ShardDataset, target: np.ndarray) -> None:
        self.ds, self.target = ds, target

    def set_epoch(self, epoch: int) -> None:
        self.ds.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        rgby, params, _ = self.ds[i]
        return rgby, params, int(self.target[i])


@dataclass
class EmbedTraining:
    """The network, its ArcFace head, and the state that moves with them from epoch to epoch."""

    net: nn.Module
    arcface: ArcFace
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 0
    best: dict = field(default_factory=lambda: {"epoch": 0, "retrieval": -math.inf, "model": None})

    def state(self, epoch: int, fingerprint: dict) -> dict:
        """last.pt: what a resumed job needs to go on as an uninterrupted one (the rate is a function of
        the epoch), with the best epoch's weights so far."""
        return {
            h5n.FORMAT: h5n.CHECKPOINT_FORMAT,
            h5n.CKPT_MODEL: self.net.state_dict(),
            "arcface": self.arcface.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "epoch": epoch,
            "history": self.history,
            "best": self.best,
            h5n.CKPT_FINGERPRINT: fingerprint,
        }

    def restore(self, state: dict) -> None:
        self.net.load_state_dict(state[h5n.CKPT_MODEL])
        self.arcface.load_state_dict(state["arcface"])
        self.opt.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.start_epoch, self.history, self.best = state["epoch"] + 1, state["history"], state["best"]


def new_training(settings: EmbedSettings, n_classes: int, device: torch.device) -> EmbedTraining:
    torch.manual_seed(settings.seed)
    net = build_model(
        settings.backbone,
        CHANNELS[COLOR_MODE],
        settings.pretrained,
        settings.pretrained_dir,
        num_classes=settings.embedding_size,
        head="linear",
    ).to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    arcface = ArcFace(settings.embedding_size, n_classes, settings.scale, settings.margin).to(device)
    opt = torch.optim.Adam([*net.parameters(), *arcface.parameters()], lr=settings.lr)
    dtype = autocast_dtype(device)
    return EmbedTraining(net, arcface, opt, torch.amp.GradScaler("cuda", enabled=dtype == torch.float16), dtype)


def train_epoch(
    t: EmbedTraining, settings: EmbedSettings, ds: Targeted, epoch: int, device: torch.device, workers: int
) -> dict:
    """One pass over the trained rows at the epoch's rate; returns the mean loss, the top-1 accuracy of the
    ArcFace logits (margin included: 0 until classes are apart by more than it) and of the plain cosines,
    and images per second."""
    t.net.train()
    t.arcface.train()
    set_lr(t.opt, lr_at(settings.schedule(), epoch))
    ds.set_epoch(epoch)
    sampler = make_sampler("uniform", ds.target, settings.seed, epoch)  # order fixed by (seed, epoch)
    dl = loader(ds, settings.batch_size, workers, sampler, train=True)
    progress = Progress(len(ds), f"epoch {epoch + 1}/{settings.epochs}", "img", log=log)
    t0, total_loss, correct, correct_cos, seen = time.monotonic(), 0.0, 0, 0, 0
    t.opt.zero_grad(set_to_none=True)
    for rgby, params, y in dl:
        x = prepare_batch(rgby, COLOR_MODE, device, params, normalize=NORMALIZE)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=t.dtype, enabled=t.dtype is not None):
            embedding = t.net(x)
        logits = t.arcface(embedding.float(), y)  # float32: the margin's trigonometry
        loss = F.cross_entropy(logits, y)
        t.scaler.scale(loss).backward()
        optimizer_step(t.opt, t.scaler)
        total_loss += float(loss.detach()) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        with torch.no_grad():
            correct_cos += int((t.arcface.cosines(embedding.float()).argmax(1) == y).sum())
        seen += len(y)
        progress.suffix = f"loss {total_loss / seen:.4f}"
        progress.update(len(y))
    return {
        "loss": total_loss / seen,
        "train_top1": correct / seen,
        "train_top1_cosine": correct_cos / seen,
        "images_per_s": seen / (time.monotonic() - t0),
    }


@torch.no_grad()
def embed_rows(
    net: nn.Module,
    rows: ShardRows,
    image_size: int,
    batch_size: int,
    device: torch.device,
    workers: int,
    label: str,
) -> tuple[np.ndarray, np.ndarray]:
    """(Ids, unit embeddings float32 (M, D)): one per field in order of first appearance, each whole row
    resized to image_size without augmentation; a tiled field's tiles are averaged, then normalised."""
    net.eval()
    dl = loader(ShardDataset(rows, image_size), batch_size, workers)
    dtype = autocast_dtype(device)
    progress = Progress(len(rows), label, "img", log=log)
    out = []
    for rgby, _, _ in dl:
        x = prepare_batch(rgby, COLOR_MODE, device, normalize=NORMALIZE)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            e = net(x).float()
        out.append(F.normalize(e, dim=1).cpu().numpy())
        progress.update(len(rgby))
    ids, emb = aggregate_tiles(rows.ids, np.concatenate(out), "mean")
    return ids, unit_rows(emb).astype(np.float32)


def row_side(files: list[str]) -> int:
    """The side of a shard's rows (its image or tile size)."""
    with h5py.File(files[0], "r") as h5:
        return int(h5[h5n.IMAGES].shape[1])


def job_fingerprint(
    settings: EmbedSettings, table: FieldTable, classes: Classes, target: np.ndarray, train_files: list[str]
) -> dict[str, str]:
    """What a checkpoint must match to be resumed, part by part (a mismatch names what changed)."""
    trained = classes.trained_fields()
    order = np.argsort(table.ids[trained], kind="stable")
    held = np.sort(table.ids[classes.held_out_fields()])
    return {
        "embed settings": digest(settings.decided()),
        "trained Ids and classes": digest([table.ids[trained][order].tolist(), target[trained][order].tolist()]),
        "held-out Ids and groups": digest([held.tolist(), np.sort(classes.group[classes.held_out_fields()]).tolist()]),
        "image contents": content_fingerprint(train_files)[:16],
    }


def held_out_retrieval(
    t: EmbedTraining,
    val: ShardRows | None,
    val_group: dict[str, int],
    settings: EmbedSettings,
    size: int,
    device,
    workers,
) -> float:
    """Top-1 retrieval accuracy among the held-out classes' fields (NaN when none are held out)."""
    if val is None:
        return float("nan")
    ids, emb = embed_rows(t.net, val, size, settings.batch_size, device, workers, "held-out fields")
    return retrieval_accuracy(emb, np.array([val_group[i] for i in ids]))


def log_epoch(settings: EmbedSettings, row: dict, improved: bool, eta: float) -> None:
    log.info(
        "epoch %d/%d: loss %.4f, train top-1 %.3f (%.3f without the margin), held-out retrieval top-1 %.3f%s; "
        "lr %.3g; %.1f img/s; ETA %s",
        row["epoch"],
        settings.epochs,
        row["loss"],
        row["train_top1"],
        row["train_top1_cosine"],
        row["retrieval"],
        " (best)" if improved else "",
        row["lr"],
        row["images_per_s"],
        format_seconds(eta),
    )


def fit(
    settings: EmbedSettings,
    table: FieldTable,
    classes: Classes,
    size: int,
    ckpt_dir: Path,
    device: torch.device,
    workers: int,
) -> EmbedTraining:
    """Train (or resume) the embedding network; returns the training with the best epoch's weights loaded."""
    target = classes.target()
    train_rows, train_field = train_rows_of(table, settings, np.flatnonzero(classes.trained_fields()))
    held_fields = np.flatnonzero(classes.held_out_fields())
    val, val_group = None, {}
    if len(held_fields):
        val = train_rows_of(table, settings, held_fields)[0]
        val_group = dict(zip(table.ids[held_fields].tolist(), classes.group[held_fields].tolist()))
    ds = Targeted(ShardDataset(train_rows, size, train=True, seed=settings.seed), target[train_field])
    train_files = [f for d in settings.datasets if d.role == "train" for f in table.rows[d.name].files]
    fingerprint = job_fingerprint(settings, table, classes, target, train_files)
    log.info(
        "%d classes trained (%d fields, %d rows), %d held out (%d fields); %s at %d px on %s (%d loader workers)",
        len(classes.trained),
        int(classes.trained_fields().sum()),
        len(train_rows),
        len(classes.held_out),
        len(held_fields),
        settings.backbone,
        size,
        device,
        workers,
    )

    t = new_training(settings, len(classes.trained), device)
    last = ckpt_dir / "last.pt"
    state = resumable_state(last, fingerprint)
    if state is not None:
        t.restore(state)
        log.info("resuming from %s: epoch %d of %d done", last, t.start_epoch, settings.epochs)
    run_start = time.monotonic()
    for epoch in range(t.start_epoch, settings.epochs):
        row = {"epoch": epoch + 1, **train_epoch(t, settings, ds, epoch, device, workers)}
        row["lr"] = t.opt.param_groups[0]["lr"]
        row["retrieval"] = held_out_retrieval(t, val, val_group, settings, size, device, workers)
        # Ties go to the later epoch (held-out retrieval saturates on few antibodies while training still
        # separates them further); nothing held out: every epoch "improves", so the last is kept.
        improved = val is None or row["retrieval"] >= t.best["retrieval"]
        if improved:
            weights = {k: v.detach().to("cpu", copy=True) for k, v in t.net.state_dict().items()}
            t.best = {"epoch": epoch + 1, "retrieval": row["retrieval"], "model": weights}
        t.history.append(row)
        save(t.state(epoch, fingerprint), last)
        eta = (time.monotonic() - run_start) / (epoch + 1 - t.start_epoch) * (settings.epochs - epoch - 1)
        log_epoch(settings, row, improved, eta)
    t.net.load_state_dict(t.best["model"])
    return t


# --- the job ----------------------------------------------------------------------------------------------


def embed_all(
    net: nn.Module, table: FieldTable, settings: EmbedSettings, size: int, device: torch.device, workers: int
) -> np.ndarray:
    """Every field of every dataset embedded (table order), float32 (N, D) of unit norm."""
    out = []
    for d in settings.datasets:
        ids, emb = embed_rows(net, table.rows[d.name], size, settings.batch_size, device, workers, f"embed {d.name}")
        expected = table.ids[table.datasets == d.name]
        assert np.array_equal(ids, expected), d.name  # both in order of first appearance
        out.append(emb)
    return np.concatenate(out)


def write_embeddings(
    path: str | Path, table: FieldTable, classes: Classes, emb: np.ndarray, retrieval: float, attrs: dict
) -> None:
    """embeddings.h5 (hpaflow.h5names), written atomically."""
    strings = h5py.string_dtype()
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset(h5n.IDS, data=table.ids.astype(object), dtype=strings)
            h5.create_dataset(h5n.EMB_DATASETS, data=table.datasets.astype(object), dtype=strings)
            h5.create_dataset(h5n.EMB_TEST, data=table.test)
            h5.create_dataset(h5n.EMB_EXTERNAL, data=table.external)
            h5.create_dataset(h5n.EMB_GROUP, data=classes.group.astype(np.int64))
            h5.create_dataset(h5n.EMB_TRAINED, data=classes.trained_fields() & ~table.test)
            h5.create_dataset(h5n.LABELS, data=table.labels.astype(np.uint8))
            h5.create_dataset(h5n.EMBEDDINGS, data=emb.astype(np.float32))
            h5.attrs[h5n.FORMAT] = h5n.EMBEDDINGS_FORMAT
            h5.attrs[h5n.EMB_RETRIEVAL] = float(retrieval)
            for k, v in attrs.items():
                h5.attrs[k] = v
            versions.stamp(h5.attrs)  # the embed job's environment


def write_model(path: str | Path, net: nn.Module, settings: EmbedSettings, size: int) -> None:
    """embed.pt: the network's weights (float32, CPU) and what rebuilds it (hpaflow.export.EmbeddingModule)."""
    state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
    model_settings = {
        "backbone": settings.backbone,
        "embedding_size": settings.embedding_size,
        "image_size": size,
        "color_mode": COLOR_MODE,
        "normalize": NORMALIZE,
    }
    save({h5n.FORMAT: h5n.CHECKPOINT_FORMAT, h5n.CKPT_MODEL: state, "settings": model_settings}, Path(path))


def run_embed(
    settings: EmbedSettings,
    shards_by_dataset: Mapping[str, list[str]],
    duplicates_csv: str | Path,
    out_h5: str | Path,
    out_model: str | Path | None = None,
) -> dict:
    """Train the embedding network (resuming if possible), embed every field, write out_h5 (and the network
    to out_model); returns a summary."""
    out_h5 = Path(out_h5)
    workers = use_threads(settings.threads)
    device = pick_device(settings.device)
    table = read_fields_of(settings, shards_by_dataset)
    classes = field_classes(table, settings, h5n.read_duplicates(duplicates_csv))
    first_train = next(d.name for d in settings.datasets if d.role == "train")
    size = settings.image_size or row_side(table.rows[first_train].files)
    t = fit(settings, table, classes, size, out_h5.parent / "checkpoints", device, workers)

    emb = embed_all(t.net, table, settings, size, device, workers)
    held = classes.held_out_fields()
    retrieval = retrieval_accuracy(emb[held], classes.group[held]) if held.any() else float("nan")
    summary = {
        "epochs": settings.epochs,
        "epochs_run": len(t.history),
        "best_epoch": int(t.best["epoch"]),
        "retrieval": retrieval,
        "classes_trained": len(classes.trained),
        "classes_held_out": len(classes.held_out),
        "fields": len(table.ids),
        "trained_fields": int(classes.trained_fields().sum()),
        "image_size": size,
    }
    attrs = {k: v for k, v in summary.items() if k != "retrieval"}
    attrs |= {"backbone": settings.backbone, "embedding_size": settings.embedding_size}
    attrs["history"] = json.dumps(t.history)
    write_embeddings(out_h5, table, classes, emb, retrieval, attrs)
    if out_model is not None:
        write_model(out_model, t.net, settings, size)
    log.info(
        "wrote %s: %d fields, best epoch %d of %d, held-out retrieval top-1 %.3f",
        out_h5,
        len(table.ids),
        summary["best_epoch"],
        settings.epochs,
        retrieval,
    )
    return {**summary, "history": t.history}
