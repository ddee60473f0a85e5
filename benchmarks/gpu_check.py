"""GPU check: the CUDA path of training and prediction, and its throughput, in one command.

    python benchmarks/gpu_check.py                # on a CUDA machine: <= 8 minutes on one H100
    python benchmarks/gpu_check.py --device cpu --quick   # the same code on the CPU, tiny (tests)

(a) a demo-sized model (resnet18, 64 px, 512 synthetic fields in real shards) trained 2 epochs
    through the real `train()` (bf16 autocast, channels_last, batch augmentation on the GPU, real
    loader), then predicted with 8 TTA views through the real `run_predict`;
(b) the same weights predicted on the CPU in fp32: max abs probability difference to CUDA bf16,
    and label agreement at per-class thresholds fitted on the CUDA out-of-fold probabilities;
(c) train-step images/s at 512 px for resnet18, resnet50, se_resnet50, fp32 vs bf16, real loader
    (8 workers) vs batches in memory;
(d) predict images/s at 512 px with 8 TTA views, per backbone;
(e) each recipe of config/recipes/ (benchmarks/recipe_cost.py): every member's training-step images/s at its
    train size (crop_size, else image_size) and batch_size, and its inference images/s at its validation
    size (image_size, batch_size) and predict size (crop_size with predict.crops, else image_size;
    predict.batch_size), in the training's precision (bf16 on CUDA, channels_last), batches in memory;
    then the projected GPU hours of each recipe (recipe_cost.gpu_hours: training, validation each epoch,
    prediction with its TTA views x crops) over the rows of the competition's csvs.
    `--recipes-only` runs (e) alone; `--recipes NAME...` some of them; `--no-recipes` leaves (e) out.
Writes results/gpu_check.json and prints a table. Needs torch, torchvision, h5py, opencv, pandas,
numpy, tifffile, pretrainedmodels with munch and six (se_resnet50, se_resnext50_32x4d, xception), timm
(timm/<name>), PyYAML and jsonschema (the schema fills the defaults of the configs of (a) and (e)); no
Snakemake. Without CUDA (and without --device cpu) it prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch
from recipe_cost import (
    RECIPES,
    SCHEMA,
    SHARED,
    Member,
    Recipe,
    StepTimer,
    dataset_rows,
    load_recipes,
    recipe_gpu_hours,
)
from train_step import step_rates

# This clone's package, whatever venv runs the benchmark (a venv may serve several clones).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow_scripts"))

from hpaflow.data import ShardDataset, ShardRows  # noqa: E402
from hpaflow.demo import render, sample_label_sets  # noqa: E402
from hpaflow.labels import encode  # noqa: E402
from hpaflow.layout import COLORS  # noqa: E402
from hpaflow.models import build_model  # noqa: E402
from hpaflow.predict import PredictSettings, predict_probs, run_predict  # noqa: E402
from hpaflow.runtime import autocast_dtype, pick_device  # noqa: E402
from hpaflow.shards import ShardSpec, write_shard  # noqa: E402
from hpaflow.thresholds import ThresholdSettings, apply, fit  # noqa: E402
from hpaflow.train import TrainConfig, train  # noqa: E402
from hpaflow.transforms import CHANNELS  # noqa: E402

BACKBONES = ["resnet18", "resnet50", "se_resnet50"]
KINDS = ("train", "validate", "predict")
TTA = list(range(8))


def demo_shards(tmp: Path, n: int, size: int) -> tuple[list[str], str]:
    """n synthetic fields as Kaggle PNGs, through the real shard writer; two folds by index."""
    rng = np.random.default_rng(0)
    sets = sample_label_sets(n, rng)
    images = tmp / "images"
    images.mkdir()
    ids = [f"f{i:05d}" for i in range(n)]
    for i, (image_id, labels) in enumerate(zip(ids, sets)):
        rgby = render(labels, size, np.random.default_rng(i))
        for c, color in enumerate(COLORS):
            cv2.imwrite(str(images / f"{image_id}_{color}.png"), rgby[:, :, c])
    shard = tmp / "train.h5"
    write_shard(shard, ShardSpec("demo", "png", str(images), "train", size), ids, encode(sets))
    folds = tmp / "folds.csv"
    folds.write_text("Id,dataset,fold\n" + "".join(f"{i},demo,{k % 2}\n" for k, i in enumerate(ids)))
    return [str(shard)], str(folds)


def check_config(device: str, size: int, epochs: int, batch: int, views: list[int]) -> dict:
    """The check's workflow config, validated against the schema, which fills every other key's default."""
    from hpaflow.config import validate_config  # jsonschema: imported only where used

    config = {
        "data_root": ".",
        "datasets": [{"name": "demo", "format": "png", "images": "images", "labels": "train.csv", "role": "train"}],
        "image_size": size,
        "seed": 0,
        "device": device,
        "models": [
            {
                "name": "check",
                "backbone": "resnet18",
                "image_size": size,
                "color_mode": "gyb",
                "pretrained": False,
                "epochs": epochs,
                "batch_size": batch,
                "lr": 2e-3,
                "weight_decay": 1e-4,
                "optimizer": "adamw",
                "scheduler": "cosine",
                "loss": "bce",
                "sampler": "uniform",
                "augment": True,
            }
        ],
        "predict": {"tta_views": views, "tta_combine": "mean", "batch_size": batch},
    }
    return validate_config(config, SCHEMA)


def predict_file(
    best: Path, shards: list[str], folds: str, out: Path, settings: PredictSettings
) -> tuple[np.ndarray, np.ndarray, float]:
    """Out-of-fold (fold 1, the one the model was validated on) probabilities and labels through
    run_predict, and its seconds."""
    t0 = time.perf_counter()
    run_predict(str(best), shards, [], folds, 1, str(out), settings)
    seconds = time.perf_counter() - t0
    with h5py.File(out, "r") as h5:
        return h5["oof/probs"][...], h5["oof/labels"][...], seconds


def train_and_compare(
    tmp: Path, device: str, n: int, size: int, epochs: int, batch: int, threads: int, views: list[int]
) -> dict:
    """(a) and (b): train on `device`, predict there and on the CPU in fp32, compare."""
    shards, folds = demo_shards(tmp, n, size)
    config = check_config(device, size, epochs, batch, views)
    cfg = TrainConfig.from_config(config, config["models"][0], 1, threads)
    t0 = time.perf_counter()
    result = train(cfg, shards, folds, tmp / "model")
    train_s = time.perf_counter() - t0
    best = tmp / "model" / "best.pt"
    on_device = PredictSettings.from_config(config, threads)
    on_cpu = PredictSettings.from_config({**config, "device": "cpu"}, threads)
    p_dev, y, dev_s = predict_file(best, shards, folds, tmp / "dev.h5", on_device)
    p_cpu, _, cpu_s = predict_file(best, shards, folds, tmp / "cpu.h5", on_cpu)
    t = fit(y, p_dev, ThresholdSettings("per_class", 0.0, 0, True))
    agree = apply(p_dev, t, True) == apply(p_cpu, t, True)
    return {
        "train": {
            "device": device,
            "precision": str(autocast_dtype(torch.device(device)) or "float32"),
            "images": n // 2,
            "epochs": epochs,
            "seconds": round(train_s, 1),
            "best_val_f1": round(result["best_f1"], 4),
            "images_per_s_last_epoch": round(result["history"][-1]["images_per_s"], 1),
        },
        "predict": {"views": views, "rows": len(y), "seconds_device": round(dev_s, 2), "seconds_cpu": round(cpu_s, 2)},
        "cpu_vs_device": {
            "max_abs_prob_diff": float(np.abs(p_dev - p_cpu).max()),
            "label_agreement": float(agree.mean()),
            "rows_identical": float(agree.all(1).mean()),
        },
    }


def predict_rates(
    backbones: list[str], size: int, n: int, batch: int, workers: int, device: torch.device, views: list[int]
) -> list[dict]:
    """(d): images/s of predict_probs (TTA views, autocast as in predict) over a real shard loader."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        shards, _ = demo_shards(Path(tmp), n, size)
        ds = ShardDataset(ShardRows.from_files(shards), size)
        for backbone in backbones:
            model = build_model(backbone, CHANNELS["gyb"], pretrained=False).to(device)
            if device.type == "cuda":
                model = model.to(memory_format=torch.channels_last)
            dl = torch.utils.data.DataLoader(
                ds, batch_size=batch, num_workers=workers, pin_memory=device.type == "cuda"
            )
            predict_probs(model, dl, device, "gyb", tuple(views))  # warm-up: cuDNN autotuning, workers
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            predict_probs(model, dl, device, "gyb", tuple(views))
            seconds = time.perf_counter() - t0
            rows.append(
                {
                    "backbone": backbone,
                    "size": size,
                    "views": len(views),
                    "images": n,
                    "images_per_s": round(n / seconds, 1),
                    "views_per_s": round(n * len(views) / seconds, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def img_s(member: Member, size: int, batch: int, device: torch.device, train: bool, quick: bool) -> tuple[float, int]:
    """Images/s of the member's training step (or inference batch) at `size`, and the batch it ran: the
    configured one, halved until it fits the device's memory."""
    dtype = autocast_dtype(device)
    while True:
        try:
            timer = StepTimer(member, size, batch, device, dtype, train, warmup=1 if quick else 3)
            seconds = timer.seconds(steps=1 if quick else (10 if train else 5), repeat=1)
            return batch / seconds, batch
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            batch //= 2
        finally:
            timer = None
            if device.type == "cuda":
                torch.cuda.empty_cache()


def workloads(recipe: Recipe, m: Member) -> dict[str, tuple[int, int]]:
    """What the member's jobs run, as (side, batch): training steps on train_size crops (or images) in
    batch_size; validation of whole images in batch_size (hpaflow.train.validate); predict of
    predict_size crops (or images) in predict.batch_size."""
    return {
        "train": (m.train_size, m.batch_size),
        "validate": (m.image_size, m.batch_size),
        "predict": (m.predict_size(recipe.crops), recipe.config["predict"]["batch_size"]),
    }


def recipe_rates(recipes: list[Recipe], device: torch.device, quick: bool) -> dict:
    """(e): {recipe: {member: {train_img_s, validate_img_s, predict_img_s, their sides and batches}}}; what
    two members share (network, kind, side, batch) is measured once. quick: 96 px (Inception's least side
    is about 75), batch 2, one step."""
    cache: dict[tuple, tuple[float, int]] = {}
    out: dict = {}
    for r in recipes:
        out[r.name] = {}
        for m in r.members:
            row = {}
            for kind, (size, batch) in workloads(r, m).items():
                size, batch = (96, 2) if quick else (size, batch)
                key = (m.arch, kind == "train", size, batch)
                if key not in cache:
                    cache[key] = img_s(m, size, batch, device, kind == "train", quick)
                rate, used = cache[key]
                row |= {f"{kind}_img_s": float(f"{rate:.4g}"), f"{kind}_size": size, f"{kind}_batch": used}
            out[r.name][m.name] = row
            print(json.dumps({"recipe": r.name, "member": m.name, **row}), flush=True)
    return out


def recipe_projection(recipes: list[Recipe], rates: dict) -> dict:
    """{recipe: recipe_cost.recipe_gpu_hours} over the rows of ../shared's csvs (their known counts where
    this machine lacks them)."""
    return {r.name: recipe_gpu_hours(r, dataset_rows(r, SHARED / "hpa"), rates[r.name]) for r in recipes}


def run_checks(device: torch.device, quick: bool, recipes: list[Recipe] | None = None, basic: bool = True) -> dict:
    """(a)-(d) unless not `basic`, and (e) for `recipes`."""
    out = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__}
    if basic:
        out.update(basic_checks(device, quick))
    if recipes:
        out["recipe_precision"] = str(autocast_dtype(device) or "float32")
        out["recipe_rates"] = recipe_rates(recipes, device, quick)
        out["recipe_gpu_hours"] = recipe_projection(recipes, out["recipe_rates"])
    return out


def basic_checks(device: torch.device, quick: bool) -> dict:
    small = (
        dict(n=24, size=32, epochs=1, batch=8, threads=1, views=[0, 5])
        if quick
        else dict(n=512, size=64, epochs=2, batch=32, threads=8, views=TTA)
    )
    big = (
        dict(size=32, batch=4, steps=1, warmup=1, workers=0)
        if quick
        else dict(size=512, batch=32, steps=20, warmup=5, workers=8)
    )
    backbones = ["resnet18"] if quick else BACKBONES
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        out.update(train_and_compare(Path(tmp), device.type, **small))
    precisions = [("fp32", None), ("bf16", torch.bfloat16)] if device.type == "cuda" else [("fp32", None)]
    out["train_step"] = step_rates(
        backbones, big["size"], big["batch"], big["steps"], big["warmup"], big["workers"], device, precisions=precisions
    )
    out["predict_tta"] = predict_rates(
        backbones,
        big["size"],
        4 * big["batch"],
        2 * big["batch"],
        big["workers"],
        device,
        small["views"] if quick else TTA,
    )
    return out


def table(r: dict) -> str:
    lines = [f"GPU check on {r['device']} (torch {r['torch']})"]
    if "train" in r:
        lines += basic_table(r)
    if "recipe_rates" in r:
        lines += recipe_table(r)
    return "\n".join(lines)


def basic_table(r: dict) -> list[str]:
    t, p, c = r["train"], r["predict"], r["cpu_vs_device"]
    lines = [
        f"(a) train resnet18 {t['images']} img x {t['epochs']} epochs on {t['device']} ({t['precision']}): "
        f"{t['seconds']} s, {t['images_per_s_last_epoch']} img/s, best val macro F1 {t['best_val_f1']}; "
        f"predict {p['rows']} rows x {len(p['views'])} TTA views: {p['seconds_device']} s "
        f"(CPU fp32 {p['seconds_cpu']} s)",
        f"(b) CPU fp32 vs {t['device']}: max |p diff| {c['max_abs_prob_diff']:.2e}, label agreement "
        f"{c['label_agreement']:.5f}, identical rows {c['rows_identical']:.4f}",
        "(c) train step img/s      precision   in memory   loader   loader/mem",
    ]
    lines += [
        f"    {s['backbone']:<20}{s['precision']:<12}{s['in_memory_img_s']:>10}{s['loader_img_s']:>9}"
        f"{s['loader_fraction']:>12}  ({s['size']} px, batch {s['batch']}, {s['workers']} workers)"
        for s in r["train_step"]
    ]
    lines.append("(d) predict with TTA       img/s   views/s")
    lines += [
        f"    {s['backbone']:<20}{s['images_per_s']:>8}{s['views_per_s']:>10}  ({s['size']} px, {s['views']} views)"
        for s in r["predict_tta"]
    ]
    return lines


def recipe_table(r: dict) -> list[str]:
    lines = [f"(e) recipes ({r['recipe_precision']}): img/s train / validate / predict (side, batch); GPU hours"]
    for recipe, members in r["recipe_rates"].items():
        hours = r["recipe_gpu_hours"][recipe]
        for name, m in members.items():
            h = hours[name]
            lines.append(
                f"    {recipe}/{name:<22}"
                + " / ".join(f"{m[k + '_img_s']} ({m[k + '_size']}, {m[k + '_batch']})" for k in KINDS)
                + f"; {h['train']} + {h['validate']} + {h['predict']} = {h['total']} h"
            )
        lines.append(f"    {recipe}: {hours['total']} GPU hours in all")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (the CPU test)")
    ap.add_argument("--out", default="results/gpu_check.json")
    ap.add_argument("--recipes", nargs="*", help="recipes (file stems) for (e) (default: all of them)")
    ap.add_argument("--recipe-dir", default=str(RECIPES), help="where the recipes are (default config/recipes)")
    ap.add_argument("--no-recipes", action="store_true", help="leave out (e)")
    ap.add_argument("--recipes-only", action="store_true", help="(e) alone")
    args = ap.parse_args(argv)
    if args.device != "cpu" and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU (torch {torch.__version__} sees none); nothing measured")
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    recipes = None if args.no_recipes else load_recipes(args.recipe_dir, args.recipes)
    result = run_checks(pick_device(args.device), args.quick, recipes, basic=not args.recipes_only)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
