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
from . import versions  # noqa: E402
from .files import atomic_path  # noqa: E402
from .gallery import display_rgb, shard_images  # noqa: E402
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
    if per_image := metrics["ensemble"].get("labels_per_image"):
        method = metrics["ensemble"]["final_method"]
        ax.set_title(
            f"{method} thresholds: {per_image['predicted'][method]:.2f} labels per image predicted, "
            f"{per_image['true']:.2f} in the training labels",
            fontsize=9,
        )
    _save(fig, path)


def image_grid(ensemble_h5: str | Path, shard_files: list[str], path: str | Path, n: int = 12, seed: int = 0) -> None:
    """Out-of-fold images (R, G, B as shown; yellow added to red and green) with true and predicted labels."""
    p = load_predictions(ensemble_h5)
    with h5py.File(ensemble_h5, "r") as h5:
        pred = h5[h5n.OOF_PRED_CROSS_FITTED][...]
    pick = np.random.default_rng(seed).choice(len(p.oof_ids), min(n, len(p.oof_ids)), replace=False)
    images = shard_images(shard_files, [p.oof_ids[i] for i in pick])
    cols = 4
    rows = int(np.ceil(len(pick) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i, rgby in zip(axes.flat, pick, images):
        ax.imshow(display_rgb(rgby))
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
    if choice := metrics["ensemble"].get("threshold_choice"):
        lines += ["", threshold_choice_text(choice, metrics["ensemble"]["labels_per_image"])]
    if d := metrics.get("duplicates"):
        lines += [
            "",
            f"Near-duplicates (pHash within {d['max_distance']} bits on {', '.join(d['channels'])}; policy "
            f"{d['policy']}): {d['train_train_pairs']} train-train pairs in {d['train_train_groups']} groups, "
            f"{d['train_test_pairs']} train-test pairs, {d['label_conflicts']} label conflicts; "
            f"{d['pairs_split_across_folds']} pairs split across folds, "
            f"{d['dropped_external']} external fields left out.",
        ]
    return "\n".join(lines) + "\n"


def threshold_choice_text(choice: dict, labels_per_image: dict) -> str:
    """The submission's threshold method, why, and labels per image predicted by each method against the truth."""
    predicted = ", ".join(f"{m} {v:.2f}" for m, v in labels_per_image["predicted"].items())
    return (
        f"Thresholds of the submission: ``{choice['method']}`` (thresholds.final ``{choice['final']}``: "
        f"{choice['why']}). Labels per image, ensemble out-of-fold with cross-fitted thresholds: {predicted}; "
        f"the training labels have {labels_per_image['true']:.2f}."
    )


def software_versions_table(metrics: dict, shard_files: list[str]) -> str:
    """The report's software versions (reStructuredText): the shard jobs' environments (their files' stamps),
    those metrics.json records (train and predict, ensemble) and this job's own, as stage plots."""
    return versions.rst_table(
        versions.merge(
            {
                "shards": versions.recorded(shard_files),
                **metrics.get("software_versions", {}),
                "plots": [versions.environment_versions()],
            }
        )
    )


def duplicate_pairs(duplicates_csv: str | Path, shard_files: list[str], path: str | Path, n: int = 6) -> None:
    """A few near-duplicate pairs side by side: label conflicts first, then train-test, then the closest."""
    pairs = h5n.read_duplicates(duplicates_csv)
    if len(pairs) == 0:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no near-duplicate pairs", ha="center", va="center")
        _save(fig, path)
        return
    pairs["total"] = pairs[[c for c in pairs if c.startswith("d_")]].sum(1)
    pairs["order"] = np.where(pairs["labels_agree"] == False, 0, np.where(pairs["kind"] == "train-test", 1, 2))  # noqa: E712
    show = pairs.sort_values(["order", "total"], kind="stable").head(n)
    images = shard_images(shard_files, [*show["id_a"], *show["id_b"]])
    fig, axes = plt.subplots(len(show), 2, figsize=(6, 3.2 * len(show)), squeeze=False)
    for k, ((ax_a, ax_b), (_, r)) in enumerate(zip(axes, show.iterrows())):
        for ax, side, rgby in ((ax_a, "a", images[k]), (ax_b, "b", images[len(show) + k])):
            ax.imshow(display_rgb(rgby))
            ax.axis("off")
            ax.set_title(f"{r[f'dataset_{side}']}\n{r[f'id_{side}'][:24]}", fontsize=7)
        conflict = r["labels_agree"] == False  # noqa: E712
        note = "labels differ" if conflict else ("train-test" if r["kind"] == "train-test" else "labels agree")
        ax_a.text(
            1.05,
            -0.08,
            f"{note}; pHash bits r/g/b/y {r.d_red}/{r.d_green}/{r.d_blue}/{r.d_yellow}",
            transform=ax_a.transAxes,
            ha="center",
            fontsize=8,
            color="red" if conflict else "black",
        )
    _save(fig, path)


def transfer_neighbours(
    neighbours_csv: str | Path, metrics_json: str | Path, shard_files: list[str], path: str | Path, n: int = 8
) -> None:
    """Up to n test fields beside their nearest external field (those that took its labels first, by similarity,
    then the closest that did not), and a histogram of the test and out-of-fold similarities with tau."""
    table = pd.read_csv(neighbours_csv, dtype={"Id": str, "neighbour_id": str}, keep_default_na=False)
    table["similarity"] = table["similarity"].astype(float)
    tau = json.loads(Path(metrics_json).read_text())["transfer"]["tau"]
    test = table[(table["part"] == "test") & (table["neighbour_id"] != "")]
    took = test["replaced"].astype(str) == "True"
    by_similarity = {"by": "similarity", "ascending": False, "kind": "stable"}
    show = pd.concat([test[took].sort_values(**by_similarity), test[~took].sort_values(**by_similarity)]).head(n)
    ids = [*show["Id"], *show["neighbour_id"]]
    try:
        images = shard_images(shard_files, ids)
    except KeyError as e:
        raise ValueError(f"{neighbours_csv}: Id {e.args[0]!r} is in none of the shards") from None
    pair_rows = -(-len(show) // 2)
    fig = plt.figure(figsize=(12, 3.2 * pair_rows + 3))
    grid = fig.add_gridspec(pair_rows + 1, 4, height_ratios=[3.2] * pair_rows + [2.6])
    for k, (_, r) in enumerate(show.iterrows()):
        for side, (image_id, rgby, label) in enumerate(
            [(r["Id"], images[k], "test"), (r["neighbour_id"], images[len(show) + k], "external")]
        ):
            ax = fig.add_subplot(grid[k // 2, 2 * (k % 2) + side])
            ax.imshow(display_rgb(rgby))
            ax.axis("off")
            ax.set_title(f"{label}\n{image_id[:28]}", fontsize=7)
            if side == 0:
                replaced = str(r["replaced"]) == "True"
                note = "took its labels" if replaced else "kept its own labels"
                ax.text(
                    1.05,
                    -0.08,
                    f"similarity {r['similarity']:.3f}: {note}",
                    transform=ax.transAxes,
                    ha="center",
                    fontsize=8,
                    color="green" if replaced else "black",
                )
    ax = fig.add_subplot(grid[pair_rows, :])
    finite = table[np.isfinite(table["similarity"])]
    # From the lowest similarity (or tau) to 1: nearest neighbours lie high, most of [-1, 1] would be empty.
    low = np.floor(min([0.95, *finite["similarity"], *([tau] if tau is not None else [])]) * 20) / 20
    for part, label in (("test", "test fields"), ("oof", "train fields, outside their group (out-of-fold)")):
        sims = finite.loc[finite["part"] == part, "similarity"]
        if len(sims):
            ax.hist(sims, bins=50, range=(low, 1), density=True, histtype="step", lw=1.5, label=label)
    if tau is not None:
        ax.axvline(tau, color="red", ls="--", lw=1, label=f"tau {tau:.3f}")
    notes = ["tau: never (no field takes its neighbour's labels)"] * (tau is None)
    notes += ["no test field with a neighbour to show"] * (not len(show))
    ax.set_title("; ".join(notes), fontsize=9)
    ax.set_xlabel("cosine similarity to the nearest external field")
    ax.set_ylabel("density")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def all_figures(
    metrics_json: str,
    ensemble_h5: str,
    metrics_csvs: dict,
    shard_files: list[str],
    out: dict,
    duplicates_csv: str,
    all_shard_files: list[str],
) -> None:
    metrics = json.loads(Path(metrics_json).read_text())
    with atomic_path(out["headline"]) as tmp:
        tmp.write_text(headline_table(metrics))
    with atomic_path(out["versions"]) as tmp:
        tmp.write_text(software_versions_table(metrics, all_shard_files))
    training_curves(metrics_csvs, out["curves"])
    per_class_f1(metrics, out["per_class"])
    threshold_curves(ensemble_h5, out["thresholds"])
    label_frequency(metrics, out["frequency"])
    image_grid(ensemble_h5, shard_files, out["images"])
    duplicate_pairs(duplicates_csv, all_shard_files, out["duplicates"])
