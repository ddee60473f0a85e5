"""The antibody embedding (rule embed): ArcFace logits against hand-worked angles, retrieval accuracy against
brute force, the antibody groups and their holdout split, and the real job on tiny shards: the embeddings.h5
layout, no test field ever trained on, and a killed job resuming to the same weights."""

from __future__ import annotations

import json
import logging
import math

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, KillAfterEpoch, Preempted, write_noise_pngs
from hpaflow import h5names as h5n
from hpaflow import versions
from hpaflow.config import validate_config
from hpaflow.duplicates import PAIR_COLUMNS
from hpaflow.embed import (
    ArcFace,
    EmbedSettings,
    antibody_classes,
    antibody_groups,
    embed_rows,
    held_out_count,
    read_fields_of,
    retrieval_accuracy,
    run_embed,
    split_classes,
    train_rows_of,
)
from hpaflow.models import build_model
from hpaflow.shards import ShardSpec, write_shard

SCHEMA = REPO / "config" / "schemas" / "config.schema.yaml"


# --- ArcFace ------------------------------------------------------------------------------------------------


def unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


# Class weights at 30, 90, 180 and 0 degrees (lengths other than 1: the layer normalises them).
WEIGHTS = torch.tensor([[3 * c for c in unit(30)], unit(90), [-0.5, 0.0], unit(0)])


def arcface(scale: float, margin: float) -> ArcFace:
    layer = ArcFace(2, 4, scale, margin)
    with torch.no_grad():
        layer.weight.copy_(WEIGHTS)
    return layer


def test_arcface_logits_by_hand():
    """Embedding along 0 deg (length 2): angles 30, 90, 180 and 0 deg to the classes. s = 2, m = 0.5.
    Target 0: s cos(30 deg + m); target 1: s cos(90 deg + m); target 2: theta + m > pi, so the fallback
    s (cos(pi) - m sin(m)); the others s cos(theta)."""
    s, m = 2.0, 0.5
    e = torch.tensor([[2.0, 0.0]] * 3)
    logits = arcface(s, m)(e, torch.tensor([0, 1, 2]))
    plain = [s * math.cos(math.pi / 6), 0.0, -s, s]
    expected = [
        [s * math.cos(math.pi / 6 + m), *plain[1:]],
        [plain[0], s * math.cos(math.pi / 2 + m), *plain[2:]],
        [*plain[:2], s * (-1 - m * math.sin(m)), plain[3]],
    ]
    torch.testing.assert_close(logits, torch.tensor(expected), atol=1e-5, rtol=0)


def test_arcface_margin_switches_to_the_fallback_past_pi_minus_m():
    """An embedding at 150 deg to class 3 (theta + m = 150 deg + 0.5 rad < pi) takes the margin; at 170 deg
    (theta + m > pi) the fallback cos(theta) - m sin(m)."""
    s, m = 1.0, 0.5
    e = torch.tensor([unit(150), unit(170)])
    logits = arcface(s, m)(e, torch.tensor([3, 3]))[:, 3]
    expected = [math.cos(math.radians(150) + m), math.cos(math.radians(170)) - m * math.sin(m)]
    torch.testing.assert_close(logits, torch.tensor(expected), atol=1e-5, rtol=0)


def test_margin_zero_is_the_scaled_cosine_softmax():
    e = torch.tensor([unit(10), unit(100), unit(-60)])
    y = torch.tensor([0, 2, 3])
    logits = arcface(5.0, 0.0)(e, y)
    cos = [[math.cos(math.radians(a - w)) for w in (30, 90, 180, 0)] for a in (10, 100, -60)]
    torch.testing.assert_close(logits, 5.0 * torch.tensor(cos), atol=1e-5, rtol=0)
    z = 5.0 * np.array(cos)
    ce = np.mean([np.log(np.exp(z[i]).sum()) - z[i, c] for i, c in enumerate([0, 2, 3])])
    assert float(F.cross_entropy(logits, y).detach()) == pytest.approx(ce, abs=1e-5)


def test_gradient_is_finite_where_the_embedding_lies_on_a_class():
    layer = arcface(30.0, 0.5)
    e = torch.tensor([unit(0), unit(90)], requires_grad=True)  # cos = 1 with classes 3 and 1
    F.cross_entropy(layer(e, torch.tensor([3, 1])), torch.tensor([3, 1])).backward()
    assert torch.isfinite(e.grad).all() and torch.isfinite(layer.weight.grad).all()


# --- retrieval accuracy ----------------------------------------------------------------------------------


def test_retrieval_by_hand():
    """a1 and a2 are each other's nearest (hits); b1's nearest is a2 and b2's is c (misses); c is alone in its
    group: a distractor, not counted. 2 hits of 4 counted rows."""
    emb = np.array([unit(0), unit(10), unit(40), unit(120), unit(100)]) * [[1], [3], [1], [1], [0.5]]
    groups = np.array([0, 0, 1, 1, 2])  # rows a1 a2 b1 b2 c, at 0, 10, 40, 120, 100 deg
    assert retrieval_accuracy(emb, groups) == pytest.approx(2 / 4)
    assert math.isnan(retrieval_accuracy(emb[:1], groups[:1]))
    assert math.isnan(retrieval_accuracy(emb, np.arange(5)))  # no group has a second row


def test_retrieval_matches_brute_force():
    rng = np.random.default_rng(0)
    for n in [7, 40, 1500]:  # 1500 rows: more than one block of the similarity matrix
        emb = rng.normal(size=(n, 6))
        groups = rng.integers(0, max(2, n // 3), n)
        norm = np.linalg.norm(emb, axis=1)
        hits = counted = 0
        for i in range(n):  # one row at a time: each row's cosine with every other
            if (groups == groups[i]).sum() < 2:
                continue
            sim = emb @ emb[i] / (norm * norm[i])
            sim[i] = -np.inf
            counted += 1
            hits += groups[np.argmax(sim)] == groups[i]
        assert retrieval_accuracy(emb, groups) == pytest.approx(hits / counted), n


# --- groups and classes ------------------------------------------------------------------------------------

# HPAv18 fields: antibodies 100-105 with 3 fields each, antibody 106 with one; Kaggle train fields k0-k3.
HPA_IDS = [f"{a}_1_A{f + 1}_{f + 1}" for a in range(100, 106) for f in range(3)] + ["106_2_B1_1"]
KAGGLE_IDS = ["k0", "k1", "k2", "k3"]
TEST_IDS = ["t0", "t1", HPA_IDS[3]]  # the last: a test field whose Id is that of a trained HPAv18 field


def pairs_frame(pairs: list[tuple[str, str, str, str, str]]) -> pd.DataFrame:
    rows = [
        {"id_a": a, "dataset_a": da, "id_b": b, "dataset_b": db, "kind": kind, "d_red": 0, "d_green": 0}
        for a, da, b, db, kind in pairs
    ]
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


PAIRS = pairs_frame(
    [
        ("k0", "kaggle_train", HPA_IDS[4], "hpav18", "train-train"),  # k0 copies a field of antibody 101
        ("k1", "kaggle_train", "k2", "kaggle_train", "train-train"),  # two fields, no antibody: no class
        ("k3", "kaggle_train", "106_2_B1_1", "hpav18", "train-train"),  # joins the single-field antibody 106
        (HPA_IDS[0], "hpav18", "t0", "kaggle_test", "train-test"),  # a test copy: joins nothing
    ]
)


def test_groups_join_antibodies_and_kaggle_copies():
    ids = np.array(HPA_IDS + KAGGLE_IDS)
    datasets = np.array(["hpav18"] * len(HPA_IDS) + ["kaggle_train"] * 4)
    groups = antibody_groups(ids, datasets, {"hpav18": "hpav18", "kaggle_train": "plain"}, PAIRS)
    # Numbered by the first row: antibody a's fields from row 3 (a - 100); 106 is row 18, k0..k3 rows 19-22.
    expected = [3 * (a - 100) for a in range(100, 106) for _ in range(3)] + [18, 3, 20, 20, 18]
    assert groups.tolist() == expected
    has_antibody = np.arange(len(ids)) < len(HPA_IDS)
    # k1-k2 has no antibody field; every antibody group has 2+ fields (106 with k3's help).
    assert antibody_classes(groups, has_antibody).tolist() == [0, 3, 6, 9, 12, 15, 18]
    alone = np.array(expected[:19] + [19, 20, 20, 22])  # without the pairs: 106 and k0, k3 alone
    assert antibody_classes(alone, has_antibody).tolist() == [0, 3, 6, 9, 12, 15]


def test_holdout_split_is_drawn_from_seed_disjoint_and_sized():
    assert [held_out_count(n, 0.1) for n in [0, 3, 4, 10, 30, 100]] == [0, 0, 2, 2, 3, 10]
    assert [held_out_count(n, 0.5) for n in [4, 5, 9]] == [2, 2, 4]  # never fewer than 2 trained
    assert held_out_count(100, 0.0) == 0
    classes = np.arange(0, 300, 3)
    trained, held = split_classes(classes, 0.2, seed=7)
    assert len(held) == 20 and len(trained) == 80
    assert not set(trained) & set(held) and sorted({*trained, *held}) == classes.tolist()
    again = split_classes(classes, 0.2, seed=7)
    assert np.array_equal(again[0], trained) and np.array_equal(again[1], held)
    assert not np.array_equal(split_classes(classes, 0.2, seed=8)[1], held)
    none_held = split_classes(classes, 0.0, seed=7)
    assert np.array_equal(none_held[0], classes) and len(none_held[1]) == 0


# --- the job on tiny shards ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def job(tmp_path_factory, one_torch_thread):
    """Shards (real writer, 32 px) of HPAv18 (two shards), Kaggle train and Kaggle test, and duplicates.csv."""
    d = tmp_path_factory.mktemp("embed")
    rng = np.random.default_rng(0)
    write_noise_pngs(d, sorted(set(HPA_IDS + KAGGLE_IDS + TEST_IDS)), rng)
    labels = (rng.random((len(HPA_IDS) + 4, 28)) < 0.2).astype(np.uint8)
    shards = {"hpav18": [str(d / "h0.h5"), str(d / "h1.h5")], "kaggle_train": [str(d / "k.h5")]}
    write_shard(shards["hpav18"][0], ShardSpec("hpav18", "png", str(d), "train", 32), HPA_IDS[:10], labels[:10])
    write_shard(shards["hpav18"][1], ShardSpec("hpav18", "png", str(d), "train", 32), HPA_IDS[10:], labels[10:19])
    write_shard(
        shards["kaggle_train"][0], ShardSpec("kaggle_train", "png", str(d), "train", 32), KAGGLE_IDS, labels[19:]
    )
    shards["kaggle_test"] = [str(d / "t.h5")]
    write_shard(shards["kaggle_test"][0], ShardSpec("kaggle_test", "png", str(d), "test", 32), TEST_IDS, None)
    PAIRS.to_csv(d / "duplicates.csv", index=False)
    return shards, str(d / "duplicates.csv"), labels, d


DATASETS = [
    {"name": "hpav18", "format": "png", "images": "h", "labels": "h.csv", "role": "train"},
    {"name": "kaggle_train", "format": "png", "images": "k", "labels": "k.csv", "role": "train"},
    {"name": "kaggle_test", "format": "png", "images": "t", "labels": "t.csv", "role": "test"},
]


def settings(**transfer) -> EmbedSettings:
    datasets = [dict(d) for d in DATASETS]
    datasets[0] |= {"external": True, "id_format": "hpav18"}
    base = {"backbone": "resnet18", "pretrained": False, "embedding_size": 8, "epochs": 2, "batch_size": 4}
    config = validate_config(
        {
            "data_root": "x",
            "datasets": datasets,
            "models": [{"name": "m", "backbone": "resnet18"}],
            "device": "cpu",
            "transfer": {**base, "lr": 1e-3, "holdout": 0.3, **transfer},
        },
        SCHEMA,
    )
    return EmbedSettings.from_config(config, threads=1)


def read_h5(path) -> dict:
    with h5py.File(path, "r") as h5:
        h5n.check_format(path, "embeddings", h5.attrs.get(h5n.FORMAT))
        out = {k: h5[k][...] for k in h5}
        out[h5n.IDS] = h5[h5n.IDS].asstr()[...]
        out[h5n.EMB_DATASETS] = h5[h5n.EMB_DATASETS].asstr()[...]
        return out | {"attrs": dict(h5.attrs)}


@pytest.fixture(scope="module")
def straight(job, tmp_path_factory):
    """An uninterrupted 3-epoch job (its log kept) and what it wrote."""
    out = tmp_path_factory.mktemp("straight") / "transfer" / "embeddings.h5"
    summary = run_embed(settings(epochs=3), job[0], job[1], out)
    return summary, read_h5(out), out


def test_embeddings_file_has_every_field_in_the_layout(job, straight):
    summary, h5, _ = straight
    n = len(HPA_IDS) + 4 + 3
    assert h5[h5n.IDS].tolist() == HPA_IDS + KAGGLE_IDS + TEST_IDS  # config order, then shard order
    assert h5[h5n.EMB_DATASETS].tolist() == ["hpav18"] * 19 + ["kaggle_train"] * 4 + ["kaggle_test"] * 3
    assert h5[h5n.EMB_TEST].dtype == bool and h5[h5n.EMB_TEST].tolist() == [False] * 23 + [True] * 3
    assert h5[h5n.EMB_EXTERNAL].tolist() == [True] * 19 + [False] * 7
    assert h5[h5n.EMBEDDINGS].dtype == np.float32 and h5[h5n.EMBEDDINGS].shape == (n, 8)
    np.testing.assert_allclose(np.linalg.norm(h5[h5n.EMBEDDINGS], axis=1), 1.0, atol=1e-6)
    assert h5[h5n.LABELS].dtype == np.uint8 and h5[h5n.LABELS].shape == (n, 28)
    np.testing.assert_array_equal(h5[h5n.LABELS][:23], job[2])
    assert not h5[h5n.LABELS][23:].any()
    # Groups numbered by their first field's row; k0 joins antibody 101 (row 3), k3 joins 106 (row 18).
    groups = [3 * (a - 100) for a in range(100, 106) for _ in range(3)] + [18, 3, 20, 20, 18, -1, -1, -1]
    assert h5[h5n.EMB_GROUP].dtype == np.int64 and h5[h5n.EMB_GROUP].tolist() == groups
    # 7 classes, holdout 0.3 -> 2 held out; the trained fields are exactly the other 5 classes' fields.
    classes = [0, 3, 6, 9, 12, 15, 18]
    trained_groups = set(np.array(groups)[h5[h5n.EMB_TRAINED]].tolist())
    assert len(trained_groups) == 5 and trained_groups < set(classes)
    held = set(classes) - trained_groups
    assert set(split_classes(np.array(classes), 0.3, 0)[1].tolist()) == held
    assert h5[h5n.EMB_TRAINED].tolist() == [g in trained_groups for g in groups]
    assert h5["attrs"]["classes_trained"] == 5 and h5["attrs"]["classes_held_out"] == 2
    assert h5["attrs"]["image_size"] == 32  # image_size null: the shards' row side
    # The best epoch is the last with the highest held-out retrieval; the file's figure is that epoch's.
    history = summary["history"]
    retrieval = [r["retrieval"] for r in history]
    assert len(history) == 3 and summary["best_epoch"] == 3 - int(np.argmax(retrieval[::-1]))
    assert h5["attrs"][h5n.EMB_RETRIEVAL] == pytest.approx(retrieval[summary["best_epoch"] - 1])
    held_rows = np.isin(h5[h5n.EMB_GROUP], list(held))
    expected = retrieval_accuracy(h5[h5n.EMBEDDINGS][held_rows], h5[h5n.EMB_GROUP][held_rows])
    assert h5["attrs"][h5n.EMB_RETRIEVAL] == pytest.approx(expected)
    assert [r["epoch"] for r in json.loads(h5["attrs"]["history"])] == [1, 2, 3]
    assert versions.read_stamp(h5["attrs"]) == versions.environment_versions()  # the embed job's environment


def test_no_test_field_is_ever_trained_on(job, straight, tmp_path):
    """Test rows: never trained (even the one whose Id is a trained HPAv18 field's, or a train-test copy of a
    trained field), group -1; training reads only train datasets' shards, and sees exactly the trained rows."""
    _, h5, _ = straight
    test = h5[h5n.EMB_TEST]
    assert not h5[h5n.EMB_TRAINED][test].any() and (h5[h5n.EMB_GROUP][test] == -1).all()
    twin = h5[h5n.IDS] == TEST_IDS[-1]
    assert h5[h5n.EMB_TRAINED][twin].tolist() in ([True, False], [False, False])  # the train one may be trained
    s = settings(epochs=1)
    table = read_fields_of(s, job[0])
    every_field = np.arange(len(table.ids))  # asked for every field, test ones included
    rows, field_of = train_rows_of(table, s, every_field)
    assert {rows.files[k] for k in rows.file_index} <= set(job[0]["hpav18"] + job[0]["kaggle_train"])
    assert not table.test[field_of].any() and len(rows) == 23

    seen: list[int] = []

    def record(module, args):
        if type(module).__name__ == "Classifier" and module.training:
            seen.append(len(args[0]))

    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        out = run_embed(s, job[0], job[1], tmp_path / "embeddings.h5")
    finally:
        hook.remove()
    n = out["trained_fields"]
    assert n == int(h5[h5n.EMB_TRAINED].sum())
    assert sum(seen) == n - (n % 4 == 1)  # a last batch of one is left out (BatchNorm), batch_size 4


def test_a_killed_job_resumes_to_the_same_weights_and_another_job_starts_over(job, straight, tmp_path, caplog):
    _, done, _ = straight
    out = tmp_path / "transfer" / "embeddings.h5"
    caplog.set_level(logging.INFO, logger="hpaflow")
    killer = KillAfterEpoch(1, "epoch %d/%d: loss")
    logging.getLogger("hpaflow").addHandler(killer)
    try:
        with pytest.raises(Preempted):
            run_embed(settings(epochs=3), job[0], job[1], out)
    finally:
        logging.getLogger("hpaflow").removeHandler(killer)
    assert not out.exists()
    last = torch.load(out.parent / "checkpoints" / "last.pt", weights_only=False)
    assert last["epoch"] == 0 and len(last["history"]) == 1
    caplog.clear()
    resumed = run_embed(settings(epochs=3), job[0], job[1], out)
    assert "resuming from" in caplog.text and "epoch 1 of 3 done" in caplog.text
    np.testing.assert_allclose(read_h5(out)[h5n.EMBEDDINGS], done[h5n.EMBEDDINGS], atol=1e-5, rtol=0)
    assert resumed["best_epoch"] == straight[0]["best_epoch"]
    # The last epoch's weights too (the embeddings are the best epoch's, which may be the first).
    ends = [torch.load(p.parent / "checkpoints" / "last.pt", weights_only=False) for p in (straight[2], out)]
    for key in ["model", "arcface"]:
        for name, w in ends[0][key].items():
            torch.testing.assert_close(ends[1][key][name], w, atol=1e-6, rtol=0, msg=name)

    caplog.clear()
    run_embed(settings(epochs=3, margin=0.3), job[0], job[1], out)  # another job: starts over
    assert "from another job (changed: embed settings)" in caplog.text and "resuming" not in caplog.text


def test_without_holdout_the_last_epoch_is_kept(job, tmp_path):
    out = run_embed(settings(epochs=2, holdout=0.0), job[0], job[1], tmp_path / "e.h5")
    assert out["best_epoch"] == 2 and out["classes_held_out"] == 0 and math.isnan(out["retrieval"])
    h5 = read_h5(tmp_path / "e.h5")
    assert math.isnan(h5["attrs"][h5n.EMB_RETRIEVAL])
    assert h5[h5n.EMB_TRAINED].sum() == 21  # every class's fields: 6 x 3 + k0 + 106 + k3


def tiled_shard(path, ids, tiles, origins) -> None:
    """A shard in the h5names layout by hand: rows = tiles, each with its field's Id."""
    with h5py.File(path, "w") as h5:
        h5.attrs[h5n.FORMAT] = h5n.SHARD_FORMAT
        h5.create_dataset(h5n.IMAGES, data=tiles, chunks=(1, *tiles.shape[1:]))
        h5.create_dataset(h5n.IDS, data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
        h5.create_dataset(h5n.TILE_ORIGIN, data=origins)


def test_a_tiled_field_is_the_normalised_mean_of_its_tiles(tmp_path, one_torch_thread):
    from hpaflow.data import ShardRows

    rng = np.random.default_rng(1)
    tiles = rng.integers(0, 256, (8, 16, 16, 4), dtype=np.uint8)
    origins = np.array([(0, 0), (0, 16), (16, 0), (16, 16)] * 2, np.int32)
    tiled_shard(tmp_path / "tiled.h5", ["a"] * 4 + ["b"] * 4, tiles, origins)
    tiled_shard(tmp_path / "apart.h5", [f"tile{i}" for i in range(8)], tiles, np.zeros((8, 2), np.int32))
    torch.manual_seed(0)
    net = build_model("resnet18", 4, num_classes=5)
    device = torch.device("cpu")
    ids, emb = embed_rows(net, ShardRows.from_files([tmp_path / "tiled.h5"]), 16, 3, device, 0, "tiled")
    _, each = embed_rows(net, ShardRows.from_files([tmp_path / "apart.h5"]), 16, 3, device, 0, "apart")
    assert ids.tolist() == ["a", "b"] and emb.dtype == np.float32
    means = each.reshape(2, 4, 5).mean(1)
    np.testing.assert_allclose(emb, means / np.linalg.norm(means, axis=1, keepdims=True), atol=1e-5)


def test_bad_inputs_are_named(job, tmp_path):
    s = settings()
    with pytest.raises(ValueError, match=r"^dataset kaggle_test: no shard files$"):
        read_fields_of(s, {k: v for k, v in job[0].items() if k != "kaggle_test"})
    twice = {**job[0], "kaggle_train": job[0]["hpav18"][:1]}
    with pytest.raises(ValueError, match=r"Id '100_1_A1_1' appears twice among the train fields \(hpav18, kaggle"):
        read_fields_of(s, twice)
    with pytest.raises(ValueError, match=r"other_set, which the config's datasets do not name"):
        read_fields_of(s, {**job[0], "other_set": job[0]["hpav18"]})
    few = {"hpav18": job[0]["hpav18"][1:], "kaggle_train": job[0]["kaggle_train"], "kaggle_test": job[0]["kaggle_test"]}
    no_pairs = tmp_path / "none.csv"
    pairs_frame([]).to_csv(no_pairs, index=False)
    # h1.h5 alone: antibodies 103 (2 of its 3 fields), 104, 105 and 106 (1 field): 3 classes, too few to hold out.
    assert run_embed(settings(epochs=1), few, no_pairs, tmp_path / "e.h5")["classes_trained"] == 3
    one = tmp_path / "one.h5"
    write_shard(one, ShardSpec("hpav18", "png", str(job[3]), "train", 32), HPA_IDS[:3], job[2][:3])
    with pytest.raises(ValueError, match=r"^1 antibody group\(s\) of at least 2 fields among 7 train fields"):
        run_embed(settings(), {**few, "hpav18": [str(one)]}, no_pairs, tmp_path / "e2.h5")
