"""Label transfer (hpaflow.transfer): exact nearest neighbours with group exclusion against a brute-force double
loop, tau fitted by a cumulative sweep against a loop of macro F1 calls over every candidate (and hand-worked
cases), and run_transfer end to end on hand-made files in their real layouts, with the figure."""

from __future__ import annotations

import json
import math

import cv2
import h5py
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from hpaflow import h5names as h5n
from hpaflow import versions
from hpaflow.labels import NUM_CLASSES
from hpaflow.layout import indexed_shards
from hpaflow.metrics import macro_f1
from hpaflow.plots import transfer_neighbours
from hpaflow.summary import Predictions, save_predictions
from hpaflow.transfer import (
    NEIGHBOURS_COLUMNS,
    TransferSettings,
    cross_fit_tau,
    fit_tau,
    nearest,
    run_transfer,
    transferred,
)

# ---------------------------------------------------------------- brute force references


def brute_nearest(q, r, qg=None, rg=None):
    """Double loop in float64: the first reference of the highest similarity outside the query's group."""
    index = np.full(len(q), -1)
    best = np.full(len(q), -np.inf)
    for i in range(len(q)):
        for j in range(len(r)):
            if qg is not None and qg[i] >= 0 and qg[i] == rg[j]:
                continue
            s = float(np.dot(q[i].astype(np.float64), r[j].astype(np.float64)))
            if s > best[i]:
                index[i], best[i] = j, s
    return index, best


def brute_fit_tau(y, pred, nb, sim):
    """macro F1 of the transfer at every candidate (inf and each distinct finite similarity); the lowest best."""
    candidates = [math.inf, *sorted({float(s) for s in sim if np.isfinite(s)})]
    scores = {}
    for tau in candidates:
        out = np.where((sim >= tau)[:, None], nb, pred)
        scores[tau] = f1_score(y, out, average="macro", zero_division=0)
    top = max(scores.values())
    return min(t for t, f in scores.items() if f >= top - 1e-12)


def random_case(rng, n, ties=True):
    """Labels, predictions, neighbour labels and similarities: ties in similarity, rows whose neighbour's labels
    equal the prediction, rows without a neighbour (-inf)."""
    y = rng.random((n, NUM_CLASSES)) < 0.15
    pred = np.where(rng.random((n, NUM_CLASSES)) < 0.8, y, ~y)
    nb = np.where(rng.random((n, NUM_CLASSES)) < 0.7, y, rng.random((n, NUM_CLASSES)) < 0.15)
    same = rng.random(n) < 0.2
    nb[same] = pred[same]
    sim = rng.uniform(-1, 1, n).astype(np.float32)
    if ties:
        sim = np.round(sim, 1).astype(np.float32)
    sim[rng.random(n) < 0.1] = -np.inf
    return y, pred, nb, sim


# ---------------------------------------------------------------- nearest


@pytest.mark.parametrize("block", [5, 7, 4096])
def test_nearest_equals_brute_force_with_groups(block):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(37, 8)).astype(np.float32)
    r = rng.normal(size=(53, 8)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    qg, rg = rng.integers(-1, 5, len(q)), rng.integers(-1, 5, len(r))
    for groups in [(None, None), (qg, rg)]:
        index, sim = nearest(q, r, *groups, block=block)
        want_index, want_sim = brute_nearest(q, r, *groups)
        assert index.dtype == np.int64 and sim.dtype == np.float32
        np.testing.assert_array_equal(index, want_index)
        np.testing.assert_allclose(sim, want_sim, atol=1e-6)


@pytest.mark.parametrize("block", [3, 4, 4096])
def test_nearest_ties_go_to_the_lowest_reference_across_blocks(block):
    """Small integer vectors: every dot product is exact in float32, so ties are exact; many references repeat."""
    rng = np.random.default_rng(1)
    r = rng.integers(-1, 2, (6, 3)).astype(np.float32)[rng.integers(0, 6, 29)]
    q = rng.integers(-1, 2, (23, 3)).astype(np.float32)
    qg, rg = rng.integers(-1, 3, len(q)), rng.integers(-1, 3, len(r))
    for groups in [(None, None), (qg, rg)]:
        index, sim = nearest(q, r, *groups, block=block)
        want_index, want_sim = brute_nearest(q, r, *groups)
        np.testing.assert_array_equal(index, want_index)
        np.testing.assert_array_equal(sim, want_sim.astype(np.float32))


def test_nearest_excludes_equal_groups_only_and_reports_no_reference():
    r = np.eye(3, dtype=np.float32)
    q = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    # Query 0 (group 7): the identical reference 0 is of its group; query 1 (group -1) matches reference 0 of
    # group -1 anyway (-1 is no group); query 2 (group 7): every reference is of group 7 or excluded.
    index, sim = nearest(q, r, np.array([7, -1, 5]), np.array([7, 5, 5]), block=2)
    assert index[0] == 1 and sim[0] == 0  # reference 1, not 0; the tie with 2 goes to the lower index
    assert index[1] == 0 and sim[1] == 1
    assert index[2] == 0 and sim[2] == 0  # references 1 and 2 are group 5: only reference 0 is left
    index, sim = nearest(q[:1], r, np.array([5]), np.array([5, 5, 5]))
    assert index.tolist() == [-1] and sim.tolist() == [-np.inf]
    index, sim = nearest(q, np.zeros((0, 3), np.float32))
    assert index.tolist() == [-1] * 3 and np.isneginf(sim).all()
    with pytest.raises(ValueError, match="groups"):
        nearest(q, r, np.array([1, 2, 3]), None)


# ---------------------------------------------------------------- transferred, fit_tau, cross_fit_tau


def test_transferred_takes_the_neighbours_labels_from_tau_on():
    pred = np.array([[1, 0], [1, 0], [1, 0], [1, 0]], bool)
    nb = np.array([[0, 1], [0, 1], [0, 1], [0, 1]], bool)
    sim = np.array([0.9, 0.5, 0.49, -np.inf], np.float32)
    out, replaced = transferred(pred, nb, sim, 0.5)
    assert replaced.tolist() == [True, True, False, False]
    assert out.tolist() == [[0, 1], [0, 1], [1, 0], [1, 0]]
    out, replaced = transferred(pred, nb, sim, math.inf)
    assert not replaced.any() and (out == pred).all()


@pytest.mark.parametrize("seed", range(12))
def test_fit_tau_equals_the_loop_over_every_candidate(seed):
    rng = np.random.default_rng(seed)
    y, pred, nb, sim = random_case(rng, int(rng.integers(1, 60)), ties=seed % 2 == 0)
    assert fit_tau(y, pred, nb, sim) == brute_fit_tau(y, pred, nb, sim)


def one_class(rows):
    """(y, pred, nb, sim) with one class in column 0 from rows (y, pred, nb, sim); the other 27 all zero."""
    y, pred, nb = (np.zeros((len(rows), NUM_CLASSES), bool) for _ in range(3))
    for i, (a, b, c, _) in enumerate(rows):
        y[i, 0], pred[i, 0], nb[i, 0] = a, b, c
    return y, pred, nb, np.array([r[3] for r in rows], np.float32)


def test_fit_tau_hand_worked():
    # Row 0 (0.9): the neighbour agrees with the prediction (no change); row 1 (0.8): a true positive would
    # become a false negative (hurts); row 2 (0.7): a false positive would become a true negative (helps, but
    # below the harm). F1: never 2*1/(1+2) = 0.667; down to 0.9 the same; 0.8: 0; 0.7: 0 (tp 0).
    # Best: never and 0.9 tie -> the lower, 0.9 (the tied plateau above the harm).
    case = one_class([(0, 0, 0, 0.9), (1, 1, 0, 0.8), (0, 1, 0, 0.7)])
    assert fit_tau(*case) == pytest.approx(0.9)
    # The harm at the top: never.
    case = one_class([(1, 1, 0, 0.9), (0, 0, 0, 0.8)])
    assert fit_tau(*case) == math.inf
    # Nothing to gain or lose: the lowest similarity.
    case = one_class([(1, 1, 1, 0.9), (0, 0, 0, 0.2), (1, 1, 1, -0.3)])
    assert fit_tau(*case) == pytest.approx(-0.3)
    # Help at 0.5 only: F1 rises from 2/3 to 1 there; 0.1 hurts again.
    case = one_class([(1, 1, 1, 0.9), (0, 1, 0, 0.5), (1, 1, 0, 0.1)])
    assert fit_tau(*case) == pytest.approx(0.5)
    # A row without a neighbour (-inf) is never a candidate nor replaced, whatever its neighbour's labels say.
    case = one_class([(1, 1, 1, 0.9), (1, 0, 1, -np.inf)])
    tau = fit_tau(*case)
    assert tau == pytest.approx(0.9)
    assert transferred(*case[1:], tau)[1].tolist() == [True, False]
    assert fit_tau(*one_class([])) == math.inf


@pytest.mark.parametrize("seed", range(4))
def test_cross_fit_tau_fits_each_fold_on_the_others(seed):
    rng = np.random.default_rng(100 + seed)
    y, pred, nb, sim = random_case(rng, 80)
    folds = rng.integers(0, 3, len(y))
    out, replaced, taus = cross_fit_tau(y, pred, nb, sim, folds)
    assert sorted(taus) == [0, 1, 2]
    for k in range(3):
        held = folds == k
        tau = brute_fit_tau(y[~held], pred[~held], nb[~held], sim[~held])
        assert taus[k] == tau
        np.testing.assert_array_equal(replaced[held], sim[held] >= tau)
        np.testing.assert_array_equal(out[held], np.where((sim[held] >= tau)[:, None], nb[held], pred[held]))


def test_settings_read_tau():
    assert TransferSettings.from_config({"transfer": {"tau": "auto"}}).tau == "auto"
    assert TransferSettings.from_config({"transfer": {"tau": 0.5}}).tau == 0.5
    with pytest.raises(ValueError, match="transfer.tau"):
        TransferSettings.from_config({"transfer": {"tau": 2}})
    with pytest.raises(KeyError):
        TransferSettings.from_config({"transfer": {}})


# ---------------------------------------------------------------- run_transfer end to end

D = 16


def unit(rng, n):
    v = rng.normal(size=(n, D)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def write_embeddings(path, rows: pd.DataFrame, vectors, retrieval=0.75, fmt=h5n.EMBEDDINGS_FORMAT):
    """embeddings.h5 in rule embed's layout (hpaflow/h5names.py)."""
    with h5py.File(path, "w") as h5:
        h5.create_dataset(h5n.IDS, data=rows["Id"].to_numpy(object), dtype=h5py.string_dtype())
        h5.create_dataset(h5n.EMB_DATASETS, data=rows["dataset"].to_numpy(object), dtype=h5py.string_dtype())
        h5.create_dataset(h5n.EMB_TEST, data=rows["test"].to_numpy(bool))
        h5.create_dataset(h5n.EMB_EXTERNAL, data=rows["external"].to_numpy(bool))
        h5.create_dataset(h5n.EMB_GROUP, data=rows["group"].to_numpy(np.int64))
        h5.create_dataset(h5n.EMB_TRAINED, data=rows["trained"].to_numpy(bool))
        h5.create_dataset(h5n.LABELS, data=np.stack(rows["labels"]).astype(np.uint8))
        h5.create_dataset(h5n.EMBEDDINGS, data=vectors.astype(np.float32))
        if fmt is not None:
            h5.attrs[h5n.FORMAT] = fmt
        h5.attrs[h5n.EMB_RETRIEVAL] = retrieval


def labels_of(*classes):
    y = np.zeros(NUM_CLASSES, np.uint8)
    y[list(classes)] = 1
    return y


@pytest.fixture
def case(tmp_path):
    """Six Kaggle train fields, eight external ones (antibody groups 10-13), four test fields.

    Test t0's embedding equals external e2's; external e0 and e1 are one antibody (group 10) with equal
    embeddings, and Kaggle k0 joins their group as a near-duplicate with the same embedding too: none of the
    three may match another of them."""
    rng = np.random.default_rng(7)
    kaggle = [f"k{i}" for i in range(6)]
    external = [f"e{i}" for i in range(8)]
    test = ["t0", "t1", "t2", "t3"]
    groups = [10, 1, 2, 3, 4, 5] + [10, 10, 11, 11, 12, 12, 13, 13]
    train_labels = [labels_of(*rng.choice(NUM_CLASSES, rng.integers(1, 3), replace=False)) for _ in range(14)]
    rows = pd.DataFrame(
        {
            "Id": [*kaggle, *external, *test],
            "dataset": ["hpa"] * 6 + ["hpav18"] * 8 + ["hpa_test"] * 4,
            "test": [False] * 14 + [True] * 4,
            "external": [False] * 6 + [True] * 8 + [False] * 4,
            "group": groups + [-1] * 4,
            "trained": [True] * 14 + [False] * 4,
            "labels": train_labels + [np.zeros(NUM_CLASSES, np.uint8)] * 4,
        }
    )
    vectors = unit(rng, len(rows))
    vectors[6] = vectors[7] = vectors[0]  # e0 = e1 = k0, one group
    vectors[14] = vectors[8]  # t0 = e2
    write_embeddings(tmp_path / "embeddings.h5", rows, vectors)

    train = [*kaggle, *external]
    y = np.stack(train_labels)
    pred = np.where(rng.random(y.shape) < 0.85, y, 1 - y).astype(bool)
    ens = Predictions(
        oof_ids=np.array(train),
        oof_probs=rng.random(y.shape).astype(np.float32),
        labels=y,
        folds=np.arange(len(train)) % 3,
        test_ids=np.array(test),
        test_probs=rng.random((len(test), NUM_CLASSES)).astype(np.float32),
    )
    save_predictions(
        ens,
        tmp_path / "ensemble.h5",
        {"final_method": "per_class"},
        {h5n.THRESHOLDS: np.full(NUM_CLASSES, 0.5), h5n.OOF_PRED_CROSS_FITTED: pred},
    )
    # The sample order, not the embeddings' order; t3 predicted nothing.
    sub = pd.DataFrame({"Id": ["t2", "t0", "t3", "t1"], "Predicted": ["0 5", "1", "", "27"]})
    sub.to_csv(tmp_path / "submission_ensemble.csv", index=False)
    return {"dir": tmp_path, "rows": rows, "vectors": vectors, "y": y, "pred": pred, "folds": ens.folds}


def run(case, tau="auto"):
    d = case["dir"]
    out = {
        k: d / "out" / f"{k}.{ext}" for k, ext in [("submission", "csv"), ("neighbours", "csv"), ("metrics", "json")]
    }
    metrics = run_transfer(
        d / "embeddings.h5",
        d / "ensemble.h5",
        d / "submission_ensemble.csv",
        TransferSettings(tau),
        out["submission"],
        out["neighbours"],
        out["metrics"],
    )
    return metrics, out


def test_run_transfer_fixed_tau(case):
    metrics, out = run(case, 0.99)
    sub = pd.read_csv(out["submission"], dtype=str, keep_default_na=False)
    assert list(sub.columns) == ["Id", "Predicted"] and sub["Id"].tolist() == ["t2", "t0", "t3", "t1"]
    e2 = case["rows"].set_index("Id").loc["e2", "labels"]
    # t0 equals e2: its labels; random unit vectors in 16 dimensions lie far below 0.99: kept.
    assert sub["Predicted"].tolist() == ["0 5", " ".join(map(str, np.flatnonzero(e2))), "", "27"]

    nb = pd.read_csv(out["neighbours"], dtype={"Id": str, "neighbour_id": str}, keep_default_na=False)
    assert tuple(nb.columns) == NEIGHBOURS_COLUMNS
    train = case["rows"]["Id"][:14].tolist()
    assert nb["Id"].tolist() == ["t2", "t0", "t3", "t1", *train]
    assert nb["part"].tolist() == ["test"] * 4 + ["oof"] * 14
    t0 = nb.set_index("Id").loc["t0"]
    assert t0["neighbour_id"] == "e2" and t0["similarity"] == pytest.approx(1.0) and bool(t0["replaced"])
    assert nb["replaced"].tolist() == [False, True, False, False] + [False] * 14
    # Every neighbour as the double loop finds it: test fields among all external fields, train fields outside
    # their group. e0, e1 and k0 are identical but one group: none is the other's neighbour.
    rows, v = case["rows"], case["vectors"]
    ref = np.flatnonzero(rows["external"] & ~rows["test"])
    by_id = {i: k for k, i in enumerate(rows["Id"])}
    q = np.array([by_id[i] for i in nb["Id"]])
    qg = np.where(nb["part"] == "test", -1, rows["group"].to_numpy()[q])
    want, want_sim = brute_nearest(v[q], v[ref], qg, rows["group"].to_numpy()[ref])
    assert nb["neighbour_id"].tolist() == rows["Id"].to_numpy()[ref][want].tolist()
    np.testing.assert_allclose(nb["similarity"], want_sim, atol=1e-6)
    shown = nb.set_index("Id")
    for i in ["e0", "e1", "k0"]:
        assert shown.loc[i, "neighbour_id"] not in {"e0", "e1", "k0"} and shown.loc[i, "similarity"] < 0.99

    m = json.loads(out["metrics"].read_text())["transfer"]
    assert m == metrics["transfer"]
    assert m["tau"] == 0.99 and m["tau_setting"] == 0.99 and m["tau_per_fold"] is None
    assert (m["replaced_test"], m["n_test"], m["replaced_oof"], m["n_oof"], m["references"]) == (1, 4, 0, 14, 8)
    want_f1 = f1_score(case["y"], case["pred"], average="macro", zero_division=0)
    assert m["f1_cross_fitted_without"] == pytest.approx(want_f1)
    assert m["f1_cross_fitted_with_transfer"] == pytest.approx(want_f1)  # nothing replaced
    assert m["retrieval_accuracy"] == 0.75
    assert "0.99" in m["why"]


def test_transfer_metrics_name_the_embed_jobs_environment_and_their_own(case):
    """The embed job's stamp in embeddings.h5 (here another torch) and this job's environment; an embeddings.h5
    from before the stamps (the case's own) leaves the embed stage out."""
    here = versions.environment_versions()
    metrics, out = run(case, 0.99)
    assert metrics["software_versions"] == {"transfer": [{**here, "jobs": 1}]}
    embed_env = {**here, "packages": {**here["packages"], "torch": "2.13.0"}}
    with h5py.File(case["dir"] / "embeddings.h5", "a") as h5:
        versions.stamp(h5.attrs, embed_env)
    metrics, out = run(case, 0.99)
    expected = {"embed": [{**embed_env, "jobs": 1}], "transfer": [{**here, "jobs": 1}]}
    assert metrics["software_versions"] == expected
    assert json.loads(out["metrics"].read_text())["software_versions"] == expected


def test_run_transfer_auto_tau_is_cross_fitted_on_the_oof_neighbours(case):
    metrics, out = run(case)
    m = metrics["transfer"]
    nb = pd.read_csv(out["neighbours"], dtype={"Id": str, "neighbour_id": str}, keep_default_na=False)
    oof = nb[nb["part"] == "oof"]
    labels = case["rows"].set_index("Id")["labels"]
    nb_labels = np.stack([labels[i] for i in oof["neighbour_id"]]).astype(bool)
    sim = np.array(
        [
            float(np.dot(case["vectors"][k], case["vectors"][case["rows"]["Id"].tolist().index(j)]))
            for k, j in zip(range(14), oof["neighbour_id"])
        ]
    )
    y, pred, folds = case["y"], case["pred"], case["folds"]
    tau = brute_fit_tau(y, pred, nb_labels, sim)
    assert m["tau"] == (None if tau == math.inf else pytest.approx(tau, abs=1e-6))
    assert m["tau_setting"] == "auto"
    crossed = np.zeros_like(pred)
    for k in range(3):
        held = folds == k
        t = brute_fit_tau(y[~held], pred[~held], nb_labels[~held], sim[~held])
        assert m["tau_per_fold"][str(k)] == (None if t == math.inf else pytest.approx(t, abs=1e-6))
        crossed[held] = np.where((sim[held] >= t)[:, None], nb_labels[held], pred[held])
    assert m["f1_cross_fitted_with_transfer"] == pytest.approx(f1_score(y, crossed, average="macro", zero_division=0))
    assert m["replaced_oof"] == int(oof["replaced"].sum())
    assert m["replaced_test"] == int(nb.loc[nb["part"] == "test", "similarity"].ge(tau - 1e-6).sum())


def test_run_transfer_auto_tau_takes_a_helpful_transfer(case):
    """Every train field's nearest outside its group made a near copy with its own labels: a transfer can only
    help (a row's prediction becomes its truth), so tau is the lowest similarity of the rows it is fitted on."""
    rows = case["rows"]
    rng = np.random.default_rng(3)
    # Each train field i gets a twin external field x{i} (own group 100 + i) with its labels and embedding.
    twins = pd.DataFrame(
        {
            "Id": [f"x{i}" for i in range(14)],
            "dataset": "hpav18",
            "test": False,
            "external": True,
            "group": 100 + np.arange(14),
            "trained": True,
            "labels": list(rows["labels"][:14]),
        }
    )
    all_rows = pd.concat([rows, twins], ignore_index=True)
    v = unit(rng, len(rows))  # no equal fields this time: each twin is clearly the nearest
    vectors = np.vstack([v, v[:14] + 0.01 * rng.normal(size=(14, D)).astype(np.float32)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    write_embeddings(case["dir"] / "embeddings.h5", all_rows, vectors)
    m, out = run(case)
    m = m["transfer"]
    nb = pd.read_csv(out["neighbours"], dtype={"Id": str, "neighbour_id": str}, keep_default_na=False)
    oof = nb[nb["part"] == "oof"]
    assert oof["neighbour_id"].tolist() == [f"x{i}" for i in range(14)]
    sim, folds = oof["similarity"].to_numpy(), case["folds"]
    assert m["tau"] == pytest.approx(sim.min(), abs=1e-6)
    taus = {k: sim[folds != k].min() for k in range(3)}
    assert m["tau_per_fold"] == {str(k): pytest.approx(t, abs=1e-6) for k, t in taus.items()}
    replaced = sim >= np.array([taus[k] for k in folds]) - 1e-6
    assert oof["replaced"].tolist() == replaced.tolist() and 0 < m["replaced_oof"] == replaced.sum() < 14
    crossed = np.where(replaced[:, None], case["y"], case["pred"])
    assert m["f1_cross_fitted_with_transfer"] == pytest.approx(macro_f1(case["y"], crossed))
    assert m["f1_cross_fitted_with_transfer"] > m["f1_cross_fitted_without"]


def test_run_transfer_errors(case):
    d = case["dir"]
    rows = case["rows"].copy()
    rows.loc[rows["Id"] == "t1", "trained"] = True
    write_embeddings(d / "embeddings.h5", rows, case["vectors"])
    with pytest.raises(ValueError, match="trained on test field 't1'"):
        run(case, 0.5)
    write_embeddings(d / "embeddings.h5", case["rows"], case["vectors"], fmt=None)
    with pytest.raises(h5n.FormatError, match="embeddings.h5"):
        run(case, 0.5)
    write_embeddings(d / "embeddings.h5", case["rows"].iloc[1:], case["vectors"][1:])
    with pytest.raises(ValueError, match="no embedding of Id 'k0'"):
        run(case, 0.5)
    write_embeddings(d / "embeddings.h5", case["rows"], case["vectors"])
    pd.DataFrame({"Id": ["t0", "t9"], "Predicted": ["1", "2"]}).to_csv(d / "submission_ensemble.csv", index=False)
    with pytest.raises(ValueError, match="no embedding of Id 't9'"):
        run(case, 0.5)
    assert not (d / "out" / "submission.csv").exists()


def test_figure_writes_a_png(case):
    metrics, out = run(case, 0.99)
    d = case["dir"]
    rng = np.random.default_rng(0)
    ids = case["rows"]["Id"].tolist()
    with h5py.File(d / "shard.h5", "w") as h5:
        h5.create_dataset(h5n.IMAGES, data=rng.integers(0, 256, (len(ids), 16, 16, 4), dtype=np.uint8))
        h5.create_dataset(h5n.IDS, data=np.array(ids, object), dtype=h5py.string_dtype())
        h5.attrs[h5n.FORMAT] = h5n.SHARD_FORMAT
    (d / "index.json").write_text(json.dumps({h5n.FORMAT: h5n.SHARD_FORMAT, "shards": [str(d / "shard.h5")]}))
    png = d / "plots" / "transfer_neighbours.png"
    transfer_neighbours(out["neighbours"], out["metrics"], indexed_shards([d / "index.json"]), png)
    image = cv2.imread(str(png))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100
    assert [p.name for p in png.parent.iterdir()] == [png.name]  # no temporary file left
    with h5py.File(d / "shard.h5", "a") as h5:  # an Id of the figure in no shard: named
        del h5[h5n.IDS]
        h5.create_dataset(h5n.IDS, data=np.array([f"z{i}" for i in ids], object), dtype=h5py.string_dtype())
    with pytest.raises(ValueError, match="in none of the shards"):
        transfer_neighbours(out["neighbours"], out["metrics"], [str(d / "shard.h5")], png)
