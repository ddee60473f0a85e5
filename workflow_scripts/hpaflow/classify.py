"""Classify new fields of view with an exported package: shards in, predictions.csv and a gallery out.

The fields are sharded by the training data's own code (shards.write_shard at the package's shard size), so
a field is decoded and resized exactly as training data were; each row is then resized to the graph's input
size by the function predict uses (transforms.resize), so the graph sees the very tensor predict gave the
models. The ensemble runs with onnxruntime (a CUDA provider where the installed onnxruntime has one, else
the CPU); no torch here.

Label transfer (config classify.transfer, when the package holds it: Package.transfer): every field is also
embedded (embedding.onnx, the row resized to its own input size), matched to its most similar reference field
(transfer.nearest), and takes that field's labels where the similarity is at least the package's tau
(transfer.transferred), as rule transfer does for the test fields. The probability columns stay the ensemble's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  registers the shard codecs' HDF5 filters (shards.COMPRESSIONS)
import numpy as np
import onnxruntime as ort
import pandas as pd

from . import h5names as h5n
from .files import atomic_path
from .gallery import captioned_grid, shard_images, write_png
from .labels import decode
from .package import TRANSFER_JSON, Package, PackageError, Transfer
from .progress import Progress
from .thresholds import apply
from .transfer import nearest, transferred
from .transforms import resize

log = logging.getLogger("hpaflow")
GALLERY_FIELDS = 24  # fields shown in gallery.png (the first, in Id order)
PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
TRANSFER_COLUMNS = ("neighbour_id", "similarity", "transferred")


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


def shard_batches(shards: list[str], shard_size: int, batch_size: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """(Ids, uint8 (n, S, S, 4) rows) of every shard in order, batch_size rows at a time; each shard checked."""
    for f in shards:
        with h5py.File(f, "r") as h5:
            check_shard(f, h5, shard_size)
            ids, images = h5[h5n.IDS].asstr(), h5[h5n.IMAGES]
            for start in range(0, len(images), batch_size):
                yield list(ids[start : start + batch_size]), images[start : start + batch_size]


def run_graphs(
    graphs: list[tuple[ort.InferenceSession, int]], shards: list[str], shard_size: int, batch_size: int
) -> tuple[list[str], list[np.ndarray]]:
    """Ids and each graph's output on every row of the shards (shard_size px), in shard order, one pass over
    the shards; a graph (session, size) takes rows resized to size px."""
    n = 0
    for f in shards:
        with h5py.File(f, "r") as h5:
            n += len(h5[h5n.IDS])
    progress = Progress(n, "classify", "images", log=log)
    ids: list[str] = []
    out: list[list[np.ndarray]] = [[] for _ in graphs]
    for batch_ids, rows in shard_batches(shards, shard_size, batch_size):
        ids += batch_ids
        for (sess, size), parts in zip(graphs, out):
            (y,) = sess.run(None, {sess.get_inputs()[0].name: model_input(rows, size)})
            parts.append(y)
        progress.update(len(rows))
    return ids, [np.concatenate(parts) for parts in out]


def predict_probs(
    sess: ort.InferenceSession, shards: list[str], shard_size: int, size: int, batch_size: int
) -> tuple[list[str], np.ndarray]:
    """Ids and (N, C) probabilities of every row of the shards (shard_size px), in shard order; the graph
    takes size px."""
    ids, (probs,) = run_graphs([(sess, size)], shards, shard_size, batch_size)
    return ids, probs


def predictions_table(ids: list[str], probs: np.ndarray, pred: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Id, Predicted (class numbers, as in the submission), Labels (names, '; '-separated), one probability
    column per class named by the class."""
    labels = ["; ".join(classes[k] for k in np.flatnonzero(row)) for row in pred]
    table = pd.DataFrame({"Id": ids, "Predicted": decode(pred), "Labels": labels})
    return pd.concat([table, pd.DataFrame(probs, columns=classes)], axis=1)


def transfer_labels(pred: np.ndarray, embeddings: np.ndarray, t: Transfer) -> tuple[np.ndarray, pd.DataFrame]:
    """(labels (N, C) bool, the transfer columns): each field's nearest reference (cosine similarity), whose labels
    replace pred where the similarity is at least tau (never when tau is None)."""
    index, similarity = nearest(embeddings, t.embeddings)
    labels, replaced = transferred(pred, t.labels[index], similarity, math.inf if t.tau is None else t.tau)
    columns = pd.DataFrame(
        {"neighbour_id": t.ids[index], "similarity": similarity.astype(np.float64), "transferred": replaced}
    )
    return labels, columns


def run_classify(
    shards: list[str],
    package_path: str | Path,
    out_csv: str | Path,
    threads: int,
    batch_size: int,
    transfer: bool = True,
) -> pd.DataFrame:
    """Check the package, score every shard row, apply the package's thresholds, write predictions.csv.
    transfer (config classify.transfer): with a package that holds label transfer, replace the labels of the
    fields close enough to a reference by its labels (columns neighbour_id, similarity, transferred added)."""
    package = Package(package_path)
    package.verify()
    (shard_size, size), classes = package.sizes(), package.classes()
    thresholds, at_least_one = package.thresholds()
    t = package.transfer() if transfer else None  # read (and checked) only when used
    if not transfer and TRANSFER_JSON in package.files:
        log.info("classify.transfer is false: the ensemble's labels only; the package's label transfer is not used")
    elif t is None and transfer:
        log.info("package %s holds no label transfer (exported without transfer.enabled): ensemble only", package_path)
    graphs = [(session(package.onnx_source(), threads), size)]
    if t is not None:
        graphs.append((session(t.onnx, threads), t.image_size))
        log.info(
            "label transfer: %d references, embeddings of %d at %d px, tau %s",
            len(t.ids),
            t.embedding_size,
            t.image_size,
            "null (never)" if t.tau is None else f"{t.tau:.6f}",
        )
    log.info(
        "package %s: fields sharded at %d px, resized to %d px; %d classes, providers %s",
        package_path,
        shard_size,
        size,
        len(classes),
        graphs[0][0].get_providers(),
    )
    ids, outputs = run_graphs(graphs, shards, shard_size, batch_size)
    probs = outputs[0]
    if probs.shape[1] != len(classes):
        raise PackageError(
            f"package {package_path}: ensemble.onnx gives {probs.shape[1]} outputs for {len(classes)} classes"
        )
    pred = apply(probs, thresholds, at_least_one)
    if t is not None:
        if outputs[1].shape[1] != t.embedding_size:
            raise PackageError(
                f"package {package_path}: embedding.onnx gives {outputs[1].shape[1]} values, transfer.json says "
                f"embedding_size {t.embedding_size}"
            )
        pred, columns = transfer_labels(pred, outputs[1], t)
    table = predictions_table(ids, probs, pred, classes)
    if t is not None:
        table = pd.concat([table, columns], axis=1)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")
    none = int((~(probs > thresholds).any(1)).sum())
    rule = "given their most probable class (at_least_one)" if at_least_one else "left without a label"
    log.info("%d fields classified; %d with no class above its threshold, %s", len(ids), none, rule)
    if t is not None:
        n = int(columns.transferred.sum())
        log.info("label transfer: %d of %d fields took their nearest reference's labels", n, len(ids))
    return table


def gallery(predictions_csv: str | Path, shards: list[str], out_png: str | Path, n: int = GALLERY_FIELDS) -> None:
    """The first n fields (Id order) with their predicted labels."""
    table = pd.read_csv(predictions_csv, dtype=str, keep_default_na=False, usecols=["Id", "Labels"]).head(n)
    images = shard_images(shards, list(table.Id))
    captions = [[i, *labels.split("; ")] if labels else [i] for i, labels in zip(table.Id, table.Labels)]
    write_png(captioned_grid(images, captions, lines=5), out_png)
