"""Benchmarks against the physical floor and the peers' way of loading; one process, its own data.

    .venv/bin/python benchmarks/run.py --quick      # < 5 minutes on 2 cores
    .venv/bin/python benchmarks/run.py              # more images, steadier numbers

Prints a table and writes results/benchmarks.json (keys include shard_png_ratio, shard_tiff_ratio, shard_jpg_ratio,
loader_speedup_vs_png, thresholds_100k_seconds, dryrun_fullscale_seconds, dryrun_demo_seconds,
classify_onnx_vs_torch_cpu, duplicates_117k_seconds, and each recipe's cost from recipe_cost.py:
recipe_jobs, recipe_shard_bytes, recipe_step_ratios; jpeg_reduced_speedup_512, jpeg_reduced_max_diff_real,
stage_copy_mb_s; codec_bytes_ratio_real, codec_read_img_s_512 (the default hdf5_compression; every codec under
codecs), loader_img_s_per_worker_512 and _1024, loader_workers_for_1000_img_s_512, loader_workers_for_300_img_s_1024).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import h5py
import numpy as np
import tifffile
import yaml

# This clone's package, whatever venv runs the benchmark (a venv may serve several clones).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow_scripts"))

from recipe_cost import cost_table, full_scale_csvs, lay_out_weights, recipe_costs, workflow_copy  # noqa: E402

from hpaflow import h5names as h5n  # noqa: E402
from hpaflow.config import validate_config  # noqa: E402
from hpaflow.data import ShardDataset, ShardRows  # noqa: E402
from hpaflow.demo import render, sample_label_sets, write_hpav18_jpeg, write_png  # noqa: E402
from hpaflow.io import read_rgby, reduced_factor  # noqa: E402
from hpaflow.labels import encode  # noqa: E402
from hpaflow.layout import COLORS  # noqa: E402
from hpaflow.shards import COMPRESSIONS, ShardSpec, one_thread_each, write_shard  # noqa: E402
from hpaflow.staging import staged  # noqa: E402
from hpaflow.thresholds import ThresholdSettings, fit  # noqa: E402
from hpaflow.transforms import COLOR_MATRICES, MEAN, STD  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def rate(n: int, fn, *args, repeat: int = 1) -> float:
    """Items per second of fn(*args) over n items, best of `repeat` runs (the least disturbed)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return n / best


def make_images(d: Path, n: int, side: int, fmt: str) -> tuple[list[str], np.ndarray]:
    """n synthetic fields drawn at 512 px, written at `side` in format fmt."""
    d.mkdir(parents=True, exist_ok=True)
    sets = sample_label_sets(n, np.random.default_rng(0))
    ids = [f"img{i:05d}" for i in range(n)]
    for i, (image_id, labels) in enumerate(zip(ids, sets)):
        rgby = render(labels, 512, np.random.default_rng(i))
        if side != 512:
            rgby = cv2.resize(rgby, (side, side), interpolation=cv2.INTER_LINEAR)
        if fmt == "png":
            write_png(d, image_id, rgby)
        elif fmt == "tiff":  # full-size release style: 16-bit
            for c, color in enumerate(COLORS):
                tifffile.imwrite(d / f"{image_id}_{color}.tif", rgby[:, :, c].astype(np.uint16) * 257)
        else:
            write_hpav18_jpeg(d, image_id, rgby)
    return ids, encode(sets)


PREPROCESS_THREADS = (1, 2)  # threads of the shard job and of its floor, timed alike


def decode_floor(d: Path, ids: list[str], fmt: str, threads: int = 1) -> None:
    """The floor: what the shard job must do to have each Id's pixels, and nothing more: decode the 4 channel
    files, map uint16 to uint8, resize to 512 px (INTER_AREA) and stack them (hpaflow.io.read_rgby), on
    `threads` threads as the job runs them (one cv2 and BLAS thread each); no hashing, no HDF5."""

    def read(image_id: str) -> None:
        read_rgby(d, image_id, fmt, 512)

    with one_thread_each():
        if threads == 1:
            for image_id in ids:
                read(image_id)
        else:
            with ThreadPoolExecutor(threads) as pool:
                for _ in pool.map(read, ids):
                    pass


def bench_preprocess(tmp: Path, n: int) -> dict:
    """The shard job (write_shard: decode, resize, pHash, row digests, HDF5) against its floor (decode_floor) on
    the same threads, per source format and thread count; `ratio` is the lower of the thread counts'. Floor
    and job alternate, best of 2 each (the least disturbed)."""
    out = {}
    for fmt, side in [("png", 512), ("tiff", 2048), ("jpg", 1728)]:
        d = tmp / f"src_{fmt}"
        ids, labels = make_images(d, n, side, fmt)
        spec = ShardSpec("bench", fmt, str(d), "train", 512)
        by_threads = {}
        for threads in PREPROCESS_THREADS:
            floor = shard = 0.0
            for _ in range(2):
                floor = max(floor, rate(n, decode_floor, d, ids, fmt, threads))
                (tmp / f"{fmt}.h5").unlink(missing_ok=True)  # as Snakemake does before a job: not the job's cost
                shard = max(shard, rate(n, write_shard, tmp / f"{fmt}.h5", spec, ids, labels, 0, threads))
            by_threads[str(threads)] = {
                "decode_floor_img_s": round(floor, 1),
                "shard_img_s": round(shard, 1),
                "ratio": round(shard / floor, 3),
            }
        out[fmt] = {"source_side": side, "threads": by_threads, "ratio": min(r["ratio"] for r in by_threads.values())}
    return out


def peers_augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The peers' CPU augmentation of a float (H, W, C) image: dihedral view, small affine,
    brightness/contrast, then normalisation, as their loaders did per sample."""
    view = int(rng.integers(8))
    x = np.ascontiguousarray(np.rot90(x[:, ::-1] if view >= 4 else x, view % 4))
    h, w = x.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-15, 15), rng.uniform(0.9, 1.1))
    m[:, 2] += rng.uniform(-0.05, 0.05, 2) * (w, h)
    x = cv2.warpAffine(x, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    x = np.clip(x * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05), 0, 1)
    return (x - MEAN[: x.shape[2]]) / STD[: x.shape[2]]


class PngDataset:
    """The peers' loader: decode the 4 PNGs of a sample every time, compose and augment on the CPU."""

    def __init__(self, d: Path, ids: list[str], mode: str = "gyb") -> None:
        self.d, self.ids, self.mode = d, ids, mode

    def __getitem__(self, i: int) -> np.ndarray:
        rgby = np.stack([cv2.imread(str(self.d / f"{self.ids[i]}_{c}.png"), cv2.IMREAD_GRAYSCALE) for c in COLORS], -1)
        x = peers_augment((rgby.astype(np.float32) / 255.0) @ COLOR_MATRICES[self.mode].T, np.random.default_rng(i))
        return np.ascontiguousarray(x.transpose(2, 0, 1))


def read_all(dataset, order) -> None:
    for i in order:
        dataset[int(i)]


def bench_loader(tmp: Path, n: int, quick: bool, vs_png: bool) -> dict:
    """The loader per worker (one process): ShardDataset(train=True) over random rows of a shard in the default
    codec, at 512 and 1024 px (every codec under `by_codec`), and the workers one GPU job needs; with vs_png
    (preprocess ran), its speed against the peers' loader decoding 4 PNGs per sample."""
    out: dict = {}
    if vs_png:
        d = tmp / "src_png"
        ids = sorted({p.name.rsplit("_", 1)[0] for p in d.glob("*_red.png")})[:n]
        order = np.random.default_rng(1).permutation(len(ids))
        # Ours reads uint8 RGBY and draws augmentation parameters; the float work runs batched on the
        # training device (augment.prepare_batch), which the train-step benchmark times.
        ours = ShardDataset(ShardRows.from_files([tmp / "png.h5"]), 512, train=True)
        peers = PngDataset(d, ids)
        out["ours_samples_s"] = round(rate(len(order), read_all, ours, order, repeat=2), 1)
        out["png_samples_s"] = round(rate(len(order), read_all, peers, order, repeat=2), 1)
        out["speedup"] = round(out["ours_samples_s"] / out["png_samples_s"], 2)
    defaults = schema_defaults()
    default, threads = defaults["hdf5_compression"], defaults["resources"]["train"]["threads"]
    seconds = 0.3 if quick else 1.0
    by_codec: dict = {}
    for size in CODEC_SIZES:
        field, views = next(iter(codec_fields(tmp, size, quick).items()))  # the real field where there is one
        # ShardDataset opens shards without a chunk cache, so every read decodes from the file, as a random row
        # among a dataset's thousands would: the 8 views suffice.
        rows = views
        for name in [default] if quick else list(COMPRESSIONS):
            path = tmp / f"loader_{name}_{size}.h5"
            write_rows(path, rows, name, labelled=True)
            ds = ShardDataset(ShardRows.from_files([path]), size, train=True)
            order = np.random.default_rng(size).permutation(len(rows))
            by_codec.setdefault(name, {})[str(size)] = round(cpu_rate(ds.__getitem__, order, seconds), 1)
            path.unlink()
    out |= {"field": field, "rows": len(rows), "codec": default, "by_codec": by_codec}
    out |= {"train_threads_default": threads}
    for size, need in LOADER_NEEDS.items():
        per_worker = by_codec[default][str(size)]
        out[f"loader_img_s_per_worker_{size}"] = per_worker
        out[f"loader_workers_for_{need}_img_s_{size}"] = math.ceil(need / per_worker)
    return out


# What one GPU job's loader must feed, samples/s by side: a resnet18-class network at 512 px, and at 1024 px
# (4x the pixels) about a third as many; the train default threads leave several times the workers these need.
LOADER_NEEDS = {512: 1000, 1024: 300}
CODEC_SIZES = (512, 1024)
# One real HPAv18 field (4 JPEGs of 1728 px), where this clone's shared data has it.
SAMPLE, SAMPLE_ID = REPO.parent / "shared" / "data" / "hpav18_sample", "89_B5_1"


def schema_defaults() -> dict:
    """The schema's defaults (hdf5_compression, resources), as validation fills them into the shipped config
    stripped of those keys."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for key in ("hdf5_compression", "resources"):
        config.pop(key, None)
    return validate_config(config, REPO / "config" / "schemas" / "config.schema.yaml")


def dihedral_views(rgby: np.ndarray) -> np.ndarray:
    """The 8 dihedral views of a field: 8 distinct rows of the same content, each chunk compressed on its own."""
    return np.stack([np.ascontiguousarray(np.rot90(rgby[:, ::-1] if k >= 4 else rgby, k % 4)) for k in range(8)])


@functools.cache
def codec_fields(tmp: Path, size: int, quick: bool) -> dict[str, np.ndarray]:
    """Rows (8, size, size, 4) by field kind: `real`, the HPAv18 field as the shard step reads it (its JPEGs
    reduced with INTER_AREA); `kaggle`, that field as Kaggle's 512 px PNGs are (reduced from full size to 512,
    stored losslessly) and as the shard step then reads it at `size` (enlarged above 512); `demo`, synthetic
    fields (hpaflow.demo.render at `size`). real and kaggle only where the sample is there."""
    out = {}
    if SAMPLE.is_dir():
        out["real"] = dihedral_views(read_rgby(SAMPLE, SAMPLE_ID, "jpg", size))
        kaggle = tmp / "kaggle_like"
        if not kaggle.is_dir():
            kaggle.mkdir()
            write_png(kaggle, SAMPLE_ID, read_rgby(SAMPLE, SAMPLE_ID, "jpg", 512))
        out["kaggle"] = dihedral_views(read_rgby(kaggle, SAMPLE_ID, "png", size))
    n = 2 if quick else 4  # distinct fields (1.3 s each at 1024 px), 8 // n views of each
    sets = sample_label_sets(n, np.random.default_rng(0))
    demo = [render(s, size, np.random.default_rng(k)) for k, s in enumerate(sets)]
    out["demo"] = np.concatenate([dihedral_views(f)[: 8 // n] for f in demo])
    return out


def write_rows(path: Path, rows: np.ndarray, codec: str, labelled: bool = False) -> None:
    """rows as a shard's images (one row per chunk, in `codec`); with labelled, the Ids and labels ShardRows reads."""
    with h5py.File(path, "w") as h5:
        images = h5.create_dataset(
            h5n.IMAGES, rows.shape, np.uint8, chunks=(1,) + rows.shape[1:], **COMPRESSIONS[codec]
        )
        images[...] = rows
        if labelled:
            ids = np.array([f"r{i}" for i in range(len(rows))], object)
            h5.create_dataset(h5n.IDS, data=ids, dtype=h5py.string_dtype())
            h5.create_dataset(h5n.LABELS, data=np.zeros((len(rows), 28), np.uint8))
            h5.attrs[h5n.FORMAT] = h5n.SHARD_FORMAT


def cpu_rate(fn, items, seconds: float) -> float:
    """fn's items per CPU-second of this thread, over items cycled until `seconds` of it: one core's rate, which
    other jobs on the machine disturb far less than a wall-clock rate."""
    n, t0 = 0, time.thread_time()
    while (t := time.thread_time() - t0) < seconds:
        fn(items[n % len(items)])
        n += 1
    return n / t


def bench_codecs(tmp: Path, quick: bool) -> dict:
    """Each codec of COMPRESSIONS on each field kind (codec_fields) at 512 and 1024 px: bytes of the raw rows,
    writes and random single-row reads per CPU-second of one core (no chunk cache: every read decodes)."""
    seconds = 0.3 if quick else 1.0
    fields: dict = {}
    for size in CODEC_SIZES:
        for field, rows in codec_fields(tmp, size, quick).items():
            order = np.random.default_rng(0).integers(0, len(rows), 256)
            for name in COMPRESSIONS:
                path = tmp / f"codec_{name}.h5"
                t0 = time.thread_time()
                write_rows(path, rows, name)
                write = len(rows) / (time.thread_time() - t0)
                with h5py.File(path, "r", rdcc_nbytes=0) as h5:
                    images = h5[h5n.IMAGES]
                    ratio = images.id.get_storage_size() / rows.nbytes
                    read = cpu_rate(images.__getitem__, order, seconds)
                fields.setdefault(field, {}).setdefault(str(size), {})[name] = {
                    "bytes_ratio": round(ratio, 3),
                    "write_img_s": round(write, 1),
                    "read_img_s": round(read, 1),
                }
    codec_fields.cache_clear()  # ~120 MB of rows, shared with bench_loader only
    note = None if SAMPLE.is_dir() else f"{SAMPLE} is absent: no real or Kaggle-like field, synthetic fields only"
    return {"default": schema_defaults()["hdf5_compression"], "fields": fields, "note": note}


def bench_thresholds() -> dict:
    out = {}
    rng = np.random.default_rng(0)
    for n in (10_000, 30_000, 100_000):
        y = (rng.random((n, 28)) < np.linspace(0.002, 0.4, 28)).astype(np.uint8)
        p = np.clip(y * 0.3 + rng.random((n, 28)) * 0.7, 0, 1).astype(np.float32)
        t0 = time.perf_counter()
        fit(y, p, ThresholdSettings("per_class", 0.0, 0, True))
        out[n] = round(time.perf_counter() - t0, 3)
    return out


def bench_dryrun(tmp: Path) -> dict:
    snakemake = [sys.executable, "-m", "snakemake", "-n", "--quiet", "all"]
    data = tmp / "fullscale"
    data.mkdir()
    full_scale_csvs(data)
    demo = workflow_copy(tmp / "demo_wf")
    subprocess.run(
        [sys.executable, "-m", "snakemake", "demo_data", "--cores", "1", "--quiet", "all"],
        cwd=demo,
        check=True,
        capture_output=True,
    )
    # The full-scale models are pretrained: planning hashes their weight files (sha256 decides the model),
    # so the files are there at their real sizes (sparse: zeros, hashed like any bytes). The seed recipe
    # (config/recipes/seed.yaml, the full-scale default until issue 21) is planned, so that the figure
    # compares across versions.
    weights = tmp / "pretrained"
    lay_out_weights(weights, ["resnet18", "resnet50", "se_resnet50"])
    out = {}
    for label, args in [
        (
            "fullscale",
            ["--configfile", "config/recipes/seed.yaml", "--config", f"data_root={data}", f"pretrained_dir={weights}"],
        ),
        ("demo", []),
    ]:
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            subprocess.run(snakemake + args, cwd=demo, check=True, capture_output=True)
            best = min(best, time.perf_counter() - t0)
        out[label] = round(best, 2)
    return out


def bench_train_step(quick: bool) -> list[dict]:
    out = Path(tempfile.mkdtemp()) / "train_step.json"
    size, steps = ("64", "4") if quick else ("128", "6")
    subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "train_step.py"),
            "--size",
            size,
            "--batch",
            "16",
            "--steps",
            steps,
            "--warmup",
            "2",
            "--backbones",
            "resnet18",
            "se_resnet50",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return json.loads(out.read_text())


def bench_duplicates(n: int = 117_380, check: int = 5_000, threads: int = 2) -> dict:
    """The near-duplicate search at full scale (Kaggle train + test + HPAv18 fields, 4 planes each):
    random pHashes with planted near copies, all four planes within 12 bits; exact against brute
    force on `check` fields that hold planted pairs."""
    from hpaflow.duplicates import find_pairs, hamming

    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, (n, 4), dtype=np.uint64) * np.uint64(2) + rng.integers(
        0, 2, (n, 4), dtype=np.uint64
    )
    src, dst = rng.choice(n, 6000, replace=False).reshape(2, 3000)  # planted copies: up to 12 bits flipped
    flips = rng.random((3000, 4, 64)) < rng.uniform(0, 12 / 64, (3000, 4, 1))
    hashes[dst] = hashes[src] ^ (flips * (np.uint64(1) << np.arange(64, dtype=np.uint64))).sum(-1, dtype=np.uint64)
    t0 = time.perf_counter()
    i, j, _ = find_pairs(hashes, 12, [0, 1, 2, 3], threads)
    seconds = time.perf_counter() - t0
    sub = hashes[np.concatenate([src[: check // 2], dst[: check // 2]])]  # holds check / 2 planted pairs
    d = hamming(sub[:, None, :], sub[None, :, :]).max(-1)
    bi, bj = np.nonzero(np.triu(d <= 12, 1))
    ci, cj, _ = find_pairs(sub, 12, [0, 1, 2, 3], threads)
    exact = bool(np.array_equal(np.stack([bi, bj]), np.stack([ci, cj])))
    return {
        "fields": n,
        "pairs": int(len(i)),
        "seconds": round(seconds, 2),
        "exact_on_subset": exact,
        "subset_pairs": int(len(bi)),
    }


def onnx_batches(sess, batches: list[np.ndarray]) -> None:
    for b in batches:
        sess.run(None, {"rgby": b})


def torch_batches(module, batches: list[np.ndarray]) -> None:
    import torch

    with torch.no_grad():
        for b in batches:
            module(torch.from_numpy(b))


def bench_classify(tmp: Path, quick: bool) -> dict:
    """Images/s of one resnet18 member (one TTA view) as the exported ONNX graph in onnxruntime (what
    `snakemake classify` runs) vs the same EnsembleModule's PyTorch forward, both on all CPUs, batch 8."""
    import torch

    from hpaflow.classify import session
    from hpaflow.export import EnsembleModule, export_onnx
    from hpaflow.models import build_model

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    module = EnsembleModule([(build_model("resnet18", 3), "gyb")], [0], "mean", [1.0]).eval()
    out = {}
    for size, n in [(64, 64 if quick else 256), (512, 8 if quick else 32)]:
        path = tmp / f"resnet18_{size}.onnx"
        export_onnx(module, size, path)
        sess = session(str(path), threads)
        x = np.random.default_rng(0).integers(0, 256, (n, 4, size, size), dtype=np.uint8)
        batches = [x[i : i + 8] for i in range(0, n, 8)]

        onnx_batches(sess, batches), torch_batches(module, batches)  # warm-up
        o, t = rate(n, onnx_batches, sess, batches, repeat=2), rate(n, torch_batches, module, batches, repeat=2)
        out[size] = {"onnx_img_s": round(o, 1), "torch_img_s": round(t, 1), "ratio": round(o / t, 2)}
    return out


def read_jpegs(d: Path, ids: list[str], size: int, reduced: bool) -> None:
    for image_id in ids:
        read_rgby(d, image_id, "jpg", size, reduced_decode=reduced)


def bench_jpeg_reduced(tmp: Path, n: int) -> dict:
    """HPAv18 JPEGs (the real 1728 px field of tests/data, synthetic 1728 and 2048 px ones) read to the shard
    size through the full decode vs the scaled one (datasets[].reduced_decode): img/s, and the difference of
    the real field's planes from the full decode's, in grey levels."""
    real = REPO / "tests" / "data"
    sources = {"real_1728": (real, ["89_B5_1"] * n)}
    for side in (1728, 2048):
        d = tmp / f"jpeg_reduced_{side}"
        sources[f"synthetic_{side}"] = (d, make_images(d, n, side, "jpg")[0])
    out: dict = {}
    for name, (d, ids) in sources.items():
        for size in (512, 1024):
            full = rate(len(ids), read_jpegs, d, ids, size, False, repeat=2)
            reduced = rate(len(ids), read_jpegs, d, ids, size, True, repeat=2)
            out[f"{name}_to_{size}"] = {
                "factor": reduced_factor(int(name.rsplit("_", 1)[1]), size),
                "full_img_s": round(full, 1),
                "reduced_img_s": round(reduced, 1),
                "speedup": round(reduced / full, 2),
            }
    for size in (256, 512, 1024):  # 1/4, 1/2 and full scale
        full = read_rgby(real, "89_B5_1", "jpg", size).astype(np.int16)
        diff = np.abs(read_rgby(real, "89_B5_1", "jpg", size, reduced_decode=True) - full).reshape(-1, 4)
        out[f"real_diff_{size}"] = {"mean_rgby": diff.mean(0).round(3).tolist(), "max_rgby": diff.max(0).tolist()}
    return out


def bench_stage(tmp: Path, quick: bool) -> dict:
    """stage_shards: the copy rate of shard files (random uint8 rows, 1 MB each) into a node folder, both
    within this machine's /tmp (the page cache makes it an upper bound of a real shared-to-local copy)."""
    src = tmp / "stage_shared"
    src.mkdir(exist_ok=True)
    rows, n_files = 64, 4 if quick else 8  # 256 or 512 MB
    rng = np.random.default_rng(0)
    files = []
    for k in range(n_files):
        f = src / f"{k}.h5"
        with h5py.File(f, "w") as h5:
            h5.create_dataset(
                "images", data=rng.integers(0, 256, (rows, 512, 512, 4), np.uint8), chunks=(1, 512, 512, 4)
            )
        files.append(str(f))
    node = tmp / "stage_node"
    node.mkdir(exist_ok=True)
    total = sum(os.path.getsize(f) for f in files)
    t0 = time.perf_counter()
    with staged(files, str(node), margin=0) as local:
        seconds = time.perf_counter() - t0
        copied = local != files  # no room: the shared copy, no figure
    return {
        "files": n_files,
        "mb": round(total / 1e6, 1),
        "seconds": round(seconds, 2),
        "copied": copied,
        "mb_s": round(total / 1e6 / seconds, 1) if copied else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer images (under 5 minutes on 2 cores)")
    ap.add_argument("--images", type=int, help="images per preprocessing benchmark (default 24 quick, 96 full)")
    ap.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=[
            "preprocess",
            "loader",
            "thresholds",
            "dryrun",
            "train",
            "classify",
            "duplicates",
            "recipes",
            "jpeg_reduced",
            "stage",
            "codecs",
        ],
    )
    ap.add_argument("--recipes", nargs="*", help="recipes of config/recipes to cost (default: all)")
    ap.add_argument(
        "--recipe-scale", type=float, help="side factor of the recipes' step timings (default 0.25 quick, else 1)"
    )
    ap.add_argument("--out", default="results/benchmarks.json")
    args = ap.parse_args()
    n = args.images or (24 if args.quick else 96)
    res: dict = {"quick": args.quick, "images": n, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        if "preprocess" not in args.skip:
            res["preprocess"] = bench_preprocess(tmp, n)
            res |= {f"shard_{fmt}_ratio": r["ratio"] for fmt, r in res["preprocess"].items()}
        if "loader" not in args.skip:
            res["loader"] = bench_loader(tmp, n, args.quick, vs_png="preprocess" not in args.skip)
            res |= {k: v for k, v in res["loader"].items() if k.startswith("loader_")}
            if "speedup" in res["loader"]:
                res["loader_speedup_vs_png"] = res["loader"]["speedup"]
        if "codecs" not in args.skip:
            res["codecs"] = bench_codecs(tmp, args.quick)
            table, default = res["codecs"]["fields"], res["codecs"]["default"]
            res["codec_read_img_s_512"] = table["real" if "real" in table else "demo"]["512"][default]["read_img_s"]
            if "real" in table:
                res["codec_bytes_ratio_real"] = table["real"]["512"][default]["bytes_ratio"]
        if "thresholds" not in args.skip:
            res["thresholds_seconds"] = bench_thresholds()
            res["thresholds_100k_seconds"] = res["thresholds_seconds"][100_000]
        if "dryrun" not in args.skip:
            res["dryrun"] = bench_dryrun(tmp)
            res["dryrun_fullscale_seconds"] = res["dryrun"]["fullscale"]
            res["dryrun_demo_seconds"] = res["dryrun"]["demo"]
        if "train" not in args.skip:
            res["train_step"] = bench_train_step(args.quick)
        if "duplicates" not in args.skip:
            res["duplicates"] = bench_duplicates()
            res["duplicates_117k_seconds"] = res["duplicates"]["seconds"]
        if "classify" not in args.skip:
            res["classify"] = bench_classify(tmp, args.quick)
            res["classify_onnx_vs_torch_cpu"] = min(r["ratio"] for r in res["classify"].values())
        if "recipes" not in args.skip:
            res.update(recipe_costs(tmp, args.quick, args.recipes, step_scale=args.recipe_scale))
        if "jpeg_reduced" not in args.skip:
            res["jpeg_reduced"] = bench_jpeg_reduced(tmp, n)
            res["jpeg_reduced_speedup_512"] = res["jpeg_reduced"]["real_1728_to_512"]["speedup"]
            res["jpeg_reduced_max_diff_real"] = max(res["jpeg_reduced"]["real_diff_512"]["max_rgby"])
        if "stage" not in args.skip:
            res["stage"] = bench_stage(tmp, args.quick)
            res["stage_copy_mb_s"] = res["stage"]["mb_s"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print_table(res)


def print_table(res: dict) -> None:
    print(f"\nbenchmarks ({res['images']} images per preprocessing run, {res['cpus']} CPUs)")
    for fmt, r in res.get("preprocess", {}).items():
        for threads, t in r["threads"].items():
            print(
                f"  preprocess {fmt:<5} {r['source_side']:>5} px -> 512, {threads} thread(s): shard "
                f"{t['shard_img_s']:>7} img/s, floor (decode + resize) {t['decode_floor_img_s']:>7} img/s, "
                f"ratio {t['ratio']:.2f} (goal >= 0.85)"
            )
    if "loader" in res:
        r = res["loader"]
        if "speedup" in r:
            print(
                f"  loader: shards {r['ours_samples_s']} samples/s vs 4 PNGs per sample {r['png_samples_s']} "
                f"samples/s per worker: {r['speedup']:.1f}x (goal >= 8x)"
            )
        print(
            f"  loader per worker ({r['codec']}, {r['field']} field, per CPU-second): "
            + ", ".join(f"{size} px {r[f'loader_img_s_per_worker_{size}']} samples/s" for size in CODEC_SIZES)
            + "; workers for "
            + ", ".join(
                f"{need:,}/s at {size} px: {r[f'loader_workers_for_{need}_img_s_{size}']}"
                for size, need in LOADER_NEEDS.items()
            )
            + f"; train default threads {r['train_threads_default']} ({r['train_threads_default'] - 1} workers)"
        )
        for name, by_size in r["by_codec"].items():
            print(f"    {name:<15}" + "".join(f"{size:>6} px {v:>7} samples/s" for size, v in by_size.items()))
    if "codecs" in res:
        c = res["codecs"]
        cols = [(field, size) for field, sizes in c["fields"].items() for size in sizes]
        print(f"  codecs (default {c['default']}): bytes of raw / random single-row reads per core, img/s")
        print("    " + " " * 15 + "".join(f"{field + ' ' + size:>16}" for field, size in cols))
        for name in COMPRESSIONS:
            cells = [c["fields"][field][size][name] for field, size in cols]
            print(f"    {name:<15}" + "".join(f"{x['bytes_ratio']:>8.3f} {x['read_img_s']:>7.0f}" for x in cells))
        if c["note"]:
            print(f"    {c['note']}")
    if "thresholds_seconds" in res:
        t = res["thresholds_seconds"]
        print(
            "  per-class thresholds on N x 28: "
            + ", ".join(f"{k:,}: {v} s" for k, v in t.items())
            + " (goal < 1 s at 100,000)"
        )
    if "dryrun" in res:
        print(f"  snakemake -n: full scale {res['dryrun']['fullscale']} s, demo {res['dryrun']['demo']} s")
    if "duplicates" in res:
        r = res["duplicates"]
        print(
            f"  near-duplicate search, {r['fields']:,} fields x 4 planes: {r['seconds']} s, {r['pairs']} pairs "
            f"(goal < 60 s); exact vs brute force on a subset: {r['exact_on_subset']}"
        )
    for size, r in res.get("classify", {}).items():
        print(
            f"  classify resnet18 {size} px, CPU: onnxruntime {r['onnx_img_s']} img/s vs PyTorch "
            f"{r['torch_img_s']} img/s: {r['ratio']:.2f} (goal >= 1.0)"
        )
    for r in res.get("train_step", []):
        print(
            f"  train step {r['backbone']} {r['size']} px {r['device']} {r['precision']}: "
            f"{r['in_memory_img_s']} img/s in memory, {r['loader_img_s']} with the loader"
        )
    for name, r in res.get("jpeg_reduced", {}).items():
        if "speedup" in r:
            print(
                f"  HPAv18 jpg {name.replace('_to_', ' -> ')} px (1/{r['factor']} decode): full {r['full_img_s']} "
                f"img/s, reduced {r['reduced_img_s']} img/s: {r['speedup']:.2f}x"
            )
        else:
            print(
                f"  reduced decode vs full, real field {name[10:]} px: mean |diff| RGBY {r['mean_rgby']}, "
                f"max {r['max_rgby']} grey levels"
            )
    if "stage" in res:
        r = res["stage"]
        print(
            f"  stage_shards copy, {r['files']} files, {r['mb']} MB within /tmp: "
            + (f"{r['mb_s']} MB/s" if r["copied"] else "not copied (no room)")
        )
    if res.get("recipe_jobs"):
        print("  recipes (config/recipes; benchmarks/recipe_cost.py):")
        print("\n".join("    " + line for line in cost_table(res).splitlines()))


if __name__ == "__main__":
    main()
