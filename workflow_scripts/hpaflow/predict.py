"""Inference with test-time augmentation (dihedral views x crops) and tile-to-image aggregation."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader

from . import h5names as h5n
from . import versions
from .augment import check_crops, cut_crops, dihedral_batch, prepare_batch
from .data import ShardDataset, ShardRows, fold_of
from .files import atomic_path
from .models import build_model
from .runtime import autocast_dtype, pick_device, use_threads
from .transforms import CHANNELS, crop_offsets

log = logging.getLogger("hpaflow")


def model_crops(cfg: dict, crops: int, crop_placement: str, seed: int) -> np.ndarray | None:
    """Top-left corners (y, x) of the crops that a model (its checkpoint config) scores, int64 (n, 2), or None:
    the whole image (predict.crops 0, or a model without crop_size). Predict and the exported graph both
    take them from here."""
    if crops == 0 or cfg["crop_size"] is None:
        return None
    return crop_offsets(cfg["image_size"], cfg["crop_size"], crops, crop_placement, seed)


@torch.no_grad()
def predict_probs(
    model: torch.nn.Module,
    dl: DataLoader,
    device: torch.device,
    color_mode: str,
    views: tuple[int, ...] = (0,),
    normalize: str = "imagenet",
    offsets: np.ndarray | None = None,
    crop_size: int | None = None,
) -> np.ndarray:
    """Sigmoid probabilities of each crop in each view: float32 (C x V, N, 28), crop-major (entry c * V + v
    is crop c, view views[v]). offsets: the crops' top-left corners (y, x) (model_crops), each cut crop_size
    square from the batch before normalisation (per_image statistics are the crop's, as in training); None:
    the whole image, one entry per view (training's validation)."""
    check_crops(offsets, crop_size)  # before any batch is read
    model.eval()
    dtype = autocast_dtype(device)
    out = []
    for rgby, _, _ in dl:
        if offsets is not None:  # moved once, cut on the device
            rgby = rgby.to(device, non_blocking=True)
        crops = cut_crops(rgby, offsets, crop_size)
        per_view = []
        for crop in crops:
            x = prepare_batch(crop, color_mode, device, normalize=normalize)
            for v in views:
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    per_view.append(torch.sigmoid(model(dihedral_batch(x, v)).float()).cpu().numpy())
        out.append(np.stack(per_view))
    return np.concatenate(out, axis=1).astype(np.float32)


# How TTA views and crops (and the tiles of an image) are combined: the ufunc that reduces them.
REDUCERS = {"mean": np.add, "max": np.maximum}


def _reducer(how: str) -> np.ufunc:
    if how not in REDUCERS:
        raise ValueError(f"unknown combine {how!r} (mean or max)")
    return REDUCERS[how]


def combine(views: np.ndarray, how: str) -> np.ndarray:
    """Per-view (or per crop x view) probabilities (V, N, K) -> (N, K) by `mean` or `max`."""
    out = _reducer(how).reduce(views, axis=0)
    return out / len(views) if how == "mean" else out


def aggregate_tiles(ids: np.ndarray, probs: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows sharing an Id (tiles of one image) -> one row per Id (`mean` or `max`), in order of
    first appearance. probs: (..., N, K) -> (..., M, K)."""
    uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    counts = np.bincount(inverse)
    rows = np.argsort(inverse, kind="stable")  # rows grouped by Id
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    agg = _reducer(how).reduceat(probs[..., rows, :], starts, axis=-2)
    if how == "mean":
        agg = agg / counts[:, None]
    order = np.argsort(first)
    return uniq[order], agg[..., order, :].astype(np.float32)


class LeakError(ValueError):
    """A model asked to score, as out-of-fold, Ids that it was trained on."""


def load_checkpoint(checkpoint: str | Path) -> dict:
    """A best.pt as written by training; errors name the file and what to do."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        missing = {h5n.CKPT_MODEL, h5n.CKPT_CONFIG} - set(state)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        raise ValueError(
            f"{checkpoint}: cannot be read as a checkpoint ({type(e).__name__}: {e}); delete it and rerun its train job"
        ) from None
    if missing:
        raise ValueError(f"{checkpoint}: not a model checkpoint (no {', '.join(sorted(missing))})")
    h5n.check_format(checkpoint, "checkpoint", state.get(h5n.FORMAT))
    return state


def check_no_leak(state: dict, checkpoint: str | Path, ids: np.ndarray, fold: int) -> None:
    """Refuse to score as out-of-fold any Id that the checkpoint's model was trained on."""
    trained = state[h5n.CKPT_TRAIN_IDS]  # every checkpoint of this format records them (load_checkpoint)
    leaked = sorted(set(np.unique(ids)) & set(trained))
    if leaked:
        shown = ", ".join(leaked[:10]) + (", ..." if len(leaked) > 10 else "")
        raise LeakError(
            f"{checkpoint} was trained on {len(leaked)} Id(s) that fold {fold} now holds out ({shown}): "
            "refusing to write them as out-of-fold predictions. The folds or the data changed after this "
            "model was trained; rerun its train job (snakemake does when folds.csv or the shards are newer)"
        )


def load_model(state: dict, device: torch.device) -> tuple[torch.nn.Module, dict]:
    cfg = state[h5n.CKPT_CONFIG]
    model = build_model(  # not pretrained: weights come next
        cfg["backbone"],
        CHANNELS[cfg["color_mode"]],
        pretrained=False,
        head=cfg["head"],
        head_hidden=cfg["head_hidden"],
        dropout=cfg["dropout"],
    )
    model.load_state_dict(state[h5n.CKPT_MODEL])
    model.to(device)  # Module.to works in place
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model, cfg


def predict_rows(
    model,
    cfg: dict,
    rows: ShardRows,
    device,
    views,
    tta_combine: str,
    tile_combine: str,
    batch_size: int,
    workers: int,
    *,
    offsets: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, probs (M, 28), per crop x view probs (C x V, M, 28), crop-major as predict_probs) with tiles
    aggregated to their image; the model's colour mode and normalisation from its config `cfg`; offsets: its
    crops (model_crops), None for the whole image."""
    ds = ShardDataset(rows, cfg["image_size"])
    dl = DataLoader(ds, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda")
    crop_size = None if offsets is None else cfg["crop_size"]
    per_view = predict_probs(model, dl, device, cfg["color_mode"], tuple(views), cfg["normalize"], offsets, crop_size)
    ids, per_view = aggregate_tiles(rows.ids, per_view, tile_combine)
    return ids, combine(per_view, tta_combine), per_view


def train_software(state: dict) -> dict:
    """The train job's environment from its checkpoint, as the attribute predictions carry it to the report
    (none for a checkpoint from before the stamps)."""
    attrs: dict = {}
    if (env := state.get(h5n.CKPT_SOFTWARE)) is not None:
        versions.stamp(attrs, [env], h5n.SOFTWARE_VERSIONS_INPUTS)
    return attrs


def write_predictions(path: str | Path, parts: dict[str, dict], attrs: dict) -> None:
    """One HDF5 with a group per part (oof, test): ids, probs float32 (N, 28), optional labels, views; stamped
    with this job's software versions."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        for name, part in parts.items():
            g = h5.create_group(name)
            g.create_dataset(h5n.IDS, data=np.asarray(part[h5n.IDS], dtype=object), dtype=h5py.string_dtype())
            g.create_dataset(h5n.PROBS, data=part[h5n.PROBS].astype(np.float32))
            for key in (h5n.LABELS, h5n.VIEWS):
                if part.get(key) is not None:
                    g.create_dataset(key, data=part[key])
        h5.attrs.update({**attrs, h5n.FORMAT: h5n.PREDICTIONS_FORMAT})
        versions.stamp(h5.attrs)  # the predict job's environment (the report's "train and predict")


@dataclass(frozen=True)
class PredictSettings:
    """One predict job's settings; defaults live in the config schema only (from_config)."""

    views: list[int]  # TTA views (transforms: dihedral group)
    tta_combine: str  # over crops x views
    tile_combine: str
    save_views: bool
    batch_size: int
    device: str
    threads: int
    crops: int  # 0: the whole image; n: n crops of the model's crop_size (models without one: the whole image)
    crop_placement: str  # transforms.CROP_PLACEMENTS
    seed: int  # of the seeded crop placement

    @classmethod
    def from_config(cls, config: dict, threads: int) -> PredictSettings:
        p = config["predict"]
        return cls(
            p["tta_views"],
            p["tta_combine"],
            p["tile_combine"],
            p["save_views"],
            p["batch_size"],
            config["device"],
            threads,
            p["crops"],
            p["crop_placement"],
            config["seed"],
        )


def run_predict(
    checkpoint: str,
    train_shards: list[str],
    test_shards: list[str],
    folds_csv: str,
    fold: int,
    out: str,
    settings: PredictSettings,
) -> None:
    s = settings
    workers = use_threads(s.threads)
    device = pick_device(s.device)
    state = load_checkpoint(checkpoint)
    rows = ShardRows.from_files(train_shards)
    val = rows.subset(fold_of(rows, folds_csv) == fold)
    check_no_leak(state, checkpoint, val.ids, fold)
    model, cfg = load_model(state, device)
    offsets = model_crops(cfg, s.crops, s.crop_placement, s.seed)
    if offsets is not None:
        log.info(
            "%d crops of %d px (%s): top-left corners (y, x) %s",
            len(offsets),
            cfg["crop_size"],
            s.crop_placement,
            offsets.tolist(),
        )
    parts = {}
    for name, r in [(h5n.OOF, val), (h5n.TEST, ShardRows.from_files(test_shards) if test_shards else None)]:
        if r is None:
            continue
        log.info("%s: %d rows, TTA views %s (%s), tiles %s", name, len(r), s.views, s.tta_combine, s.tile_combine)
        ids, probs, per_view = predict_rows(
            model, cfg, r, device, s.views, s.tta_combine, s.tile_combine, s.batch_size, workers, offsets=offsets
        )
        labels = None
        if r.labels is not None:
            _, first = np.unique(r.ids, return_index=True)
            lab = dict(zip(r.ids[first], r.labels[first]))
            labels = np.stack([lab[i] for i in ids])
        parts[name] = {
            h5n.IDS: ids,
            h5n.PROBS: probs,
            h5n.LABELS: labels,
            h5n.VIEWS: per_view if s.save_views else None,
        }
    write_predictions(
        out,
        parts,
        {
            "model": cfg["name"],
            "fold": fold,
            "views": list(s.views),
            "tta_combine": s.tta_combine,
            "tile_combine": s.tile_combine,
            # views (save_views) holds crops x views entries, crop-major; crops 0: one whole image per view
            "crops": 0 if offsets is None else len(offsets),
            "crop_offsets": np.zeros((0, 2), np.int64) if offsets is None else offsets,
            **train_software(state),
        },
    )
