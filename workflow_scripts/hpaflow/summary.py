"""Gather: per-model fold averaging, the ensemble, thresholds and the figures of metrics.json.

I/O at the edges (HDF5 in, HDF5/JSON/CSV out); the maths lives in thresholds, ensemble, metrics.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from .ensemble import fit_weights, weighted_mean
from .files import atomic_path
from .labels import CLASS_NAMES
from .metrics import f1_per_class, macro_f1, macro_f1_at
from .thresholds import ThresholdSettings, cross_fit, evaluate, fit

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
    table = pd.read_csv(folds_csv, dtype={"Id": str})
    oof, test_ids, test_probs = {}, None, []
    for f in fold_files:
        with h5py.File(f, "r") as h5:
            fold = int(h5.attrs["fold"])
            ids = _str(h5["oof/ids"])
            expected = set(table.loc[table["fold"] == fold, "Id"])
            if set(ids) != expected:
                raise ValueError(f"{f}: out-of-fold Ids are not those of fold {fold} in {folds_csv}")
            for i, p, y in zip(ids, h5["oof/probs"][...], h5["oof/labels"][...]):
                oof[i] = (p, y, fold)
            if "test" in h5:
                t_ids = _str(h5["test/ids"])
                if test_ids is not None and not np.array_equal(t_ids, test_ids):
                    raise ValueError(f"{f}: test Ids differ from the other folds' files")
                test_ids = t_ids
                test_probs.append(h5["test/probs"][...])
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


def save_predictions(p: Predictions, path: str | Path, attrs: dict | None = None, extra: dict | None = None) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        for name in ("oof_ids", "test_ids"):
            h5.create_dataset(name, data=np.asarray(getattr(p, name), dtype=object), dtype=h5py.string_dtype())
        for name in ("oof_probs", "labels", "folds", "test_probs"):
            h5.create_dataset(name, data=getattr(p, name))
        for k, v in (extra or {}).items():
            h5.create_dataset(k, data=v)
        h5.attrs.update(attrs or {})


def load_predictions(path: str | Path) -> Predictions:
    with h5py.File(path, "r") as h5:
        return Predictions(_str(h5["oof_ids"]), h5["oof_probs"][...], h5["labels"][...], h5["folds"][...],
                           _str(h5["test_ids"]), h5["test_probs"][...])


def prior_baseline_f1(train_rate: np.ndarray, true_rate: np.ndarray) -> float:
    """Expected macro F1 of predicting each class at random at its training rate p when its true
    rate is q: precision q, recall p, so F1 = 2pq / (p + q)."""
    p, q = train_rate, true_rate
    return float(np.mean(np.where(p + q > 0, 2 * p * q / np.maximum(p + q, 1e-12), 0.0)))


def score(p: Predictions, methods: list[str], final: ThresholdSettings,
          prior: np.ndarray) -> tuple[dict, dict]:
    """The figures of one model (or the ensemble) for metrics.json, and the final method's evaluation."""
    y, probs = p.labels, p.oof_probs
    out = {"f1_at_0.5": macro_f1_at(y, probs, 0.5), "thresholds": {}}
    final_eval = None
    for m in methods:
        s = ThresholdSettings(m, final.shrink, final.min_positives, final.at_least_one)
        ev = evaluate(y, probs, p.folds, s, prior)
        out["thresholds"][m] = {"f1_cross_fitted": ev["f1_cross_fitted"], "f1_in_sample": ev["f1_in_sample"],
                                "values": [round(float(t), 4) for t in ev["thresholds"]]}
        if m == final.method:
            final_eval = ev
    if final_eval is None:
        final_eval = evaluate(y, probs, p.folds, final, prior)
    crossed = final_eval["cross_fitted_pred"]
    out["final_method"] = final.method
    out["f1_cross_fitted"] = final_eval["f1_cross_fitted"]
    out["per_class_f1"] = dict(zip(CLASS_NAMES, np.round(f1_per_class(y, crossed), 4).tolist()))
    out["predicted_frequency"] = dict(zip(CLASS_NAMES, np.round(crossed.mean(0), 5).tolist()))
    out["true_frequency"] = dict(zip(CLASS_NAMES, np.round(y.mean(0), 5).tolist()))
    return out, final_eval


def ensemble(models: dict[str, Predictions], weighting: str,
             step: float) -> tuple[Predictions, np.ndarray, np.ndarray | None]:
    """Mean (or OOF-fitted weighted mean) of the models' probabilities.

    Returns the ensemble, its final weights (fitted on all OOF rows), and, for fitted weights, the
    OOF probabilities where each fold's rows use weights fitted on the other folds only (else None).
    """
    first = next(iter(models.values()))
    for name, m in models.items():
        if not np.array_equal(m.oof_ids, first.oof_ids) or not np.array_equal(m.test_ids, first.test_ids):
            raise ValueError(f"model {name}: its Ids differ from {next(iter(models))}'s")
    oof = [m.oof_probs for m in models.values()]
    test = [m.test_probs for m in models.values()]
    y = first.labels
    crossed = None
    if weighting == "equal":
        w = np.full(len(models), 1 / len(models))
    else:
        w = fit_weights(y, oof, step)
        crossed = np.zeros_like(oof[0])
        for k in np.unique(first.folds):
            held = first.folds == k
            wk = fit_weights(y[~held], [p[~held] for p in oof], step)
            crossed[held] = weighted_mean([p[held] for p in oof], wk)
    ens = Predictions(first.oof_ids, weighted_mean(oof, w), y, first.folds, first.test_ids,
                      weighted_mean(test, w) if len(first.test_ids) else first.test_probs)
    return ens, w, crossed


def gather(model_files: dict[str, str], settings: dict, out_h5: str, out_json: str, out_thresholds: str) -> dict:
    """metrics.json for every model and the ensemble; the ensemble's probabilities and thresholds."""
    th = settings["thresholds"]
    final = ThresholdSettings(th["final"], th["shrink"], th["min_positives"], th["at_least_one"])
    methods = list(dict.fromkeys(th["methods"] + [th["final"]]))
    models = {name: load_predictions(f) for name, f in model_files.items()}
    first = next(iter(models.values()))
    prior = first.labels.mean(0)  # out-of-fold rows are all train Ids: their label rate is the training prior
    metrics: dict = {"n_train": int(len(first.labels)), "n_test": int(len(first.test_ids)),
                     "training_frequency": dict(zip(CLASS_NAMES, np.round(prior, 5).tolist())),
                     "prior_baseline": {"f1": prior_baseline_f1(prior, prior),
                                        "what": "each class predicted at random at its training rate "
                                                "(expected macro F1)"},
                     "models": {}}
    for name, m in models.items():
        metrics["models"][name], _ = score(m, methods, final, prior)
        log.info("%s: out-of-fold macro F1 %.4f at 0.5, %.4f cross-fitted (%s)", name,
                 metrics["models"][name]["f1_at_0.5"], metrics["models"][name]["f1_cross_fitted"], final.method)

    ens, weights, crossed_probs = ensemble(models, settings["ensemble"]["weights"], settings["ensemble"]["weight_step"])
    ens_metrics, ens_eval = score(ens, methods, final, prior)
    if crossed_probs is not None:
        # Weights and thresholds both fitted without the held-out fold.
        crossed_pred = cross_fit(ens.labels, crossed_probs, ens.folds,
                                 lambda rows: fit(ens.labels[rows], crossed_probs[rows], final, prior),
                                 final.at_least_one)
        ens_metrics["f1_cross_fitted_with_weights"] = macro_f1(ens.labels, crossed_pred)
    ens_metrics["weights"] = dict(zip(models, np.round(weights, 4).tolist()))
    metrics["ensemble"] = ens_metrics
    member_mean = float(np.mean([metrics["models"][n]["f1_cross_fitted"] for n in models]))
    metrics["ensemble"]["members_mean_f1_cross_fitted"] = member_mean
    log.info("ensemble: out-of-fold macro F1 %.4f cross-fitted (members' mean %.4f; prior-only baseline %.4f)",
             ens_metrics["f1_cross_fitted"], member_mean, metrics["prior_baseline"]["f1"])

    t_final = ens_eval["thresholds"]
    save_predictions(ens, out_h5, {"weights": weights, "final_method": final.method},
                     {"thresholds": t_final, "oof_pred_cross_fitted": ens_eval["cross_fitted_pred"]})
    with atomic_path(out_thresholds) as tmp:
        pd.DataFrame({"class": range(len(CLASS_NAMES)), "name": CLASS_NAMES, "threshold": t_final}).to_csv(
            tmp, index=False)
    with atomic_path(out_json) as tmp:
        tmp.write_text(json.dumps(metrics, indent=1))
    return metrics


def headline(metrics_json: str | Path) -> str:
    m = json.loads(Path(metrics_json).read_text())
    e = m["ensemble"]
    return (f"ensemble out-of-fold macro F1: {e['f1_cross_fitted']:.4f} (cross-fitted {e['final_method']} "
            f"thresholds; {e['f1_at_0.5']:.4f} at 0.5; prior-only baseline {m['prior_baseline']['f1']:.4f})")
