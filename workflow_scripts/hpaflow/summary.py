"""Per-model summaries: fold averaging (rule model_summary), their HDF5 files, and the figures of one
model (or the ensemble) in metrics.json.

I/O at the edges; the maths lives in thresholds and metrics. The ensemble stage is `ensemble`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np

from . import h5names as h5n
from . import versions
from .files import atomic_path
from .labels import CLASS_NAMES
from .metrics import f1_per_class, macro_f1_at
from .thresholds import ThresholdSettings, choose, evaluate

log = logging.getLogger("hpaflow")


@dataclass
class Predictions:
    """Out-of-fold (every train Id once) and test probabilities of one model or the ensemble."""

    oof_ids: np.ndarray
    oof_probs: np.ndarray
    labels: np.ndarray
    folds: np.ndarray
    test_ids: np.ndarray
    test_probs: np.ndarray


def _str(ds) -> np.ndarray:
    return ds.asstr()[...]


def assemble_model(fold_files: list[str], folds_csv: str) -> Predictions:
    """Out-of-fold rows in folds-table order; test probabilities averaged over the folds' models."""
    table = h5n.read_folds(folds_csv)
    table = table[table["fold"] >= 0]  # fold -1: left out (duplicates.policy drop_external)
    oof, test_ids, test_probs = {}, None, []
    for f in fold_files:
        with h5py.File(f, "r") as h5:
            h5n.check_format(f, "predictions", h5.attrs.get(h5n.FORMAT))
            fold = int(h5.attrs["fold"])
            ids = _str(h5[h5n.OOF][h5n.IDS])
            expected = set(table.loc[table["fold"] == fold, "Id"])
            if set(ids) != expected:
                raise ValueError(f"{f}: out-of-fold Ids are not those of fold {fold} in {folds_csv}")
            for i, p, y in zip(ids, h5[h5n.OOF][h5n.PROBS][...], h5[h5n.OOF][h5n.LABELS][...]):
                oof[i] = (p, y, fold)
            if h5n.TEST in h5:
                t_ids = _str(h5[h5n.TEST][h5n.IDS])
                if test_ids is not None and not np.array_equal(t_ids, test_ids):
                    raise ValueError(f"{f}: test Ids differ from the other folds' files")
                test_ids = t_ids
                test_probs.append(h5[h5n.TEST][h5n.PROBS][...])
    missing = [i for i in table["Id"] if i not in oof]
    if missing:
        raise ValueError(f"no out-of-fold prediction for {len(missing)} train Id(s), e.g. {missing[0]!r}")
    ids = table["Id"].to_numpy()
    return Predictions(
        oof_ids=ids,
        oof_probs=np.stack([oof[i][0] for i in ids]).astype(np.float32),
        labels=np.stack([oof[i][1] for i in ids]).astype(np.uint8),
        folds=np.array([oof[i][2] for i in ids], np.int64),
        test_ids=np.array([], str) if test_ids is None else test_ids,
        test_probs=np.mean(test_probs, 0).astype(np.float32) if test_probs else np.zeros((0, 28), np.float32),
    )


def summary_attrs(model: str, prediction_files: list[str]) -> dict:
    """A model summary's attributes: its model, and the distinct environments that its predict jobs recorded
    (with their job counts) under SOFTWARE_VERSIONS_INPUTS, carried to the ensemble; model_summary is
    bookkeeping and adds no environment of its own."""
    attrs = {"model": model}
    versions.stamp(attrs, versions.distinct(versions.recorded(prediction_files)), h5n.SOFTWARE_VERSIONS_INPUTS)
    return attrs


def save_predictions(p: Predictions, path: str | Path, attrs: dict | None = None, extra: dict | None = None) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        for name in h5n.SUMMARY_STRINGS:
            h5.create_dataset(name, data=np.asarray(getattr(p, name), dtype=object), dtype=h5py.string_dtype())
        for name in h5n.SUMMARY_ARRAYS:
            h5.create_dataset(name, data=getattr(p, name))
        for k, v in (extra or {}).items():
            h5.create_dataset(k, data=v)
        h5.attrs.update(attrs or {})


def load_predictions(path: str | Path) -> Predictions:
    with h5py.File(path, "r") as h5:
        return Predictions(
            **{k: _str(h5[k]) for k in h5n.SUMMARY_STRINGS}, **{k: h5[k][...] for k in h5n.SUMMARY_ARRAYS}
        )


def prior_baseline_f1(train_rate: np.ndarray, true_rate: np.ndarray) -> float:
    """Expected macro F1 of predicting each class at random at its training rate p when its true
    rate is q: precision q, recall p, so F1 = 2pq / (p + q)."""
    p, q = train_rate, true_rate
    return float(np.mean(2 * p * q / np.maximum(p + q, 1e-12)))  # a class absent from both: 0 / 1e-12 = 0


def score(p: Predictions, methods: list[str], final: ThresholdSettings, prior: np.ndarray) -> tuple[dict, dict]:
    """The figures of one model (or the ensemble) for metrics.json, and the final method's evaluation.

    `methods` includes final.method unless that is best (EnsembleSettings adds it); best is resolved here,
    per model, from these figures (thresholds.choose). Labels per image: cross-fitted predictions' mean
    against the labels' mean.
    """
    y, probs = p.labels, p.oof_probs
    out = {"f1_at_0.5": macro_f1_at(y, probs, 0.5), "thresholds": {}}
    evals = {}
    for m in methods:
        evals[m] = ev = evaluate(y, probs, p.folds, replace(final, method=m), prior)
        out["thresholds"][m] = {
            "f1_cross_fitted": ev["f1_cross_fitted"],
            "f1_in_sample": ev["f1_in_sample"],
            "values": [round(float(t), 4) for t in ev["thresholds"]],
        }
    method, why = choose(final.method, {m: out["thresholds"][m]["f1_cross_fitted"] for m in methods})
    final_eval = evals[method]
    crossed = final_eval["cross_fitted_pred"]
    out["final_method"] = method
    out["threshold_choice"] = {"final": final.method, "method": method, "why": why}
    out["labels_per_image"] = {
        "true": round(float(y.sum(1).mean()), 4),
        "predicted": {m: round(float(ev["cross_fitted_pred"].sum(1).mean()), 4) for m, ev in evals.items()},
    }
    out["f1_cross_fitted"] = final_eval["f1_cross_fitted"]
    out["per_class_f1"] = dict(zip(CLASS_NAMES, np.round(f1_per_class(y, crossed), 4).tolist()))
    out["predicted_frequency"] = dict(zip(CLASS_NAMES, np.round(crossed.mean(0), 5).tolist()))
    out["true_frequency"] = dict(zip(CLASS_NAMES, np.round(y.mean(0), 5).tolist()))
    return out, final_eval


def headline(metrics_json: str | Path) -> str:
    m = json.loads(Path(metrics_json).read_text())
    e = m["ensemble"]
    return (
        f"ensemble out-of-fold macro F1: {e['f1_cross_fitted']:.4f} (cross-fitted {e['final_method']} "
        f"thresholds; {e['f1_at_0.5']:.4f} at 0.5; prior-only baseline {m['prior_baseline']['f1']:.4f})"
    )


def transfer_headline(transfer_json: str | Path) -> str:
    """One sentence on label transfer (results/transfer/metrics.json): the report's front page and make demo."""
    t = json.loads(Path(transfer_json).read_text())["transfer"]
    tau = "never" if t["tau"] is None else f"{t['tau']:.4f}"
    retrieval = "none held out" if t["retrieval_accuracy"] is None else f"{t['retrieval_accuracy']:.3f}"
    return (
        f"label transfer: {t['replaced_test']} of {t['n_test']} test fields took their nearest external field's "
        f"labels (tau {tau}, {t['tau_setting']}); out-of-fold macro F1 {t['f1_cross_fitted_without']:.4f} without, "
        f"{t['f1_cross_fitted_with_transfer']:.4f} with transfer (cross-fitted, {t['replaced_oof']} of {t['n_oof']} "
        f"fields replaced, never from their own antibody); antibody retrieval accuracy {retrieval}"
    )
