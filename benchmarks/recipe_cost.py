"""What each recipe (config/recipes/*.yaml) costs before it runs: jobs, shard disk, training cost per member.

    .venv/bin/python benchmarks/recipe_cost.py                    # full size: ~8 minutes on 2 cores
    .venv/bin/python benchmarks/recipe_cost.py --quick            # step times at 1/4 of the side (~1.5 minutes)
    .venv/bin/python benchmarks/recipe_cost.py --table results/recipe_cost.json [--gpu results/gpu_check.json]

- jobs: `snakemake -n` of each recipe with the real csvs of ../shared/data/hpa (stand-ins with the same row
  counts where absent) and each member's ImageNet weight file laid out (sparse), counted per rule;
- shard disk: bytes per image measured by writing shards with hpaflow.shards (the real HPAv18 field of
  ../shared/data/hpav18_sample, and a synthetic demo field) at each recipe's image_size and every codec,
  times the rows its csvs give, plus a per-file overhead per shard;
- training cost: CPU seconds of one training step (forward, backward, optimiser step; batch 2, fp32, one
  thread) of each member at its train size (crop_size, else image_size), over the same step of resnet18 at
  512 px (`recipe_step_ratios`).
`--table` prints the markdown cost table (docs/recipes.md, benchmarks/README.md) from such a JSON, with the
projected GPU hours where a gpu_check.json (benchmarks/gpu_check.py on a GPU machine) holds them.
The projection maths (`gpu_hours`) and the member list (`load_recipe`) are shared with gpu_check.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# This clone's package, whatever venv runs the benchmark (a venv may serve several clones).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow_scripts"))

from hpaflow.shards import COMPRESSIONS  # noqa: E402
from hpaflow.transforms import CHANNELS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "config" / "recipes"
SCHEMA = REPO / "config" / "schemas" / "config.schema.yaml"
SHARED = REPO.parent / "shared" / "data"
REAL_FIELD = ("hpav18_sample", "89_B5_1")  # one real HPAv18 field, 1728 px JPEGs (../shared/data/README.md)
CODECS = tuple(COMPRESSIONS)  # every hdf5_compression codec
REFERENCE = ("resnet18", 512)  # the step every member's step time is divided by
STEP_BATCH = 2
# Rows of the competition's csvs (../shared/data/README.md): where a machine lacks the files (the GPU one).
KNOWN_ROWS = {"train.csv": 31_072, "sample_submission.csv": 11_702, "HPAv18RBGY_wodpl.csv": 74_606}


@dataclass(frozen=True)
class Member:
    """A recipe's model entry, as far as its cost goes (schema defaults filled)."""

    name: str
    backbone: str
    head: str
    head_hidden: int
    dropout: float
    color_mode: str
    image_size: int  # input side (the shards' row size unless the entry sets it)
    crop_size: int | None
    epochs: int
    batch_size: int
    average_last: int = 1

    @property
    def train_size(self) -> int:
        return self.crop_size or self.image_size

    def predict_size(self, crops: int) -> int:
        """Side of what predict scores: crops of crop_size when predict.crops > 0, else the whole image."""
        return self.crop_size if crops and self.crop_size else self.image_size

    def crops_scored(self, crops: int) -> int:
        return crops if crops and self.crop_size else 1

    @property
    def arch(self) -> tuple:
        """What the step time depends on (members that share it are timed once)."""
        return (self.backbone, self.head, self.head_hidden, self.dropout, CHANNELS[self.color_mode])


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    config: dict  # validated, defaults filled
    members: tuple[Member, ...]

    @property
    def folds(self) -> int:
        return self.config["n_folds"]

    @property
    def views(self) -> int:
        return len(self.config["predict"]["tta_views"])

    @property
    def crops(self) -> int:
        return self.config["predict"]["crops"]

    @property
    def shard_geometry(self) -> tuple[int, str, int | None]:
        c = self.config
        return c["image_size"], c["tiling"], c.get("tile_size")


def load_recipe(path: str | Path) -> Recipe:
    """A recipe config validated against the schema (which fills the defaults), and its members."""
    import yaml

    from hpaflow.config import validate_config  # jsonschema: only where recipes are read

    path = Path(path)
    config = validate_config(yaml.safe_load(path.read_text()), SCHEMA)
    rows = config["tile_size"] if config["tiling"] == "grid" else config["image_size"]
    members = tuple(
        Member(
            name=m["name"],
            backbone=m["backbone"],
            head=m["head"],
            head_hidden=m["head_hidden"],
            dropout=m["dropout"],
            color_mode=m["color_mode"],
            image_size=m.get("image_size") or rows,
            crop_size=m["crop_size"],
            epochs=m["epochs"],
            batch_size=m["batch_size"],
            average_last=m["average_last"],
        )
        for m in config["models"]
    )
    return Recipe(path.stem, path, config, members)


def load_recipes(folder: str | Path = RECIPES, only: list[str] | None = None) -> list[Recipe]:
    paths = sorted(Path(folder).glob("*.yaml"))
    if only:
        missing = sorted(set(only) - {p.stem for p in paths})
        if missing:
            raise SystemExit(f"recipes not found in {folder}: {', '.join(missing)}")
        paths = [p for p in paths if p.stem in only]
    return [load_recipe(p) for p in paths]


# ---------------------------------------------------------------------------------------------- rows and jobs


def csv_rows(path: str | Path) -> int:
    """Data rows of a csv (header excluded, blank lines ignored)."""
    with open(path, newline="") as f:
        return sum(1 for row in csv.reader(f) if row) - 1


def dataset_rows(recipe: Recipe, data_root: str | Path | None) -> dict[str, dict]:
    """Each dataset's role and rows, from its labels csv under data_root; where that is missing (or no
    data_root), the competition csv's known rows by its file name."""

    def rows(labels: str) -> int:
        path = Path(data_root or "", labels)
        if data_root is not None and path.exists():
            return csv_rows(path)
        if Path(labels).name in KNOWN_ROWS:
            return KNOWN_ROWS[Path(labels).name]
        raise FileNotFoundError(f"labels csv {path} not found, and {Path(labels).name} is none of {list(KNOWN_ROWS)}")

    return {d["name"]: {"role": d["role"], "rows": rows(d["labels"])} for d in recipe.config["datasets"]}


def job_stats(text: str) -> dict[str, int]:
    """The last `Job stats:` table of snakemake's dry-run output -> {rule: jobs} (with `total`)."""
    at = text.rfind("Job stats:")
    if at < 0:
        raise ValueError("no 'Job stats:' table in the snakemake output:\n" + text[-2000:])
    counts: dict[str, int] = {}
    for line in text[at:].splitlines()[3:]:  # past the title, the header and its rule
        m = re.fullmatch(r"\s*(\S+)\s+(\d+)\s*", line)
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def full_scale_csvs(d: Path) -> str:
    """The three real competition csvs when ../shared has them, else stand-ins with the same row counts;
    says which."""
    if all((SHARED / "hpa" / n).exists() for n in KNOWN_ROWS):
        for n in KNOWN_ROWS:
            shutil.copy(SHARED / "hpa" / n, d / n)
        return "real"
    rng = np.random.default_rng(0)
    for name, rows in KNOWN_ROWS.items():
        col = "Predicted" if name == "sample_submission.csv" else "Target"
        lines = [f"id{name[:3]}{i},{rng.integers(28) if col == 'Target' else 0}" for i in range(rows)]
        (d / name).write_text(f"Id,{col}\n" + "\n".join(lines) + "\n")
    return "stand-in"


def workflow_copy(d: Path) -> Path:
    """The workflow's files in a folder of their own (planning writes .snakemake/ there)."""
    d.mkdir(parents=True, exist_ok=True)
    for name in ["Snakefile", "rules", "workflow_scripts", "config", "envs"]:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, d / name)
    return d


# The hub files of the seed's backbones at their sizes in bytes (planning hashes each, so its time follows the
# size); other backbones' files are laid out at 1 MB: the recipe dry runs count jobs, they are not timed.
WEIGHT_BYTES = {
    "resnet18-5c106cde.pth": 46_827_520,
    "resnet50-19c8e357.pth": 102_502_400,
    "se_resnet50-ce0d4300.pth": 112_611_220,
}


def lay_out_weights(d: Path, backbones: list[str]) -> None:
    """Each backbone's preferred weight file in d, sparse (zeros hash like any bytes)."""
    from hpaflow.weights import weight_files

    for backbone in backbones:
        p = d / weight_files(backbone).files[0]
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "wb") as f:
                f.truncate(WEIGHT_BYTES.get(p.name, 1 << 20))


def plan_jobs(recipe: Recipe, workflow: Path, data: Path, weights: Path) -> dict[str, int]:
    """`snakemake -n` of the recipe against data (csvs) and weights -> jobs per rule."""
    backbones = [m["backbone"] for m in recipe.config["models"] if m["pretrained"]]
    transfer = recipe.config.get("transfer", {})
    if transfer.get("enabled") and transfer.get("pretrained"):  # the embed job's backbone (label transfer)
        backbones.append(transfer["backbone"])
    lay_out_weights(weights, backbones)
    cmd = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--configfile", str(recipe.path)]
    cmd += ["--config", f"data_root={data}", f"pretrained_dir={weights}"]
    proc = subprocess.run(cmd, cwd=workflow, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"snakemake -n of {recipe.path} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return job_stats(proc.stdout + proc.stderr)


# ----------------------------------------------------------------------------------------------- shard disk


def shard_sources(tmp: Path, demo: bool = True) -> dict[str, tuple[str, str, str]]:
    """name -> (format, folder, Id) of the fields shard bytes are measured on: the real HPAv18 field when
    ../shared has it, and (`demo`, or without the real field) one synthetic demo field drawn at 2048 px, the
    side of the full-size TIFF release."""
    from hpaflow.demo import render, sample_label_sets, write_png

    out = {}
    folder, image_id = REAL_FIELD
    if (SHARED / folder / f"{image_id}_red.jpg").exists():
        out["hpav18_real"] = ("jpg", str(SHARED / folder), image_id)
    if out and not demo:
        return out
    labels = sample_label_sets(1, np.random.default_rng(0))[0]
    write_png(tmp, "demo0", render(labels, 2048, np.random.default_rng(0)))
    out["demo"] = ("png", str(tmp), "demo0")
    return out


def shard_bytes(source: tuple[str, str, str], geometry: tuple[int, str, int | None], codec: str, tmp: Path) -> dict:
    """Bytes one more image adds to a shard, and a shard's own overhead: shards of 1 and 2 rows of the field,
    written by hpaflow.shards (each image is its own chunk, so the second row costs what any row costs)."""
    from hpaflow.shards import ShardSpec, write_shard

    fmt, folder, image_id = source
    size, tiling, tile = geometry
    spec = ShardSpec("cost", fmt, folder, "train", size, tiling, tile, codec)
    sizes = []
    for n in (1, 2):
        p = tmp / f"cost_{n}.h5"
        write_shard(p, spec, [image_id] * n, np.zeros((n, 28), np.uint8))
        sizes.append(p.stat().st_size)
        p.unlink()
    per_image = sizes[1] - sizes[0]
    return {"per_image": per_image, "per_shard": sizes[0] - per_image}


def geometry_key(geometry: tuple[int, str, int | None]) -> str:
    size, tiling, tile = geometry
    return str(size) if tiling == "none" else f"{size}/grid{tile}"


def measure_shard_bytes(geometries: list[tuple[int, str, int | None]], tmp: Path, demo: bool = True) -> dict:
    """{source: {geometry: {codec: {per_image, per_shard}}}} for every source (shard_sources), geometry, codec."""
    tmp.mkdir(parents=True, exist_ok=True)
    sources = shard_sources(tmp, demo)
    return {
        name: {
            geometry_key(g): {codec: shard_bytes(src, g, codec, tmp) for codec in CODECS}
            for g in sorted(set(geometries))
        }
        for name, src in sources.items()
    }


def shard_disk(rows: list[int], shard_size: int, per_image: int, per_shard: int) -> int:
    """Bytes of a recipe's shards: every dataset is cut into shards of shard_size images."""
    return sum(n * per_image + math.ceil(n / shard_size) * per_shard for n in rows)


# --------------------------------------------------------------------------------------------- step timing


def build_member(member: Member, device):
    """The member's network, untrained, on device (channels_last on CUDA, as training runs it)."""
    import torch

    from hpaflow.models import build_model

    torch.manual_seed(0)
    model = build_model(
        member.backbone,
        CHANNELS[member.color_mode],
        pretrained=False,
        head=member.head,
        head_hidden=member.head_hidden,
        dropout=member.dropout,
    ).to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


class StepTimer:
    """One member at one side on a fixed random batch: a training step (forward, BCE, backward, AdamW step via
    hpaflow.train.train_step) or, with train=False, an inference batch (eval, no gradient), under autocast
    `dtype` as training and predict run it. Built and warmed up once, timed as often as wanted."""

    def __init__(self, member: Member, size: int, batch: int, device, dtype=None, train: bool = True, warmup: int = 1):
        import torch

        from hpaflow.losses import LOSSES

        self.device, self.dtype, self.train, self.batch = device, dtype, train, batch
        self.model = build_member(member, device).train(train)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.loss = LOSSES["bce"]
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, CHANNELS[member.color_mode], size, size, generator=g).to(device)
        if device.type == "cuda":
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = (torch.rand(batch, 28, generator=g) < 0.1).float().to(device)
        for _ in range(warmup):
            self.step()

    def step(self) -> None:
        import torch

        from hpaflow.train import train_step

        if self.train:
            train_step(self.model, self.x, self.y, self.loss, self.opt, self.scaler, self.dtype)
            return
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            self.model(self.x)

    def seconds(self, steps: int = 1, repeat: int = 2) -> float:
        """Seconds per step: the least of `repeat` timings of `steps` steps (the least disturbed). On the CPU
        the process's CPU seconds, not wall time: what other jobs on a shared machine do moves wall time by
        up to 5x here (resnet18 at 512 px: 1.9-9.6 s a step), the CPU time of a one-thread step hardly."""
        import torch

        cuda = self.device.type == "cuda"
        clock = time.perf_counter if cuda else time.process_time
        best = float("inf")
        for _ in range(repeat):
            if cuda:
                torch.cuda.synchronize()
            t0 = clock()
            for _ in range(steps):
                self.step()
            if cuda:
                torch.cuda.synchronize()
            best = min(best, (clock() - t0) / steps)
        return best


def reference_member() -> Member:
    backbone, size = REFERENCE
    return Member("reference", backbone, "linear", 512, 0.5, "gyb", size, None, 1, STEP_BATCH)


def scaled(size: int, scale: float) -> int:
    return max(16, round(size * scale))


def step_ratios(recipes: list[Recipe], scale: float = 1.0, batch: int = STEP_BATCH, repeat: int = 2) -> dict:
    """{recipe: {member: step seconds / resnet18's at 512 px}} on this CPU (fp32, one thread), every side
    times `scale` (a ratio of two steps at the same scale assumes cost follows the pixel count alike for
    both). The reference step is timed again beside each member's, so that a change in what else runs on
    the machine moves both. Members with the same network and train size are timed once; the reference's
    own network is 1 by definition."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on two busy cores run 3-4x slower than one: oversubscription
    try:
        device = torch.device("cpu")
        ref_member = reference_member()
        ref = StepTimer(ref_member, scaled(ref_member.train_size, scale), batch, device)
        ref_key = (ref_member.arch, ref_member.train_size)
        ratio: dict[tuple, float] = {ref_key: 1.0}
        detail = []
        out: dict = {"scale": scale, "batch": batch, "threads": 1, "ratios": {}, "seconds": detail}
        for r in recipes:
            out["ratios"][r.name] = {}
            for m in r.members:
                key = (m.arch, m.train_size)
                if key not in ratio:
                    side = scaled(m.train_size, scale)
                    timer = StepTimer(m, side, batch, device)
                    ref_s, m_s = ref.seconds(repeat=repeat), timer.seconds(repeat=repeat)
                    ratio[key] = m_s / ref_s
                    detail.append(
                        {
                            "member": f"{r.name}/{m.name}",
                            "side": side,
                            "seconds": round(m_s, 3),
                            "reference_seconds": round(ref_s, 3),
                        }
                    )
                    print(f"  step {m.backbone} ({m.head}) {side} px: {m_s:.3f} s, resnet18 {ref_s:.3f} s", flush=True)
                    del timer
                out["ratios"][r.name][m.name] = round(ratio[key], 2)
        return out
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------- GPU projection


def gpu_hours(
    n_train: int,
    n_test: int,
    folds: int,
    epochs: int,
    views: int,
    crops: int,
    train_img_s: float,
    validate_img_s: float,
    predict_img_s: float,
    average: bool = False,
) -> dict[str, float]:
    """Projected GPU hours of one member over all folds.

    train: each fold trains on (folds - 1) / folds of the n_train images for `epochs` epochs;
    validate: each epoch scores the fold's n_train / folds images once (one view, the whole image); with
    `average` (average_last > 1) the averaged weights take one more pass over the training images to
    recompute BatchNorm statistics and one more validation, both counted at the validation rate;
    predict: each fold's model scores its out-of-fold images and all n_test images in `views` x `crops`
    forward passes. *_img_s: images (forward passes) per second of the training step or inference batch.
    """
    train = n_train * (folds - 1) * epochs / train_img_s
    validate = (n_train * (epochs + average) + average * n_train * (folds - 1)) / validate_img_s
    predict = (n_train + folds * n_test) * views * crops / predict_img_s
    hours = {"train": train / 3600, "validate": validate / 3600, "predict": predict / 3600}
    hours["total"] = sum(hours.values())
    return hours


def recipe_rows(recipe: Recipe, rows: dict[str, dict]) -> tuple[int, int]:
    """(train images, test images) of a recipe from dataset_rows (tiles counted as rows)."""
    size, tiling, tile = recipe.shard_geometry
    per_image = (size // tile) ** 2 if tiling == "grid" else 1
    n = {role: sum(d["rows"] for d in rows.values() if d["role"] == role) * per_image for role in ("train", "test")}
    return n["train"], n["test"]


def recipe_gpu_hours(recipe: Recipe, rows: dict[str, dict], rates: dict[str, dict]) -> dict:
    """{member: hours (gpu_hours), 'total': all members} from each member's rates
    {train_img_s, validate_img_s, predict_img_s}."""
    n_train, n_test = recipe_rows(recipe, rows)
    out: dict = {}
    for m in recipe.members:
        r = rates[m.name]
        h = gpu_hours(
            n_train,
            n_test,
            recipe.folds,
            m.epochs,
            recipe.views,
            m.crops_scored(recipe.crops),
            r["train_img_s"],
            r["validate_img_s"],
            r["predict_img_s"],
            m.average_last > 1,
        )
        out[m.name] = {k: round(v, 2) for k, v in h.items()}
    out["total"] = round(sum(out[m.name]["total"] for m in recipe.members), 1)
    return out


# ------------------------------------------------------------------------------------------------ all of it


def recipe_costs(
    tmp: Path, quick: bool, only: list[str] | None = None, steps: bool = True, step_scale: float | None = None
) -> dict:
    """Every figure of the cost table, as the benchmark JSON's recipe_* keys."""
    recipes = load_recipes(only=only)
    if not recipes:
        return {}
    data = tmp / "recipe_data"
    data.mkdir(parents=True, exist_ok=True)
    csvs = full_scale_csvs(data)
    workflow = workflow_copy(tmp / "recipe_wf")
    res: dict = {"recipe_csvs": csvs, "recipe_images": {}, "recipe_jobs": {}, "recipe_shard_bytes": {}}
    res["recipe_plan"] = {r.name: recipe_plan(r) | {"shard_side": geometry_key(r.shard_geometry)} for r in recipes}
    for r in recipes:
        res["recipe_images"][r.name] = {k: v["rows"] for k, v in dataset_rows(r, data).items()}
        t0 = time.perf_counter()
        res["recipe_jobs"][r.name] = plan_jobs(r, workflow, data, tmp / "recipe_weights")
        print(f"  snakemake -n {r.name}: {res['recipe_jobs'][r.name]['total']} jobs, {time.perf_counter() - t0:.1f} s")
    geometries = [r.shard_geometry for r in recipes] + [(512, "none", None)]
    per_image = measure_shard_bytes(geometries, tmp / "shard_bytes", demo=not quick)
    res["shard_bytes_per_image"] = per_image
    source = "hpav18_real" if "hpav18_real" in per_image else "demo"
    res["recipe_shard_source"] = source
    for r in recipes:
        measured = per_image[source][geometry_key(r.shard_geometry)]
        rows = list(res["recipe_images"][r.name].values())
        res["recipe_shard_bytes"][r.name] = {
            codec: shard_disk(rows, r.config["shard_size"], b["per_image"], b["per_shard"])
            for codec, b in measured.items()
        }
    if steps:
        s = step_ratios(recipes, scale=step_scale if step_scale is not None else (0.25 if quick else 1.0))
        res["recipe_step_ratios"] = s.pop("ratios")
        res["recipe_step"] = s
    return res


def recipe_plan(recipe: Recipe) -> dict:
    """What the tables say of a recipe besides the measurements: folds, views, crops, each member's sizes."""
    return {
        "folds": recipe.folds,
        "views": recipe.views,
        "crops": recipe.crops,
        "members": {
            m.name: {
                "network": m.backbone + ("" if m.head == "linear" else f" + {m.head}"),
                "train_size": m.train_size,
                "image_size": m.image_size,
                "predict_size": m.predict_size(recipe.crops),
                "epochs": m.epochs,
            }
            for m in recipe.members
        },
    }


def training_passes(res: dict, name: str) -> float:
    """Training compute of a recipe in passes of resnet18 at 512 px over all its train images: each member's
    step ratio x epochs x (folds - 1) (k folds each train on (k - 1) / k of the images)."""
    plan = res["recipe_plan"][name]
    ratios = res["recipe_step_ratios"][name]
    return sum(ratios[m] * p["epochs"] * (plan["folds"] - 1) for m, p in plan["members"].items())


def cost_table(res: dict, gpu: dict | None = None) -> str:
    """The markdown cost tables from recipe_costs' keys, and gpu_check's `recipe_gpu_hours` when given."""
    names = list(res["recipe_jobs"])
    rules = [k for k in dict.fromkeys(k for n in names for k in res["recipe_jobs"][n]) if k != "total"]
    out = ["| jobs (`snakemake -n`) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    out += [f"| {k} | " + " | ".join(str(res["recipe_jobs"][n].get(k, 0)) for n in names) + " |" for k in rules]
    out += ["| **total** | " + " | ".join(f"**{res['recipe_jobs'][n]['total']}**" for n in names) + " |", ""]

    # The codecs the result holds (one written before a codec existed lacks it), in registry order.
    codecs = [c for c in CODECS if all(c in res["recipe_shard_bytes"][n] for n in names)]
    out += ["| shards | side | images | " + " | ".join(codecs) + " |", "|---" * (len(codecs) + 3) + "|"]
    for n in names:
        disk = res["recipe_shard_bytes"][n]
        side = res["recipe_plan"][n]["shard_side"]
        images = sum(res["recipe_images"][n].values())
        out.append(f"| {n} | {side} | {images:,} | " + " | ".join(f"{disk[c] / 1e9:,.0f} GB" for c in codecs) + " |")
    out.append("")

    if "recipe_step_ratios" in res:
        out += [
            "| member | network | train side | epochs | step time, x resnet18 at 512 px |",
            "|---|---|---|---|---|",
        ]
        for n in names:
            for m, p in res["recipe_plan"][n]["members"].items():
                ratio = res["recipe_step_ratios"][n][m]
                out.append(f"| {n}/{m} | {p['network']} | {p['train_size']} | {p['epochs']} | {ratio:g} |")
            folds = res["recipe_plan"][n]["folds"]
            out.append(
                f"| **{n}** | {folds} folds | | | **{training_passes(res, n):,.0f}** passes of resnet18 at 512 px |"
            )
        out.append("")

    gpu_h = (gpu or {}).get("recipe_gpu_hours", {})
    out += ["| GPU hours | train | validate | predict | total |", "|---|---|---|---|---|"]
    for n in names:
        h = gpu_h.get(n)
        if h is None:
            out.append(f"| {n} | gpu_check.py | | | |")
            continue
        parts = {k: sum(h[m][k] for m in h if m != "total") for k in ("train", "validate", "predict")}
        out.append(f"| {n} | " + " | ".join(f"{v:,.1f}" for v in parts.values()) + f" | **{h['total']:,.1f}** |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="step times at 1/4 of each side (ratios of like to like)")
    ap.add_argument("--scale", type=float, help="side factor of the step timings (default 1, --quick 0.25)")
    ap.add_argument("--recipes", nargs="*", help="recipe names (default: every config/recipes/*.yaml)")
    ap.add_argument("--out", default="results/recipe_cost.json")
    ap.add_argument("--table", help="print the markdown table of this JSON (run.py's or this script's) and stop")
    ap.add_argument("--gpu", help="a gpu_check.json with recipe_gpu_hours, for the table's last column")
    args = ap.parse_args(argv)
    if args.table:
        gpu = json.loads(Path(args.gpu).read_text()) if args.gpu else None
        print(cost_table(json.loads(Path(args.table).read_text()), gpu))
        return 0
    with tempfile.TemporaryDirectory() as t:
        res = recipe_costs(Path(t), args.quick, args.recipes, step_scale=args.scale)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(cost_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
