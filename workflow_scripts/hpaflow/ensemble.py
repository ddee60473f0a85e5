"""The ensemble stage (rule ensemble): the models' probabilities combined by a weighted mean (equal
weights, or weights fitted on out-of-fold data), thresholds fitted out-of-fold, every figure of
metrics.json, the ensemble's probabilities and thresholds.

I/O at the edges (HDF5 in, HDF5/JSON/CSV out); each model's figures come from `summary.score`.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from . import h5names as h5n
from . import versions
from .duplicates import class_spread
from .files import atomic_path
from .labels import CLASS_NAMES
from .metrics import macro_f1
from .summary import Predictions, load_predictions, prior_baseline_f1, save_predictions, score
from .thresholds import ThresholdSettings, best_global, cross_fit, fit

log = logging.getLogger("hpaflow")
WEIGHTINGS = ("equal", "fitted")  # ensemble.weights: combine_models branches on these names


@dataclass(frozen=True)
class EnsembleSettings:
    """The stage's settings; defaults live in the config schema only (from_config)."""

    methods: list[str]  # threshold methods scored in metrics.json, a named final one included
    final: ThresholdSettings  # the submission's thresholds (method best: resolved per model by summary.score)
    weights: str  # equal | fitted
    weight_step: float

    @classmethod
    def from_config(cls, config: dict) -> EnsembleSettings:
        th, ens = config["thresholds"], config["ensemble"]
        return cls(
            list(dict.fromkeys(th["methods"] + ([] if th["final"] == "best" else [th["final"]]))),
            ThresholdSettings.from_config(config),
            ens["weights"],
            ens["weight_step"],
        )


def weighted_mean(probs: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    w = np.asarray(weights, np.float64)
    return np.tensordot(w / w.sum(), np.stack(probs), axes=1).astype(np.float32)


def simplex_grid(n: int, step: float) -> np.ndarray:
    """All weight vectors of n non-negative multiples of `step` summing to 1."""
    k = int(round(1 / step))
    pts = [c for c in itertools.product(range(k + 1), repeat=n - 1) if sum(c) <= k]
    return np.array([list(c) + [k - sum(c)] for c in pts]) / k


def fit_weights(y: np.ndarray, probs: list[np.ndarray], step: float) -> np.ndarray:
    """Weights on the simplex grid that maximise macro F1 at the best global threshold.

    A global threshold keeps the search cheap and the objective smooth enough; per-class
    thresholds are fitted afterwards on the weighted ensemble.
    """
    if len(probs) == 1:
        return np.ones(1)
    grid = simplex_grid(len(probs), step)
    scores = [best_global(y, weighted_mean(probs, w))[1] for w in grid]
    best = grid[int(np.argmax(scores))]
    return best


def combine_models(
    models: dict[str, Predictions], weighting: str, step: float
) -> tuple[Predictions, np.ndarray, np.ndarray | None]:
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
    if weighting not in WEIGHTINGS:
        raise ValueError(f"ensemble.weights: {weighting!r} is not one of {', '.join(WEIGHTINGS)}")
    if weighting == "equal":
        w = np.full(len(models), 1 / len(models))
    else:
        w = fit_weights(y, oof, step)
        crossed = np.zeros_like(oof[0])
        for k in np.unique(first.folds):
            held = first.folds == k
            wk = fit_weights(y[~held], [p[~held] for p in oof], step)
            crossed[held] = weighted_mean([p[held] for p in oof], wk)
    # No test Ids: the (0, 28) arrays average to (0, 28).
    ens = Predictions(first.oof_ids, weighted_mean(oof, w), y, first.folds, first.test_ids, weighted_mean(test, w))
    return ens, w, crossed


def run_ensemble(
    model_files: dict[str, str],
    settings: EnsembleSettings,
    out_h5: str,
    out_json: str,
    out_thresholds: str,
    leaks: dict | None = None,
) -> dict:
    """metrics.json for every model and the ensemble; the ensemble's probabilities and thresholds.
    `leaks` (duplicates.leak_report) goes in as `duplicates`; `software_versions` (versions.merge): the
    environments of the predict jobs (carried by the summaries) and of this job."""
    final, methods = settings.final, settings.methods
    models = {name: load_predictions(f) for name, f in model_files.items()}
    first = next(iter(models.values()))
    prior = first.labels.mean(0)  # out-of-fold rows are all train Ids: their label rate is the training prior
    metrics: dict = {
        "n_train": int(len(first.labels)),
        "n_test": int(len(first.test_ids)),
        "training_frequency": dict(zip(CLASS_NAMES, np.round(prior, 5).tolist())),
        "prior_baseline": {
            "f1": prior_baseline_f1(prior, prior),
            "what": "each class predicted at random at its training rate (expected macro F1)",
        },
        "models": {},
    }
    spread = class_spread(first.labels, first.folds, int(first.folds.max()) + 1)
    metrics["folds"] = {"class_spread_max": int(spread.max()), "class_spread": dict(zip(CLASS_NAMES, spread.tolist()))}
    if leaks is not None:
        metrics["duplicates"] = leaks
    for name, m in models.items():
        metrics["models"][name], _ = score(m, methods, final, prior)
        log.info(
            "%s: out-of-fold macro F1 %.4f at 0.5, %.4f cross-fitted (%s)",
            name,
            metrics["models"][name]["f1_at_0.5"],
            metrics["models"][name]["f1_cross_fitted"],
            metrics["models"][name]["final_method"],
        )

    ens, weights, crossed_probs = combine_models(models, settings.weights, settings.weight_step)
    ens_metrics, ens_eval = score(ens, methods, final, prior)
    final = replace(final, method=ens_metrics["final_method"])  # the submission's method, best resolved
    if crossed_probs is not None:
        # Weights and thresholds both fitted without the held-out fold.
        crossed_pred = cross_fit(
            crossed_probs,
            ens.folds,
            lambda rows: fit(ens.labels[rows], crossed_probs[rows], final, prior),
            final.at_least_one,
        )
        ens_metrics["f1_cross_fitted_with_weights"] = macro_f1(ens.labels, crossed_pred)
    ens_metrics["weights"] = dict(zip(models, np.round(weights, 4).tolist()))
    metrics["ensemble"] = ens_metrics
    member_mean = float(np.mean([metrics["models"][n]["f1_cross_fitted"] for n in models]))
    metrics["ensemble"]["members_mean_f1_cross_fitted"] = member_mean
    log.info(
        "ensemble: out-of-fold macro F1 %.4f cross-fitted (members' mean %.4f; prior-only baseline %.4f)",
        ens_metrics["f1_cross_fitted"],
        member_mean,
        metrics["prior_baseline"]["f1"],
    )

    t_final = ens_eval["thresholds"]
    save_predictions(
        ens,
        out_h5,
        {"weights": weights, "final_method": final.method},
        {h5n.THRESHOLDS: t_final, h5n.OOF_PRED_CROSS_FITTED: ens_eval["cross_fitted_pred"]},
    )
    with atomic_path(out_thresholds) as tmp:
        pd.DataFrame({"class": range(len(CLASS_NAMES)), "name": CLASS_NAMES, "threshold": t_final}).to_csv(
            tmp, index=False
        )
    # What ran: the predict jobs' environments carried by the summaries, and this job's own.
    metrics["software_versions"] = versions.merge(
        {"train and predict": versions.recorded(model_files.values()), "ensemble": [versions.environment_versions()]}
    )
    with atomic_path(out_json) as tmp:
        tmp.write_text(json.dumps(metrics, indent=1))
    return metrics
