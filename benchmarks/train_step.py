"""Training-step throughput (images/s) per backbone: real HDF5 loader vs batches already in memory,
fp32 vs mixed precision (+ channels_last on CUDA). The gap between the two columns is the loader's cost.

    .venv/bin/python benchmarks/train_step.py --size 64 --backbones resnet18          # CPU, quick
    python benchmarks/train_step.py --size 512 --batch 32 --workers 8 --steps 30     # on a GPU node

Makes its own shard of synthetic demo fields; prints a table and writes results/benchmarks/train_step.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# This clone's package, whatever venv runs the benchmark (a venv may serve several clones).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow_scripts"))

from hpaflow.augment import prepare_batch  # noqa: E402
from hpaflow.data import ShardDataset, ShardRows  # noqa: E402
from hpaflow.losses import LOSSES  # noqa: E402
from hpaflow.models import build_model  # noqa: E402
from hpaflow.runtime import autocast_dtype, pick_device  # noqa: E402
from hpaflow.train import train_step  # noqa: E402
from hpaflow.transforms import CHANNELS  # noqa: E402


def make_shard(path: Path, n: int, size: int) -> None:
    import h5py

    from hpaflow import h5names as h5n
    from hpaflow.demo import render, sample_label_sets
    from hpaflow.labels import encode

    rng = np.random.default_rng(0)
    sets = sample_label_sets(n, rng)
    with h5py.File(path, "w") as h5:
        img = h5.create_dataset("images", (n, size, size, 4), np.uint8, chunks=(1, size, size, 4))
        for i, s in enumerate(sets):
            img[i] = render(s, size, np.random.default_rng(i))
        h5.create_dataset("ids", data=np.array([f"id{i}" for i in range(n)], dtype=object), dtype=h5py.string_dtype())
        h5.create_dataset("labels", data=encode(sets))
        h5.attrs[h5n.FORMAT] = h5n.SHARD_FORMAT


def run(model, batches, device, dtype, steps: int, warmup: int, mode: str) -> float:
    """Images/s over `steps` steps after `warmup`, with the device synchronised before each clock read."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    loss_fn = LOSSES["bce"]
    it = iter(batches)
    n = 0
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, n = time.perf_counter(), 0
        rgby, params, y = next(it)
        x, y = prepare_batch(rgby, mode, device, params), y.to(device, non_blocking=True)
        train_step(model, x, y, loss_fn, opt, scaler, dtype)
        n += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def step_rates(
    backbones: list[str],
    size: int,
    batch: int,
    steps: int,
    warmup: int,
    workers: int,
    device: torch.device,
    color_mode: str = "gyb",
    precisions=None,
) -> list[dict]:
    """Training images/s per backbone x precision: real loader over a shard vs batches in memory."""
    n_images = batch * (steps + warmup)
    if precisions is None:
        precisions = [("fp32", None)] + ([("mixed", autocast_dtype(device))] if device.type == "cuda" else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "bench.h5"
        make_shard(shard, min(n_images, 512), size)
        ds = ShardDataset(ShardRows.from_files([shard]), size, train=True)
        sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=n_images)
        loader = torch.utils.data.DataLoader(
            ds,
            batch_size=batch,
            sampler=sampler,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
        )
        # The same first batch over and over, already read: what the step costs without the loader.
        first = next(iter(torch.utils.data.DataLoader(ds, batch_size=batch)))
        in_memory = [first] * (steps + warmup)
        for backbone in backbones:
            for label, dtype in precisions:
                torch.manual_seed(0)
                model = build_model(backbone, CHANNELS[color_mode], pretrained=False).to(device)
                if dtype is not None:  # the training loop uses channels_last with mixed precision on CUDA
                    model = model.to(memory_format=torch.channels_last)
                model.train()
                mem = run(model, in_memory, device, dtype, steps, warmup, color_mode)
                real = run(model, loader, device, dtype, steps, warmup, color_mode)
                rows.append(
                    {
                        "backbone": backbone,
                        "size": size,
                        "batch": batch,
                        "device": str(device),
                        "precision": label if dtype is None else f"{label} ({str(dtype)[6:]})",
                        "in_memory_img_s": round(mem, 1),
                        "loader_img_s": round(real, 1),
                        "loader_fraction": round(real / mem, 3),
                        "workers": workers,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["resnet18", "resnet50", "se_resnet50"])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--color-mode", default="gyb")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="results/benchmarks/train_step.json")
    args = ap.parse_args()

    device = pick_device(args.device)
    rows = step_rates(
        args.backbones, args.size, args.batch, args.steps, args.warmup, args.workers, device, args.color_mode
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n{name}, {args.size} px, batch {args.batch}, {args.workers} loader workers")
    print(f"{'backbone':<20}{'precision':<18}{'in-memory img/s':>16}{'loader img/s':>14}{'loader/mem':>11}")
    for r in rows:
        print(
            f"{r['backbone']:<20}{r['precision']:<18}{r['in_memory_img_s']:>16}{r['loader_img_s']:>14}"
            f"{r['loader_fraction']:>11}"
        )


if __name__ == "__main__":
    main()
