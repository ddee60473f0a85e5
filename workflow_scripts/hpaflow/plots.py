"""Report figures (matplotlib, headless)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import h5names as h5n  # noqa: E402
from .files import atomic_path  # noqa: E402
from .gallery import display_rgb  # noqa: E402
from .labels import CLASS_NAMES  # noqa: E402
from .summary import load_predictions  # noqa: E402
from .thresholds import f1_curve  # noqa: E402


def _save(fig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def training_curves(metrics_csvs: dict[tuple[str, int], str], path: str | Path) -> None:
    """Per model: validation macro F1 (best global threshold) and train loss per epoch, one line per fold."""
    models = sorted({m for m, _ in metrics_csvs})
    fig, axes = plt.subplots(2, len(models), figsize=(4.2 * len(models), 6), squeeze=False)
    for j, model in enumerate(models):
        for (m, fold), csv in sorted(metrics_csvs.items()):
            if m != model:
                continue
            df = pd.read_csv(csv)
            axes[0, j].plot(df["epoch"], df["val_f1_best_global"], marker="o", label=f"fold {fold}")
            axes[1, j].plot(df["epoch"], df["train_loss"], marker="o", label=f"fold {fold}")
        axes[0, j].set_title(model)
        axes[0, j].set_ylabel("validation macro F1")
        axes[1, j].set_ylabel("train loss")
        axes[1, j].set_xlabel("epoch")
        axes[0, j].legend(fontsize=7)
    _save(fig, path)


def per_class_f1(metrics: dict, path: str | Path) -> None:
    """Cross-fitted per-class F1 of each model and the ensemble."""
    series = {name: m["per_class_f1"] for name, m in metrics["models"].items()}
    series["ensemble"] = metrics["ensemble"]["per_class_f1"]
    fig, ax = plt.subplots(figsize=(14, 4.5))
    width = 0.8 / len(series)
    x = np.arange(len(CLASS_NAMES))
    for i, (name, f1) in enumerate(series.items()):
        ax.bar(x + i * width, [f1[c] for c in CLASS_NAMES], width, label=name)
    ax.set_xticks(x + 0.4 - width / 2, [f"{k} {c}" for k, c in enumerate(CLASS_NAMES)], rotation=75, fontsize=7)
    ax.set_ylabel("F1 (cross-fitted thresholds)")
    ax.legend(fontsize=8)
    _save(fig, path)


def threshold_curves(ensemble_h5: str | Path, path: str | Path, n: int = 4) -> None:
    """F1 against the threshold for the most frequent classes and the rarest present one, with the fitted value."""
    p = load_predictions(ensemble_h5)
    with h5py.File(ensemble_h5, "r") as h5:
        t_final = h5[h5n.THRESHOLDS][...]
    counts = p.labels.sum(0)
    order = [c for c in np.argsort(-counts) if counts[c] > 0]
    classes = order[: n - 1] + order[-1:] if len(order) >= n else order
    grid = np.linspace(0.01, 0.99, 99)
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in classes:
        (line,) = ax.plot(
            grid, f1_curve(p.labels[:, c], p.oof_probs[:, c], grid), label=f"{c} {CLASS_NAMES[c]} ({counts[c]} pos.)"
        )
        ax.axvline(t_final[c], color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel("threshold")
    ax.set_ylabel("out-of-fold F1 (ensemble)")
    ax.legend(fontsize=7)
    _save(fig, path)


def label_frequency(metrics: dict, path: str | Path) -> None:
    """Predicted (cross-fitted, ensemble) against training label frequency per class."""
    train = np.array([metrics["training_frequency"][c] for c in CLASS_NAMES])
    pred = np.array([metrics["ensemble"]["predicted_frequency"][c] for c in CLASS_NAMES])
    fig, ax = plt.subplots(figsize=(14, 4))
    x = np.arange(len(CLASS_NAMES))
    ax.bar(x - 0.2, train, 0.4, label="training")
    ax.bar(x + 0.2, pred, 0.4, label="predicted (out-of-fold)")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xticks(x, [f"{k} {c}" for k, c in enumerate(CLASS_NAMES)], rotation=75, fontsize=7)
    ax.set_ylabel("fraction of images")
    ax.legend(fontsize=8)
    _save(fig, path)


def image_grid(ensemble_h5: str | Path, shard_files: list[str], path: str | Path, n: int = 12, seed: int = 0) -> None:
    """Out-of-fold images (R, G, B as shown; yellow added to red and green) with true and predicted labels."""
    p = load_predictions(ensemble_h5)
    with h5py.File(ensemble_h5, "r") as h5:
        pred = h5[h5n.OOF_PRED_CROSS_FITTED][...]
    where = {}
    for f in shard_files:
        with h5py.File(f, "r") as h5:
            for row, i in enumerate(h5[h5n.IDS].asstr()[...]):
                where.setdefault(i, (f, row))
    pick = np.random.default_rng(seed).choice(len(p.oof_ids), min(n, len(p.oof_ids)), replace=False)
    cols = 4
    rows = int(np.ceil(len(pick) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, pick):
        f, row = where[p.oof_ids[i]]
        with h5py.File(f, "r") as h5:
            ax.imshow(display_rgb(h5[h5n.IMAGES][row]))
        true = " ".join(map(str, np.flatnonzero(p.labels[i])))
        guess = " ".join(map(str, np.flatnonzero(pred[i])))
        shown = guess if len(guess) <= 40 else guess[:37].rsplit(" ", 1)[0] + " ..."
        ax.set_title(f"true {true}\npred {shown}", fontsize=8, color="green" if true == guess else "black")
    _save(fig, path)


def headline_table(metrics: dict) -> str:
    """The report's front-page table (reStructuredText): per model and the ensemble, out-of-fold macro F1
    at 0.5 and per threshold method cross-fitted / in-sample, then the prior-only baseline."""
    methods = list(metrics["ensemble"]["thresholds"])
    header = ["", "F1 at 0.5"] + [f"{m} {kind}" for m in methods for kind in ("cross-fitted", "in-sample")]
    rows = []
    for name, figures in [*metrics["models"].items(), ("ensemble", metrics["ensemble"])]:
        th = figures["thresholds"]
        rows.append(
            [name, figures["f1_at_0.5"]] + [th[m][k] for m in methods for k in ("f1_cross_fitted", "f1_in_sample")]
        )
    rows.append(["prior-only baseline", metrics["prior_baseline"]["f1"]] + [""] * (len(header) - 2))
    lines = [
        ".. list-table:: Out-of-fold macro F1 (cross-fitted: each fold scored with thresholds fitted "
        "on the other folds)",
        "   :header-rows: 1",
        "",
    ]
    for row in [header, *rows]:
        cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row]
        lines += [f"   * - {cells[0] or ' '}"] + [f"     - {c or ' '}" for c in cells[1:]]
    return "\n".join(lines) + "\n"


def all_figures(metrics_json: str, ensemble_h5: str, metrics_csvs: dict, shard_files: list[str], out: dict) -> None:
    metrics = json.loads(Path(metrics_json).read_text())
    with atomic_path(out["headline"]) as tmp:
        tmp.write_text(headline_table(metrics))
    training_curves(metrics_csvs, out["curves"])
    per_class_f1(metrics, out["per_class"])
    threshold_curves(ensemble_h5, out["thresholds"])
    label_frequency(metrics, out["frequency"])
    image_grid(ensemble_h5, shard_files, out["images"])
