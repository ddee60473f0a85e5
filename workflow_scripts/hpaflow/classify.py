"""Classify new fields of view with an exported package: shards in, predictions.csv and a gallery out.

The fields are sharded by the training data's own code (shards.write_shard at the package's shard size), so
a field is decoded and resized exactly as training data were; each row is then resized to the graph's input
size by the function predict uses (transforms.resize), so the graph sees the very tensor predict gave the
models. The ensemble runs with onnxruntime (a CUDA provider where the installed onnxruntime has one, else
the CPU); no torch here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import onnxruntime as ort
import pandas as pd

from . import h5names as h5n
from .files import atomic_path
from .gallery import captioned_grid, shard_images, write_png
from .labels import decode
from .package import Package, PackageError
from .progress import Progress
from .thresholds import apply
from .transforms import resize

log = logging.getLogger("hpaflow")
GALLERY_FIELDS = 24  # fields shown in gallery.png (the first, in Id order)
PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def session(onnx: str | bytes, threads: int) -> ort.InferenceSession:
    """An onnxruntime session on a graph (path or bytes): CUDA where available, `threads` CPU threads."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    providers = [p for p in PROVIDERS if p in ort.get_available_providers()]
    return ort.InferenceSession(onnx, opts, providers=providers)


def check_shard(path: str | Path, h5: h5py.File, shard_size: int) -> None:
    """A shard made for this package: whole images at its shard size."""
    got = (int(h5.attrs["image_size"]), str(h5.attrs["tiling"]))
    if got != (shard_size, "none"):
        raise ValueError(
            f"{path}: rows are {got[0]} px with tiling {got[1]}; the package's fields are sharded as whole "
            f"{shard_size} px images (delete the shard and rerun)"
        )


def model_input(rows: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, S, S, 4) shard rows -> the graph's uint8 (N, 4, size, size) input: each row resized as predict's
    ShardDataset resizes it (transforms.resize)."""
    return np.ascontiguousarray(np.stack([resize(row, size) for row in rows]).transpose(0, 3, 1, 2))


def predict_probs(
    sess: ort.InferenceSession, shards: list[str], shard_size: int, size: int, batch_size: int
) -> tuple[list[str], np.ndarray]:
    """Ids and (N, C) probabilities of every row of the shards (shard_size px), in shard order; the graph
    takes size px."""
    name = sess.get_inputs()[0].name
    n = 0
    for f in shards:
        with h5py.File(f, "r") as h5:
            n += len(h5[h5n.IDS])
    progress = Progress(n, "classify", "images", log=log)
    ids, probs = [], []
    for f in shards:
        with h5py.File(f, "r") as h5:
            check_shard(f, h5, shard_size)
            ids += list(h5[h5n.IDS].asstr()[...])
            images = h5[h5n.IMAGES]
            for start in range(0, len(images), batch_size):
                x = model_input(images[start : start + batch_size], size)
                (p,) = sess.run(None, {name: x})
                probs.append(p)
                progress.update(len(x))
    return ids, np.concatenate(probs)


def predictions_table(ids: list[str], probs: np.ndarray, pred: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Id, Predicted (class numbers, as in the submission), Labels (names, '; '-separated), one probability
    column per class named by the class."""
    labels = ["; ".join(classes[k] for k in np.flatnonzero(row)) for row in pred]
    table = pd.DataFrame({"Id": ids, "Predicted": decode(pred), "Labels": labels})
    return pd.concat([table, pd.DataFrame(probs, columns=classes)], axis=1)


def run_classify(shards: list[str], package_path: str | Path, out_csv: str | Path, threads: int, batch_size: int):
    """Check the package, score every shard row, apply the package's thresholds, write predictions.csv."""
    package = Package(package_path)
    package.verify()
    (shard_size, size), classes = package.sizes(), package.classes()
    thresholds, at_least_one = package.thresholds()
    sess = session(package.onnx_source(), threads)
    log.info(
        "package %s: fields sharded at %d px, resized to %d px; %d classes, providers %s",
        package_path,
        shard_size,
        size,
        len(classes),
        sess.get_providers(),
    )
    ids, probs = predict_probs(sess, shards, shard_size, size, batch_size)
    if probs.shape[1] != len(classes):
        raise PackageError(
            f"package {package_path}: ensemble.onnx gives {probs.shape[1]} outputs for {len(classes)} classes"
        )
    table = predictions_table(ids, probs, apply(probs, thresholds, at_least_one), classes)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")
    none = int((~(probs > thresholds).any(1)).sum())
    rule = "given their most probable class (at_least_one)" if at_least_one else "left without a label"
    log.info("%d fields classified; %d with no class above its threshold, %s", len(ids), none, rule)
    return table


def gallery(predictions_csv: str | Path, shards: list[str], out_png: str | Path, n: int = GALLERY_FIELDS) -> None:
    """The first n fields (Id order) with their predicted labels."""
    table = pd.read_csv(predictions_csv, dtype=str, keep_default_na=False, usecols=["Id", "Labels"]).head(n)
    images = shard_images(shards, list(table.Id))
    captions = [[i, *labels.split("; ")] if labels else [i] for i, labels in zip(table.Id, table.Labels)]
    write_png(captioned_grid(images, captions, lines=5), out_png)
