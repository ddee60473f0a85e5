"""Label transfer (rule transfer): each field's nearest external field by cosine similarity of the antibody
embeddings (rule embed), whose labels it takes where that similarity is at least tau.

tau is calibrated on the train fields' out-of-fold predictions, each field matched only outside its own antibody
and near-duplicate group: the network was trained to pull an antibody's fields together, and a near-duplicate is
the field itself, so such matches would say nothing of a test field's. `fit_tau` picks the value with the highest
macro F1, `cross_fit_tau` scores that choice honestly (each fold with the tau of the others).
Pure numpy maths, I/O at the edges (run_transfer); no torch, since the job runs in the ensemble env.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from . import h5names as h5n
from . import versions
from .files import atomic_path
from .labels import NUM_CLASSES, encode
from .metrics import macro_f1
from .progress import Progress
from .submission import SubmissionError, check_submission, make_submission, write_submission
from .summary import load_predictions

log = logging.getLogger("hpaflow")

NEIGHBOURS_COLUMNS = ("Id", "part", "neighbour_id", "similarity", "replaced")
# Two F1 values closer than this are equal: the same counts summed in another order differ in the last bits.
F1_TIE = 1e-12


def _same_group_pairs(query_groups: np.ndarray, ref_order: np.ndarray, ref_sorted: np.ndarray):
    """(query row, reference index) of every pair whose groups are equal and non-negative, sorted by reference.

    `ref_sorted` is the references' groups sorted (`ref_order` their indices): each query's references of its
    group are one run of it, found by binary search, so the cost is that of the pairs, not of Q x R."""
    lo = np.searchsorted(ref_sorted, query_groups, "left")
    hi = np.where(query_groups >= 0, np.searchsorted(ref_sorted, query_groups, "right"), lo)
    counts = hi - lo
    rows = np.repeat(np.arange(len(query_groups)), counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)  # 0, 1, ... in each run
    refs = ref_order[np.repeat(lo, counts) + within]
    order = np.argsort(refs, kind="stable")
    return rows[order], refs[order]


def nearest(
    queries: np.ndarray,
    refs: np.ndarray,
    query_groups: np.ndarray | None = None,
    ref_groups: np.ndarray | None = None,
    block: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's most similar reference by dot product (cosine for unit rows): (index int64 (Q,), similarity
    float32 (Q,)). Exact search in blocks of `block` queries x `block` references, so memory stays
    O(block^2) for any Q and R. A reference whose group equals the query's (both >= 0) is excluded; ties go to
    the lowest reference index; a query with no reference left gets index -1 and similarity -inf."""
    q = np.asarray(queries, np.float32)
    r = np.asarray(refs, np.float32)
    if q.ndim != 2 or r.ndim != 2 or q.shape[1] != r.shape[1]:
        raise ValueError(f"queries {q.shape} and references {r.shape} are not (n, D) arrays of one D")
    if (query_groups is None) != (ref_groups is None):
        raise ValueError("give groups for both the queries and the references, or for neither")
    grouped = query_groups is not None
    if grouped:
        qg, rg = np.asarray(query_groups, np.int64), np.asarray(ref_groups, np.int64)
        if qg.shape != (len(q),) or rg.shape != (len(r),):
            raise ValueError(f"groups {qg.shape} / {rg.shape} do not match {len(q)} queries / {len(r)} references")
        ref_order = np.argsort(rg, kind="stable")
        ref_sorted = rg[ref_order]
    index = np.full(len(q), -1, np.int64)
    best = np.full(len(q), -np.inf, np.float32)
    progress = Progress(len(q), "nearest neighbours", "queries")
    for q0 in range(0, len(q), block):
        qb = q[q0 : q0 + block]
        b_index, b_best = index[q0 : q0 + block], best[q0 : q0 + block]  # views: written in place
        if grouped:
            pair_q, pair_r = _same_group_pairs(qg[q0 : q0 + block], ref_order, ref_sorted)
        for r0 in range(0, len(r), block):
            s = qb @ r[r0 : r0 + block].T
            if grouped:
                a, b = np.searchsorted(pair_r, [r0, r0 + block])
                s[pair_q[a:b], pair_r[a:b] - r0] = -np.inf
            j = s.argmax(1)  # the first of equal values: the lowest index in this block
            v = s[np.arange(len(s)), j]
            better = v > b_best  # strict: an earlier block keeps its ties
            b_best[better] = v[better]
            b_index[better] = j[better] + r0
        progress.update(len(qb))
    return index, best


def transferred(
    pred: np.ndarray, neighbour_labels: np.ndarray, similarity: np.ndarray, tau: float
) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N, 28) bool, replaced (N,) bool): the neighbour's labels where similarity >= tau (tau = inf:
    never; a similarity of -inf, no neighbour, never), pred elsewhere."""
    replaced = np.asarray(similarity) >= tau
    out = np.where(replaced[:, None], np.asarray(neighbour_labels, bool), np.asarray(pred, bool))
    return out, replaced


def tau_curve(
    y: np.ndarray, pred: np.ndarray, neighbour_labels: np.ndarray, similarity: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(candidates, macro F1 at each): candidates are inf (never) then the distinct finite similarities, high to
    low. Rows sorted by similarity descending; lowering tau to the next candidate replaces one more run of equal
    similarities, whose change of each class's TP and predicted count is summed cumulatively: O(N log N + N*28)."""
    y, pred, nb = (np.asarray(a, bool) for a in (y, pred, neighbour_labels))
    sim = np.asarray(similarity, np.float64)
    n_true = y.sum(0)
    tp0, p0 = (y & pred).sum(0), pred.sum(0)
    finite = np.flatnonzero(np.isfinite(sim))
    order = finite[np.argsort(-sim[finite], kind="stable")]
    s = sim[order]
    d_tp = np.cumsum((y[order] & nb[order]).astype(np.int64) - (y[order] & pred[order]), 0)
    d_p = np.cumsum(nb[order].astype(np.int64) - pred[order], 0)
    last = np.append(s[1:] < s[:-1], True) if len(s) else np.zeros(0, bool)  # the end of each run of equal values
    tp = np.vstack([tp0, tp0 + d_tp[last]])
    predicted = np.vstack([p0, p0 + d_p[last]])
    f1 = (2 * tp / np.maximum(n_true + predicted, 1)).mean(1)  # as metrics.f1_per_class: denominator 0 -> F1 0
    return np.append(np.inf, s[last]), f1


def fit_tau(y: np.ndarray, pred: np.ndarray, neighbour_labels: np.ndarray, similarity: np.ndarray) -> float:
    """The tau whose transfer (`transferred`) has the highest macro F1 against y, of inf (never) and the distinct
    finite similarities; of equal ones the lowest (the most transfer that costs nothing). math.inf for never."""
    candidates, f1 = tau_curve(y, pred, neighbour_labels, similarity)
    k = np.flatnonzero(f1 >= f1.max() - F1_TIE)[-1]  # candidates run high to low: the last is the lowest
    return math.inf if k == 0 else float(candidates[k])


def cross_fit_tau(
    y: np.ndarray, pred: np.ndarray, neighbour_labels: np.ndarray, similarity: np.ndarray, folds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[int, float]]:
    """(labels, replaced, {fold: tau}): each fold's rows transferred with the tau fitted on the other folds' rows,
    as thresholds.cross_fit does for thresholds."""
    out = np.zeros(np.shape(pred), bool)
    replaced = np.zeros(len(out), bool)
    taus: dict[int, float] = {}
    for k in np.unique(folds):
        held = folds == k
        taus[int(k)] = tau = fit_tau(y[~held], pred[~held], neighbour_labels[~held], similarity[~held])
        out[held], replaced[held] = transferred(pred[held], neighbour_labels[held], similarity[held], tau)
    return out, replaced, taus


@dataclass(frozen=True)
class TransferSettings:
    """What decides rule transfer's outputs (contracts STAGES["transfer"]): tau, "auto" or a number."""

    tau: float | str

    @classmethod
    def from_config(cls, config: dict) -> TransferSettings:
        tau = config["transfer"]["tau"]
        if tau != "auto" and (isinstance(tau, bool) or not isinstance(tau, int | float) or not -1 <= tau <= 1):
            raise ValueError(f"transfer.tau: {tau!r} is neither auto nor a number in [-1, 1]")
        return cls(tau if tau == "auto" else float(tau))


@dataclass
class Embeddings:
    """The rows of embeddings.h5 (rule embed)."""

    path: str
    ids: np.ndarray
    test: np.ndarray
    external: np.ndarray
    group: np.ndarray
    trained: np.ndarray
    labels: np.ndarray
    vectors: np.ndarray
    retrieval: float

    def reference_rows(self) -> np.ndarray:
        """The rows labels are taken from: external train fields (rule transfer and the exported package)."""
        rows = np.flatnonzero(self.external & ~self.test)
        if len(rows) == 0:
            raise ValueError(f"{self.path}: no external train field to take labels from (datasets[].external)")
        return rows

    def rows(self, ids: list[str], test: bool, what: str) -> np.ndarray:
        """The row of each Id among the test (or train) rows; an Id missing or there twice is an error."""
        part = np.flatnonzero(self.test == test)
        where = pd.Series(part, index=self.ids[part])
        twice = where.index.duplicated(keep=False)
        if bad := sorted(set(where.index[twice]) & set(ids)):
            raise ValueError(f"{self.path}: Id {bad[0]!r} ({what}) is in {int((where.index == bad[0]).sum())} rows")
        where = where[~twice]
        if missing := [i for i in ids if i not in where.index]:
            raise ValueError(
                f"{self.path}: no embedding of Id {missing[0]!r} ({what}; {len(missing)} missing); "
                f"rerun embed: {h5n.RERUN['embeddings']}"
            )
        return where.loc[list(ids)].to_numpy(np.int64)


def read_embeddings(path: str | Path) -> Embeddings:
    """embeddings.h5 checked: its format, one length for every array, finite vectors."""
    with h5py.File(path, "r") as h5:
        h5n.check_format(path, "embeddings", h5.attrs.get(h5n.FORMAT))
        names = (h5n.IDS, h5n.EMB_TEST, h5n.EMB_EXTERNAL, h5n.EMB_GROUP, h5n.EMB_TRAINED, h5n.LABELS, h5n.EMBEDDINGS)
        if missing := [n for n in names if n not in h5]:
            raise h5n.FormatError(f"{path}: no dataset {', '.join(missing)}: {h5n.RERUN['embeddings']}")
        e = Embeddings(
            str(path),
            h5[h5n.IDS].asstr()[...].astype(object),
            h5[h5n.EMB_TEST][...].astype(bool),
            h5[h5n.EMB_EXTERNAL][...].astype(bool),
            h5[h5n.EMB_GROUP][...].astype(np.int64),
            h5[h5n.EMB_TRAINED][...].astype(bool),
            h5[h5n.LABELS][...].astype(bool),
            h5[h5n.EMBEDDINGS][...].astype(np.float32),
            float(h5.attrs.get(h5n.EMB_RETRIEVAL, math.nan)),
        )
    n = len(e.ids)
    arrays = {n_: a for n_, a in zip(names[1:], (e.test, e.external, e.group, e.trained, e.labels, e.vectors))}
    if bad := [f"{k} {a.shape}" for k, a in arrays.items() if len(a) != n]:
        raise h5n.FormatError(f"{path}: {', '.join(bad)} do not have one row per Id ({n})")
    if e.labels.shape[1:] != (NUM_CLASSES,) or e.vectors.ndim != 2:
        raise h5n.FormatError(f"{path}: labels {e.labels.shape} or embeddings {e.vectors.shape} of the wrong shape")
    if not (ok := np.isfinite(e.vectors).all(1)).all():
        raise ValueError(f"{path}: the embedding of Id {e.ids[~ok][0]!r} is not finite ({(~ok).sum()} such rows)")
    return e


def read_submission(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(Ids, labels (N, 28) bool) of a submission csv (Predicted may be empty), checked as written."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    try:
        check_submission(df, df["Id"].tolist() if "Id" in df.columns else [])
    except SubmissionError as e:
        raise SubmissionError(f"{path}: {e}") from None
    return df["Id"].tolist(), encode([[int(t) for t in s.split()] for s in df["Predicted"]]).astype(bool)


def _tau_json(tau: float) -> float | None:
    return None if math.isinf(tau) else tau


def run_transfer(
    embeddings_h5: str | Path,
    ensemble_h5: str | Path,
    submission_ensemble_csv: str | Path,
    settings: TransferSettings,
    out_submission: str | Path,
    out_neighbours: str | Path,
    out_metrics: str | Path,
) -> dict:
    """The ensemble's submission with each test field's labels replaced by its nearest external field's where
    their similarity is at least tau; the neighbours of the test and out-of-fold fields; the figures (metrics)."""
    emb = read_embeddings(embeddings_h5)
    if len(leaks := np.flatnonzero(emb.test & emb.trained)):
        raise ValueError(
            f"{embeddings_h5}: the embedding network trained on test field {emb.ids[leaks[0]]!r} "
            f"({len(leaks)} test fields): rerun embed ({h5n.RERUN['embeddings']})"
        )
    ref_rows = emb.reference_rows()
    refs = emb.vectors[ref_rows]

    # Out-of-fold fields: matched outside their own antibody and near-duplicate group.
    ens = load_predictions(ensemble_h5)
    with h5py.File(ensemble_h5, "r") as h5:
        oof_pred = h5[h5n.OOF_PRED_CROSS_FITTED][...].astype(bool)
    if oof_pred.shape != ens.labels.shape:
        raise ValueError(f"{ensemble_h5}: {h5n.OOF_PRED_CROSS_FITTED} {oof_pred.shape}, labels {ens.labels.shape}")
    oof_rows = emb.rows(list(ens.oof_ids), test=False, what=f"out-of-fold in {ensemble_h5}")
    test_ids, test_pred = read_submission(submission_ensemble_csv)
    test_rows = emb.rows(test_ids, test=True, what=f"test in {submission_ensemble_csv}")
    if (no_group := emb.group[oof_rows] < 0).any():
        raise ValueError(f"{embeddings_h5}: train field {ens.oof_ids[no_group][0]!r} has no group (EMB_GROUP -1)")
    log.info("out-of-fold fields: %d, each against %d external fields outside its group", len(oof_rows), len(refs))
    oof_nb, oof_sim = nearest(emb.vectors[oof_rows], refs, emb.group[oof_rows], emb.group[ref_rows])
    oof_nb_labels = np.where((oof_nb >= 0)[:, None], emb.labels[ref_rows[oof_nb]], False)
    y = ens.labels.astype(bool)

    if settings.tau == "auto":
        oof_out, oof_replaced, taus = cross_fit_tau(y, oof_pred, oof_nb_labels, oof_sim, ens.folds)
        tau = fit_tau(y, oof_pred, oof_nb_labels, oof_sim)
        why = (
            "transfer.tau auto: the similarity with the highest out-of-fold macro F1 of the ensemble's cross-fitted "
            "predictions with transfer, each train field matched outside its own antibody and near-duplicate group "
            "(the lowest of equal ones; null = never)"
        )
        tau_per_fold = {str(k): _tau_json(t) for k, t in taus.items()}
    else:
        tau = float(settings.tau)
        oof_out, oof_replaced = transferred(oof_pred, oof_nb_labels, oof_sim, tau)
        why = f"transfer.tau is set to {tau}"
        tau_per_fold = None

    # Test fields: matched against every external field.
    log.info("test fields: %d", len(test_rows))
    test_nb, test_sim = nearest(emb.vectors[test_rows], refs)
    test_nb_labels = np.where((test_nb >= 0)[:, None], emb.labels[ref_rows[test_nb]], False)
    test_out, test_replaced = transferred(test_pred, test_nb_labels, test_sim, tau)
    write_submission(make_submission(test_ids, np.array(test_ids, object), test_out), test_ids, out_submission)

    def part(ids, kind, nb, sim, replaced) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "Id": list(ids),
                "part": kind,
                "neighbour_id": np.where(nb >= 0, emb.ids[ref_rows[nb]], ""),
                "similarity": np.round(sim.astype(np.float64), 6),
                "replaced": replaced,
            }
        )

    neighbours = pd.concat(
        [
            part(test_ids, "test", test_nb, test_sim, test_replaced),
            part(ens.oof_ids, "oof", oof_nb, oof_sim, oof_replaced),
        ],
        ignore_index=True,
    )
    with atomic_path(out_neighbours) as tmp:
        neighbours.to_csv(tmp, index=False)

    metrics = {
        "transfer": {
            "tau": _tau_json(tau),
            "tau_setting": settings.tau,
            "tau_per_fold": tau_per_fold,
            "replaced_test": int(test_replaced.sum()),
            "n_test": len(test_rows),
            "replaced_oof": int(oof_replaced.sum()),
            "n_oof": len(oof_rows),
            "f1_cross_fitted_with_transfer": macro_f1(y, oof_out),
            "f1_cross_fitted_without": macro_f1(y, oof_pred),
            "retrieval_accuracy": None if math.isnan(emb.retrieval) else emb.retrieval,
            "references": len(ref_rows),
            "why": why,
        },
        # What ran: the embed job's environment (stamped in embeddings.h5) and this job's own.
        "software_versions": versions.merge(
            {"embed": versions.recorded([embeddings_h5]), "transfer": [versions.environment_versions()]}
        ),
    }
    with atomic_path(out_metrics) as tmp:
        tmp.write_text(json.dumps(metrics, indent=1))
    m = metrics["transfer"]
    log.info(
        "transfer: tau %s (%s); replaced %d of %d test fields; out-of-fold macro F1 %.4f -> %.4f with transfer "
        "(cross-fitted, %d of %d replaced)",
        "never" if m["tau"] is None else f"{tau:.6f}",
        settings.tau,
        m["replaced_test"],
        m["n_test"],
        m["f1_cross_fitted_without"],
        m["f1_cross_fitted_with_transfer"],
        m["replaced_oof"],
        m["n_oof"],
    )
    return metrics
