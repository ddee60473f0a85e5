"""Near-duplicate fields: pHash equal to imagehash, the exact blocked pair search, groups, what the
folds do with them, the leak report, and the duplicates the demo plants found by the whole chain
(demo -> shards -> pairs)."""

from __future__ import annotations

import dataclasses
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import h5py
import imagehash
import numpy as np
import pandas as pd
import pytest
import scipy.fftpack
from PIL import Image

from conftest import DATA, SHARED, needs_shared
from hpaflow import duplicates, hashing
from hpaflow.demo import DemoSpec, make_demo, render, sample_label_sets
from hpaflow.duplicates import (
    PAIR_COLUMNS,
    DuplicateSettings,
    Fields,
    antibodies,
    antibody,
    class_spread,
    components,
    external_copies,
    find_pairs,
    hamming,
    leak_report,
    pairs_table,
    train_groups,
)
from hpaflow.folds import assign_folds, folds_table, group_folds
from hpaflow.h5names import FormatError
from hpaflow.hashing import phash, phash_rgby, pillow_coefficients, shrink
from hpaflow.io import read_rgby
from hpaflow.labels import LabelTable, encode, read_labels
from hpaflow.shards import ShardSpec, read_fields, read_shard, shard_hashes, write_shard

ALL = ["red", "green", "blue", "yellow"]
DEFAULT = DuplicateSettings(12, ALL, True, "group")  # the schema's defaults
HPAV18 = {"hpav18": "hpav18"}  # datasets[].id_format as config/config.yaml sets it


def reference(plane: np.ndarray) -> int:
    """imagehash's pHash of a plane, as the integer its hex string reads."""
    return int(str(imagehash.phash(Image.fromarray(plane))), 16)


# --- pHash ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [None, 512, 64])
def test_phash_equals_imagehash_on_a_real_hpav18_field(size):
    """Each plane of a real 1728 px HPAv18 field, at full size and resized as the shards resize it."""
    rgby = read_rgby(DATA, "89_B5_1", "jpg", size)
    assert rgby.shape[:2] == ((1728, 1728) if size is None else (size, size))
    got = phash_rgby(rgby)
    assert got.dtype == np.uint64 and got.shape == (4,)
    want = [reference(np.ascontiguousarray(rgby[:, :, c])) for c in range(4)]
    assert [int(h) for h in got] == want
    assert [int(phash(rgby[:, :, c])) for c in range(4)] == want  # a strided plane too
    assert len(set(want)) == 4  # four different planes: four different hashes


@pytest.mark.parametrize("size", [32, 64, 100])
def test_phash_equals_imagehash_on_demo_fields(size):
    """Synthetic demo planes (sparse, often dark) at sizes below, at and above the 32 px the hash shrinks to."""
    for seed, labels in enumerate([[], [0], [2, 25], [14, 17]]):
        rgby = render(labels, size, np.random.default_rng(seed))
        assert [int(h) for h in phash_rgby(rgby)] == [reference(np.ascontiguousarray(rgby[:, :, c])) for c in range(4)]


def test_phash_of_a_blank_plane_is_zero():
    """All coefficients equal the median (0): no bit is above it, as in imagehash."""
    blank = np.zeros((64, 64), np.uint8)
    assert reference(blank) == 0
    assert int(phash(blank)) == 0
    assert phash_rgby(np.zeros((16, 16, 4), np.uint8)).tolist() == [0, 0, 0, 0]


def test_phash_bit_order_is_dct_row_major_from_the_top_bit():
    """Bit 63 is DCT coefficient (0, 0), bit 63 - (8 r + c) is (r, c): imagehash's 8 x 8 array read row by row."""
    rgby = read_rgby(DATA, "89_B5_1", "jpg", 256)
    for c in range(4):
        plane = np.ascontiguousarray(rgby[:, :, c])
        bits = imagehash.phash(Image.fromarray(plane)).hash  # (8, 8) bool: row r, column c of the DCT
        h = int(phash(plane))
        assert [[(h >> (63 - (8 * r + k))) & 1 for k in range(8)] for r in range(8)] == bits.astype(int).tolist()
        assert h >> 63 == 1  # the mean of a non-blank plane (the DC term) is above the median
    # A 32 px plane (not resized) made of the 8 x 8 lowest cosines, +1 at 32 chosen positions (the DC
    # term among them) and -1 at the rest: exactly the chosen bits are set, counted from the top.
    chosen = np.concatenate([[0], 1 + np.random.default_rng(0).permutation(63)[:31]])
    coefficients = np.zeros((32, 32))
    coefficients[:8, :8] = np.where(np.isin(np.arange(64), chosen), 1.0, -1.0).reshape(8, 8)
    plane = scipy.fftpack.idct(scipy.fftpack.idct(coefficients, axis=0), axis=1)
    plane = np.round(128 + plane / np.abs(plane).max() * 100).astype(np.uint8)
    assert int(phash(plane)) == sum(1 << (63 - int(k)) for k in chosen) == reference(plane)


def pillow_shrunk(plane: np.ndarray) -> np.ndarray:
    """Pillow's own 32 x 32 Lanczos shrink of a plane, as imagehash makes it."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(plane)).resize((32, 32), Image.Resampling.LANCZOS))


def planes_of_every_kind(side: int, rng: np.random.Generator) -> list[np.ndarray]:
    """(H, W, 4) images: noise, flat planes (0, 255 and mid grey), a sparse demo field, a smooth ramp."""
    ramp = np.add.outer(np.arange(side), np.arange(side)) * 255 // max(2 * side - 2, 1)
    return [
        rng.integers(0, 256, (side, side, 4), dtype=np.uint8),
        np.stack([np.full((side, side), v, np.uint8) for v in (0, 255, 128, 7)], -1),
        render(sample_label_sets(1, rng)[0], side, rng),
        np.stack([ramp, ramp.T, 255 - ramp, ramp[::-1]], -1).astype(np.uint8),
    ]


@pytest.mark.parametrize("side", [512, 768, 1024, 2048, 500, 1000, 48, 33, 32, 31, 16, 5])
def test_shrink_equals_pillow_and_phash_imagehash_at_every_side(side):
    """Integer and non-integer scales, shrinking and enlarging (below 32 px), 32 px itself (not resampled)."""
    rng = np.random.default_rng(side)
    for rgby in planes_of_every_kind(side, rng):
        small = shrink(np.ascontiguousarray(rgby.transpose(2, 0, 1)))
        assert small.shape == (4, 32, 32) and small.dtype == np.uint8
        for c in range(4):
            assert np.array_equal(small[c], pillow_shrunk(rgby[:, :, c])), (side, c)
        assert [int(h) for h in phash_rgby(rgby)] == [reference(np.ascontiguousarray(rgby[:, :, c])) for c in range(4)]


def test_shrink_of_tiles_and_non_square_planes_equals_pillow():
    """Planes that are not square (each side its own weights) and tiles cut from a real field."""
    rgby = read_rgby(DATA, "89_B5_1", "jpg", 512)
    for plane in [rgby[:100, :, 0], rgby[:, :48, 1], rgby[128:384, 256:512, 2], rgby[:32, :300, 3]]:
        assert np.array_equal(shrink(np.ascontiguousarray(plane)[None])[0], pillow_shrunk(plane))
        assert int(phash(plane)) == reference(np.ascontiguousarray(plane))
    tiles = rgby.reshape(2, 256, 2, 256, 4).transpose(0, 2, 1, 3, 4).reshape(4, 256, 256, 4)
    for tile in tiles:
        assert [int(h) for h in phash_rgby(tile)] == [reference(np.ascontiguousarray(tile[:, :, c])) for c in range(4)]


def test_pillow_coefficients_are_normalised_22_bit_lanczos_weights():
    """512 -> 32: 16 px per output, a 97-tap window (support 3 x 16 each side) summing to 2**22 within rounding,
    symmetric about the output's centre; edge outputs have clipped windows, renormalised."""
    k = pillow_coefficients(512, 32)
    assert k.shape == (512, 32) and k.dtype == np.int64
    nonzero = [np.flatnonzero(k[:, j]) for j in range(32)]
    assert (nonzero[16][0], nonzero[16][-1]) == (16 * 16 + 8 - 48, 16 * 16 + 8 + 47)  # centre 264, 96 taps
    assert np.abs(k.sum(0) - (1 << 22)).max() <= 48  # one rounding of at most 1/2 per tap
    assert np.array_equal(k[216:264, 16], k[264:312, 16][::-1])
    assert nonzero[0][0] == 0 and k[:, 0].max() > k[:, 16].max()  # clipped at the left, larger weights


@pytest.mark.parametrize("width", [512, 600, 1024, 2048])
def test_horizontal_pass_equals_pillows_on_noise(width):
    """The float32 pass with its exact recomputation near rounding steps, output by output against Pillow's
    horizontal pass alone (a resize that keeps the height). Float32 alone misses ~1 in 40,000 of these."""
    planes = np.random.default_rng(width).integers(0, 256, (2, 1024, width), dtype=np.uint8)
    got = hashing._resample(planes.reshape(1, 2048, width), hashing._plan(width, 32)).reshape(2, 1024, 32)
    for plane, mine in zip(planes, got):
        assert np.array_equal(mine, np.asarray(Image.fromarray(plane).resize((32, 1024), Image.Resampling.LANCZOS)))


def test_every_output_recomputed_exactly_or_none_gives_the_same_shrink(monkeypatch):
    """The float32 products with the exact recomputation of the outputs near a rounding step: forced on every
    output (a bound of 0.5 level), or on none with the whole pass exact (float64), the shrink is Pillow's."""
    rng = np.random.default_rng(3)
    planes = np.stack([rng.integers(0, 256, (600, 600), dtype=np.uint8), render([0, 25], 600, rng)[:, :, 1]])
    want = np.stack([pillow_shrunk(p) for p in planes])
    assert np.array_equal(shrink(planes), want)
    for tol, share in [(0.5, 1.0), (0.5, 0.0)]:  # all outputs fixed one by one; all near: the exact pass
        monkeypatch.setattr(hashing, "EXACT_SHARE", share)
        horizontal = dataclasses.replace(hashing._plan(600, 32), tol=tol)
        x = hashing._resample(planes.reshape(1, 1200, 600), horizontal).reshape(2, 600, 32)
        t = np.ascontiguousarray(x.transpose(0, 2, 1)).reshape(1, 64, 600)
        got = hashing._resample(t, dataclasses.replace(hashing._plan(600, 32), tol=tol)).reshape(2, 32, 32)
        assert np.array_equal(got.transpose(0, 2, 1), want), (tol, share)


def test_phash_on_threads_at_once_equals_one_thread():
    """Each thread has its own work arrays: four threads hashing different fields get what one thread gets."""
    rng = np.random.default_rng(5)
    fields = [render(sample_label_sets(1, rng)[0], side, rng) for side in (512, 300, 512, 64) * 4]
    want = [phash_rgby(f).tolist() for f in fields]
    with ThreadPoolExecutor(4) as pool:
        assert [h.tolist() for h in pool.map(phash_rgby, fields)] == want


# --- the pair search --------------------------------------------------------------------------------


def brute_force(hashes: np.ndarray, max_distance: int, channels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Every pair i < j within max_distance on each channel, row-major order, by the full N x N table."""
    ok = np.ones((len(hashes), len(hashes)), bool)
    for c in channels:
        ok &= hamming(hashes[:, None, c], hashes[None, :, c]) <= max_distance
    return np.nonzero(np.triu(ok, 1))


def flip(h: np.ndarray, n_bits: int, rng: np.random.Generator) -> np.ndarray:
    """h with exactly n_bits random bits flipped."""
    mask = sum(1 << int(b) for b in rng.choice(64, n_bits, replace=False))
    return h ^ np.uint64(mask)


@pytest.fixture(scope="module")
def planted_hashes():
    """3,000 random 4-plane hashes; 40 near pairs (each plane 0..12 bits apart, some planes at exactly
    12 and 0) and 12 pairs 13 bits apart on one plane (`far_on` says which), the others near."""
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**64, (3000, 4), dtype=np.uint64, endpoint=False)
    rows = rng.permutation(3000)[:104].reshape(52, 2)
    rows.sort(axis=1)
    near, far, far_on = [], [], []
    for p, (a, b) in enumerate(rows):
        bits = rng.integers(0, 13, 4)
        if p < 40:
            bits[p % 4] = [0, 12][p % 2]
            near.append((a, b))
        else:
            bits[p % 4] = 13
            far.append((a, b))
            far_on.append(p % 4)
        h[b] = [flip(h[a, c], int(bits[c]), rng) for c in range(4)]
    return h, sorted((int(a), int(b)) for a, b in near), [(int(a), int(b)) for a, b in far], far_on


@pytest.mark.parametrize("channels", [[0, 1, 2, 3], [1], [3, 0], [0, 2, 3]])
def test_find_pairs_equals_brute_force(planted_hashes, channels):
    """Exact: every pair within the distance on all selected planes, none more, in (i, j) order, with
    its distances on all four planes; one or two threads alike."""
    h, near, far, far_on = planted_hashes
    i, j, d = find_pairs(h, 12, channels, threads=1)
    bi, bj = brute_force(h, 12, channels)
    assert np.array_equal(i, bi) and np.array_equal(j, bj)
    assert i.dtype == j.dtype == d.dtype == np.int64 and d.shape == (len(i), 4)
    assert np.array_equal(d, hamming(h[i], h[j]))
    found = set(zip(i.tolist(), j.tolist()))
    assert set(near) <= found  # 0..12 bits on every plane: found whatever the planes
    for pair, c in zip(far, far_on):  # 13 bits on plane c: found exactly when c is not selected
        assert (pair in found) == (c not in channels), (pair, c)
    if channels == [0, 1, 2, 3]:
        assert sorted(found) == near  # random hashes are about 32 bits apart: nothing else
    i2, j2, d2 = find_pairs(h, 12, channels, threads=2)
    assert np.array_equal(i2, i) and np.array_equal(j2, j) and np.array_equal(d2, d)


@pytest.mark.parametrize("n,row_block,col_block", [(600, 7, 13), (3000, 64, 100), (150, 1, 1), (3000, 500, 3000)])
def test_find_pairs_is_exact_across_block_edges(planted_hashes, monkeypatch, n, row_block, col_block):
    """Blocks that do not divide N, blocks of one, a column block of all: the same pairs as brute force
    (the first n rows and the planted pairs' rows)."""
    h, near, far, _ = planted_hashes
    h = h[np.unique(np.concatenate([np.arange(n), np.ravel(near), np.ravel(far)]))]
    monkeypatch.setattr(duplicates, "ROW_BLOCK", row_block)
    monkeypatch.setattr(duplicates, "COL_BLOCK", col_block)
    for max_distance, channels in [(12, [0, 1, 2, 3]), (26, [2])]:  # 26 bits: many random pairs, across blocks
        i, j, d = find_pairs(h, max_distance, channels, threads=2)
        bi, bj = brute_force(h, max_distance, channels)
        assert len(bi) > 0
        assert np.array_equal(i, bi) and np.array_equal(j, bj)
        assert np.array_equal(d, hamming(h[i], h[j]))


def test_find_pairs_adjacent_rows_and_exact_copies(monkeypatch):
    """Equal rows {0, 1}, {3, 4, 9}, {7, 18, 19} with blocks of 4 rows and 5 columns: pairs within a
    row block, across a row-block edge (3, 4) and a column-block edge (4, 9); distance 0 with
    max_distance 0; nothing from fewer than two rows."""
    monkeypatch.setattr(duplicates, "ROW_BLOCK", 4)
    monkeypatch.setattr(duplicates, "COL_BLOCK", 5)
    h = np.random.default_rng(1).integers(0, 2**64, (20, 2), dtype=np.uint64, endpoint=False)
    for group in [(0, 1), (3, 4, 9), (7, 18, 19)]:
        h[list(group)] = h[group[0]]
    want = [(0, 1), (3, 4), (3, 9), (4, 9), (7, 18), (7, 19), (18, 19)]
    i, j, d = find_pairs(h, 0, [0, 1])
    assert list(zip(i.tolist(), j.tolist())) == want
    assert not d.any()
    for n in [0, 1]:
        i, j, d = find_pairs(h[:n], 12, [0, 1], threads=2)
        assert len(i) == len(j) == 0 and d.shape == (0, 2)


def test_hamming_counts_differing_bits():
    a = np.array([0, 2**64 - 1, 0b1011, 1 << 63], np.uint64)
    b = np.array([0, 0, 0b0110, 1], np.uint64)
    assert hamming(a, b).tolist() == [0, 64, 3, 2]
    assert hamming(a[:, None], b[None, :]).shape == (4, 4)


# --- groups, copies, the report -----------------------------------------------------------------------


def test_components_number_each_node_by_its_smallest_member():
    assert components(6, np.array([0, 3, 4]), np.array([2, 4, 5])).tolist() == [0, 1, 0, 3, 3, 3]
    # Edges from the larger end, and a chain joined through its last member.
    assert components(7, np.array([6, 5, 4, 6]), np.array([5, 4, 2, 1])).tolist() == [0, 1, 1, 3, 1, 1, 1]
    assert components(3, np.zeros(0, np.int64), np.zeros(0, np.int64)).tolist() == [0, 1, 2]
    assert components(4, np.array([2, 2]), np.array([2, 3])).tolist() == [0, 1, 2, 2]  # a self-edge changes nothing


@pytest.mark.parametrize(
    "image_id,want",
    [
        ("10580_1610_C1_1", "10580"),
        ("1000_245_F8_1", "1000"),
        ("63683_si35_H1_11", "63683"),  # an siRNA plate
        ("11651_1732_F3_13_cr580610dc203b9", "11651"),  # a crop suffix
        ("11651_1732_F3_13_cr", None),
        ("89_B5_1", None),  # no plate
        ("10580_1610_C1", None),
        ("10580_1610_C1_1_x", None),
        ("a10580_1610_C1_1", None),
        ("00070df0-bbc3-11e8-b2bc-ac1f6b6435d0", None),  # a Kaggle Id
    ],
)
def test_antibody_of_hpav18_ids_only(image_id, want):
    assert antibody(image_id) == want


@needs_shared
def test_every_real_hpav18_id_names_its_antibody():
    """All 74,606 Ids of HPAv18RBGY_wodpl.csv (siRNA plates and crop suffixes included): 12,815 antibodies
    of at most 16 fields, each the Id's first number."""
    ids = pd.read_csv(SHARED / "hpa" / "HPAv18RBGY_wodpl.csv")["Id"].to_numpy()
    got = antibodies(ids, np.full(len(ids), "hpav18"), HPAV18)
    assert got.tolist() == [i.split("_")[0] for i in ids]
    assert len(set(got)) == 12815 and pd.Series(got).value_counts().max() == 16


def test_antibodies_only_where_the_dataset_declares_hpav18_ids():
    """A lab's Ids that merely look like HPAv18 ones (plain, or no id_format given) name no antibody; a
    declared dataset's Id that does not follow the pattern, or an unknown id_format, is an error naming it."""
    ids = np.array(["7_1_A1_1", "7_1_A1_2", "10_2_B2_1", "k0"])
    datasets = np.array(["lab", "lab", "hpa", "kaggle"])
    assert antibodies(ids, datasets, {}).tolist() == [None] * 4
    assert antibodies(ids, datasets, {"lab": "plain", "hpa": "hpav18"}).tolist() == [None, None, "10", None]
    assert antibodies(ids, datasets, {"lab": "hpav18", "hpa": "hpav18"}).tolist() == ["7", "7", "10", None]
    with pytest.raises(ValueError, match=r"^dataset kaggle \(id_format: hpav18\): Id 'k0' is not \{antibody\}_"):
        antibodies(ids, datasets, {"kaggle": "hpav18"})
    with pytest.raises(ValueError, match=r"^dataset lab: id_format 'hpa' is not one of plain, hpav18$"):
        antibodies(ids, datasets, {"lab": "hpa"})


def fields_table(rows):
    """Fields from (id, dataset, train, hashes, labels) rows."""
    return Fields(
        np.array([r[0] for r in rows]),
        np.array([r[1] for r in rows]),
        np.array([r[2] for r in rows]),
        np.array([r[3] for r in rows], np.uint64),
        encode([r[4] for r in rows]),
    )


def flip_bits(h, bits_per_plane):
    """h (4 planes) with the given bit positions flipped on each plane."""
    return [v ^ np.uint64(sum(1 << b for b in bits)) for v, bits in zip(h, bits_per_plane)]


def test_pairs_table_puts_the_train_field_first_and_drops_test_test_pairs():
    """Test field T (row 0) is 1-4 bits from train A (row 1) and 12 red bits from test U: A-T is kept as
    train-test with A first, T-U is dropped; A-B (12, 0, 0, 12 bits) and A-C (a copy) are train-train,
    labels agreeing for B, not for C; U is 13 red bits from A, D is far from all; E is near A on red
    only, which the default (all planes) rejects and channels [red] accepts."""
    h = list(np.random.default_rng(5).integers(0, 2**63, 4, dtype=np.uint64))
    t_bits = [{40}, {40, 41}, {40, 41, 42}, {40, 41, 42, 43}]
    rows = [
        ("T", "test_set", False, flip_bits(h, t_bits), []),
        ("A", "kaggle", True, h, [0, 5]),
        ("U", "test_set", False, flip_bits(h, [{40, *range(20, 32)}, *t_bits[1:]]), []),
        ("B", "hpav18", True, flip_bits(h, [range(12), (), (), range(12)]), [0, 5]),
        ("C", "kaggle", True, h, [0]),
        ("D", "kaggle", True, flip_bits(h, [range(64)] * 4), [1]),
        ("E", "hpav18", True, flip_bits(h, [{60, 61, 62}, *[range(30)] * 3]), [0, 5]),
    ]
    f = fields_table(rows)
    table = pairs_table(f, DEFAULT)
    assert list(table.columns) == PAIR_COLUMNS
    got = [tuple(r) for r in table[["id_a", "dataset_a", "id_b", "dataset_b", "kind"]].itertuples(index=False)]
    # Order: the search's (i, j); T-A is (0, 1), T-C (0, 4), A-B (1, 3), A-C (1, 4), B-C (3, 4).
    assert got == [
        ("A", "kaggle", "T", "test_set", "train-test"),
        ("C", "kaggle", "T", "test_set", "train-test"),
        ("A", "kaggle", "B", "hpav18", "train-train"),
        ("A", "kaggle", "C", "kaggle", "train-train"),
        ("B", "hpav18", "C", "kaggle", "train-train"),
    ]
    assert table["labels_agree"].dtype == "boolean"
    assert table["labels_agree"].tolist() == [pd.NA, pd.NA, True, False, False]
    assert table[["d_red", "d_green", "d_blue", "d_yellow"]].iloc[[0, 2, 3]].to_numpy().tolist() == [
        [1, 2, 3, 4],
        [12, 0, 0, 12],
        [0, 0, 0, 0],
    ]
    red = pairs_table(f, DuplicateSettings(12, ["red"], True, "group"))
    assert ("A", "E") in set(zip(red["id_a"], red["id_b"])) and "E" not in set(table["id_b"])
    tight = pairs_table(f, DuplicateSettings(11, ALL, True, "group"))  # B is 12 bits off A on red
    assert list(zip(tight["id_a"], tight["id_b"])) == [("A", "T"), ("C", "T"), ("A", "C")]
    only_test = fields_table([r for r in rows if not r[2]])  # T-U alone: nothing to report
    empty = pairs_table(only_test, DEFAULT)
    assert list(empty.columns) == PAIR_COLUMNS and len(empty) == 0


def pairs_frame(rows):
    """duplicates.csv rows (id_a, dataset_a, id_b, dataset_b, kind, labels_agree); distances 0."""
    df = pd.DataFrame(rows, columns=["id_a", "dataset_a", "id_b", "dataset_b", "kind", "labels_agree"])
    for c in ALL:
        df[f"d_{c}"] = 0
    df["labels_agree"] = pd.array(df["labels_agree"], dtype="boolean")
    return df[PAIR_COLUMNS]


def test_train_groups_join_pairs_chains_and_antibodies():
    """k1-k3-k4 is one chain (a group numbered by its first row); antibody 10's two fields are one
    group, joined with k2 by a pair; train-test pairs (even one whose test Id is also a train Id) and
    pairs with an Id not in the table are ignored."""
    ids = np.array(["k0", "k1", "k2", "k3", "10_1_A1_1", "10_2_B2_1", "11_1_A1_1", "k4", "11_9_H12_4"])
    pairs = pairs_frame(
        [
            ("k3", "kaggle", "k4", "kaggle", "train-train", True),
            ("k1", "kaggle", "k3", "kaggle", "train-train", True),
            ("k2", "kaggle", "10_2_B2_1", "hpav18", "train-train", False),
            ("k0", "kaggle", "t0", "test", "train-test", None),
            ("k0", "kaggle", "k2", "other_test", "train-test", None),  # a test field with a train field's Id
            ("k0", "kaggle", "gone", "other", "train-train", True),
        ]
    )
    antibody_of = np.array([antibody(i) for i in ids], object)
    assert train_groups(ids, pairs, antibody_of).tolist() == [0, 1, 2, 1, 2, 2, 6, 1, 6]
    assert train_groups(ids, pairs, None).tolist() == [0, 1, 2, 1, 4, 2, 6, 1, 8]
    assert train_groups(ids, pairs.iloc[:0], None).tolist() == list(range(9))
    assert train_groups(ids, pairs.iloc[:0], antibody_of).tolist() == [0, 1, 2, 3, 4, 4, 6, 7, 6]


def test_external_copies_are_external_rows_paired_with_a_non_external_train_row():
    """e0 copies k0 (external second), e1 copies f0 (external first): both left out; e2-e1 (both
    external), k1-f0 (neither), e2-test (train-test) leave out nothing."""
    table = pd.DataFrame(
        {
            "Id": ["k0", "k1", "e0", "e1", "e2", "f0"],
            "dataset": ["kaggle", "kaggle", "hpav18", "hpav18", "hpav18", "tiff"],
        }
    )
    pairs = pairs_frame(
        [
            ("k0", "kaggle", "e0", "hpav18", "train-train", True),
            ("e1", "hpav18", "f0", "tiff", "train-train", False),
            ("e2", "hpav18", "e1", "hpav18", "train-train", True),
            ("k1", "kaggle", "f0", "tiff", "train-train", True),
            ("e2", "hpav18", "t0", "test", "train-test", None),
        ]
    )
    assert external_copies(table, pairs, {"hpav18"}).tolist() == [False, False, True, True, False, False]
    assert external_copies(table, pairs, set()).tolist() == [False] * 6
    # tiff external too: e1-f0 links two external rows; k1-f0 makes f0 a copy of k1.
    assert external_copies(table, pairs, {"hpav18", "tiff"}).tolist() == [False, False, True, False, False, True]


def test_leak_report_counts(tmp_path):
    """Pairs a-b (one fold), b-c and d-e (split), e-x (x left out: not counted as split), c-y (y in no
    fold: not counted); two label conflicts; two train-test pairs; read back from csv as the workflow does."""
    pairs = pairs_frame(
        [
            ("a", "k", "b", "k", "train-train", True),
            ("b", "k", "c", "k", "train-train", False),
            ("d", "k", "e", "h", "train-train", False),
            ("e", "h", "x", "h", "train-train", True),
            ("c", "k", "y", "h", "train-train", True),
            ("a", "k", "t1", "test", "train-test", None),
            ("d", "k", "t2", "test", "train-test", None),
        ]
    )
    folds = pd.DataFrame(
        {
            "Id": ["a", "b", "c", "d", "e", "x", "f"],
            "dataset": ["k", "k", "k", "k", "h", "h", "k"],
            "fold": [0, 0, 1, 1, 2, -1, 2],
            "group": [0, 0, 2, 3, 3, 3, 6],
        }
    )
    settings = DuplicateSettings(10, ["green", "blue"], True, "drop_external")
    want = {
        "policy": "drop_external",
        "max_distance": 10,
        "channels": ["green", "blue"],
        "train_train_pairs": 5,
        "train_train_groups": 2,  # {a, b, c, y} and {d, e, x}
        "train_test_pairs": 2,
        "label_conflicts": 2,
        "pairs_split_across_folds": 2,
        "dropped_external": 1,
        "fold_groups_with_several_fields": 2,
        "largest_fold_group": 3,
    }
    assert leak_report(pairs, folds, settings) == want
    pairs.to_csv(tmp_path / "duplicates.csv", index=False)
    folds.to_csv(tmp_path / "folds.csv", index=False)
    read = pd.read_csv(tmp_path / "duplicates.csv", dtype={"id_a": str, "id_b": str})
    assert leak_report(read, pd.read_csv(tmp_path / "folds.csv", dtype={"Id": str}), settings) == want
    # Without a group column every row is its own group; with no pairs nothing is counted.
    alone = leak_report(pairs.iloc[:0], folds.drop(columns="group"), settings)
    assert alone["fold_groups_with_several_fields"] == 0 and alone["largest_fold_group"] == 1
    assert [alone[k] for k in ("train_train_pairs", "train_train_groups", "label_conflicts")] == [0, 0, 0]
    assert alone["pairs_split_across_folds"] == 0 and alone["dropped_external"] == 1


def test_class_spread_is_most_minus_fewest_per_class_without_dropped_rows():
    labels = encode([[0], [0, 1], [0], [1, 2], [2], [2], [0, 2]])
    fold = np.array([0, 0, 1, 1, 2, -1, 2])
    # counts per fold: class 0 [2, 1, 1], class 1 [1, 1, 0], class 2 [0, 1, 2]; row 5 left out.
    spread = class_spread(labels, fold, 3)
    assert spread.dtype == np.int64 and spread.shape == (28,)
    assert spread[:3].tolist() == [1, 1, 2] and not spread[3:].any()
    assert class_spread(labels, fold, 4)[:3].tolist() == [2, 1, 2]  # an empty fold counts as 0


# --- folds with groups ---------------------------------------------------------------------------------


def label_table(ids, seed):
    return LabelTable("x.csv", tuple(ids), encode(sample_label_sets(len(ids), np.random.default_rng(seed), 0.3)))


@pytest.fixture(scope="module")
def grouped_data():
    """kaggle k000-k149, tiff t00-t29, external hpav18: 20 antibodies of 3 fields; pairs: a 3-chain across
    the datasets, kaggle and tiff fields copied into hpav18, an hpav18-hpav18 pair, kaggle-kaggle
    pairs, a train-test pair."""
    hpa = [f"{100 + a}_{a + 1}_{w}_{f}" for a in range(20) for w, f in [("A1", 1), ("B2", 2), ("C3", 1)]]
    tables = {
        "kaggle": label_table([f"k{i:03d}" for i in range(150)], 0),
        "tiff": label_table([f"t{i:02d}" for i in range(30)], 1),
        "hpav18": label_table(hpa, 2),
    }
    rows = [
        ("k001", "kaggle", "t05", "tiff", "train-train", True),  # chain k001 - t05 - hpa[30]
        ("t05", "tiff", hpa[30], "hpav18", "train-train", True),
        ("k010", "kaggle", hpa[0], "hpav18", "train-train", True),
        ("k011", "kaggle", hpa[4], "hpav18", "train-train", False),
        ("t07", "tiff", hpa[13], "hpav18", "train-train", True),
        (hpa[20], "hpav18", hpa[50], "hpav18", "train-train", True),
        ("k020", "kaggle", "k021", "kaggle", "train-train", True),
        ("k021", "kaggle", "k140", "kaggle", "train-train", True),
        ("k030", "kaggle", "k031", "kaggle", "train-train", True),
        ("k050", "kaggle", "test1", "test", "train-test", None),
    ]
    return tables, pairs_frame(rows), hpa


def test_group_policy_keeps_every_group_in_one_fold(grouped_data):
    """Chains, copies and antibodies each share one fold; every row gets a fold; groups are those of
    train_groups; classes stay within a few images of even (iterative stratification and swaps of
    single rows), as without groups."""
    tables, pairs, hpa = grouped_data
    df = folds_table(tables, 3, 0, pairs, DEFAULT, id_formats=HPAV18)
    assert list(df.columns) == ["Id", "dataset", "fold", "group"]
    assert set(df["fold"]) == {0, 1, 2}
    antibody_of = np.array([antibody(i) for i in df["Id"]], object)
    assert np.array_equal(df["group"], train_groups(df["Id"].to_numpy(), pairs, antibody_of))
    fold = dict(zip(df["Id"], df["fold"]))
    for members in [
        ["k001", "t05", hpa[30], hpa[31], hpa[32]],
        ["k010", hpa[0], hpa[1], hpa[2]],
        ["k011", hpa[3], hpa[4], hpa[5]],
        ["t07", hpa[12], hpa[13], hpa[14]],
        [hpa[18], hpa[19], hpa[20], hpa[48], hpa[49], hpa[50]],
        ["k020", "k021", "k140"],
        ["k030", "k031"],
    ]:
        assert len({fold[m] for m in members}) == 1, members
    assert df.groupby("group")["fold"].nunique().max() == 1
    row = {m: r for r, m in enumerate(df["Id"])}
    assert df["group"][row[hpa[32]]] == row["k001"] and df["group"][row["k140"]] == row["k020"]
    sizes = df["group"].value_counts()
    assert (sizes > 1).sum() == 2 + 19 and sizes.max() == 6  # 2 kaggle-only groups, 20 antibodies (2 joined)
    labels = np.concatenate([t.labels for t in tables.values()])
    spread = class_spread(labels, df["fold"].to_numpy(), 3)
    assert spread.max() <= 3, spread
    assert np.abs(np.bincount(df["fold"]) - len(df) / 3).max() <= 3
    # Without antibody groups only the pairs join rows.
    plain = folds_table(tables, 3, 0, pairs, DuplicateSettings(12, ALL, False, "group"), id_formats=HPAV18)
    assert plain["group"].value_counts().max() == 3
    assert plain.groupby("group")["fold"].nunique().max() == 1
    # Nor when no dataset declares HPAv18 Ids (the default, plain): the same groups.
    assert folds_table(tables, 3, 0, pairs, DEFAULT).equals(plain)


def test_group_folds_places_the_largest_groups_first():
    """No labels, 2 folds: a group of 3 and three single rows. Largest first, the group takes one
    fold and the singles the other (3 and 3); singles first would leave 2 and 4."""
    for seed in range(5):
        fold = group_folds(np.zeros((6, 28), np.uint8), np.array([7, 7, 7, 1, 2, 3]), 2, np.random.default_rng(seed))
        assert len(set(fold[:3])) == 1 and set(fold[3:]) == {1 - fold[0]}


def test_group_folds_balances_classes_by_group():
    """Four pairs of rows, two of them with class 0: whatever the order of the equal-sized groups (ties
    are drawn at random), the two with class 0 go to different folds."""
    labels = encode([[0], [0], [0], [0], [], [], [], []])
    groups = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    for seed in range(10):
        fold = group_folds(labels, groups, 2, np.random.default_rng(seed))
        assert all(fold[r] == fold[r + 1] for r in range(0, 8, 2))
        assert fold[0] != fold[2], seed


def test_random_labels_stay_balanced_with_groups():
    """Several seeds of random labels and random pairs (a third of the rows in groups of 2-4): groups
    whole, and each class within 3 images of even."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        ids = [f"x{i:03d}" for i in range(240)]
        tables = {"a": label_table(ids[:160], seed), "b": label_table(ids[160:], seed + 10)}
        order = rng.permutation(240)[:80]
        rows = [
            (ids[order[k]], "a", ids[order[k + 1]], "b", "train-train", True) for k in range(79) if rng.random() < 0.7
        ]
        pairs = pairs_frame(rows)
        df = folds_table(tables, 4, seed, pairs, DEFAULT)
        assert (df["fold"] >= 0).all()
        assert df.groupby("group")["fold"].nunique().max() == 1
        assert df["group"].value_counts().max() > 2
        labels = np.concatenate([t.labels for t in tables.values()])
        assert class_spread(labels, df["fold"].to_numpy(), 4).max() <= 3


def test_policy_off_gives_the_folds_without_pairs(grouped_data):
    tables, pairs, _ = grouped_data
    off = folds_table(tables, 3, 0, pairs, DuplicateSettings(12, ALL, True, "off"))
    none = folds_table(tables, 3, 0)
    assert off.equals(none)
    assert off["group"].tolist() == list(range(len(off)))
    # No pairs and no HPAv18 Ids: policy group has nothing to join, and splits as without duplicates.
    plain = {k: v for k, v in tables.items() if k != "hpav18"}
    assert folds_table(plain, 3, 0, pairs.iloc[:0], DEFAULT).equals(folds_table(plain, 3, 0))


def test_drop_external_leaves_out_exactly_the_external_copies(grouped_data):
    """hpa[30] (copy of t05), hpa[0] (k010), hpa[4] (k011) and hpa[13] (t07) get fold -1; hpa[20]-hpa[50]
    (both external) stay; the rest keeps its groups whole, and every kept row has a fold."""
    tables, pairs, hpa = grouped_data
    settings = DuplicateSettings(12, ALL, True, "drop_external")
    df = folds_table(tables, 3, 0, pairs, settings, frozenset({"hpav18"}), HPAV18)
    assert sorted(df.loc[df["fold"] < 0, "Id"]) == sorted([hpa[30], hpa[0], hpa[4], hpa[13]])
    assert (df["fold"] == -1).sum() == 4
    kept = df[df["fold"] >= 0]
    assert set(kept["fold"]) == {0, 1, 2}
    assert kept.groupby("group")["fold"].nunique().max() == 1
    fold = dict(zip(df["Id"], df["fold"]))
    assert fold["k001"] == fold["t05"] == fold[hpa[31]] == fold[hpa[32]]  # the chain, through a dropped copy
    assert fold[hpa[20]] == fold[hpa[50]] >= 0
    # The groups are those of policy group; only the dropped rows lose their fold.
    grouped = folds_table(tables, 3, 0, pairs, DEFAULT, frozenset({"hpav18"}), HPAV18)
    assert np.array_equal(df["group"], grouped["group"])
    assert leak_report(pairs, df, settings)["dropped_external"] == 4
    assert leak_report(pairs, df, settings)["pairs_split_across_folds"] == 0
    # Nothing external: nothing dropped.
    assert (folds_table(tables, 3, 0, pairs, settings, id_formats=HPAV18)["fold"] >= 0).all()


# --- the demo's planted duplicates, through shards ------------------------------------------------------

DEMO = DemoSpec(
    seed=0,
    n_train=60,
    n_test=12,
    n_tiff=4,
    n_jpg=30,
    size=64,
    tiff_size=96,
    jpg_size=96,
    prior_power=1.0,
    dup_external=20,
    dup_conflicts=2,
    dup_test=6,
    antibody_fields=2,
    siblings=0,
)
# split -> (format, role, labels csv), as config/config.yaml lists them
SPLITS = {
    "train": ("png", "train", "train.csv"),
    "train_tiff": ("tiff", "train", "train_tiff.csv"),
    "hpav18": ("jpg", "train", "hpav18.csv"),
    "test": ("png", "test", "sample_submission.csv"),
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo set and one 64 px shard per split (as rule shard writes them)."""
    root = tmp_path_factory.mktemp("demo")
    make_demo(root, DEMO)
    shards = {}
    for split, (fmt, role, csv) in SPLITS.items():
        table = read_labels(str(root / csv), role == "train")
        shards[split] = root / f"{split}.h5"
        write_shard(shards[split], ShardSpec(split, fmt, str(root / split), role, 64), list(table.ids), table.labels)
    return root, shards


def test_demo_planted_duplicates_are_found(demo):
    """pairs_table with the default settings on the shards' hashes finds the planted copies (recall and
    precision >= 0.95), each as the planted kind, labels_agree False exactly for the copies given other
    labels; the antibody groups are antibody_fields HPAv18 fields with one label set."""
    root, shards = demo
    fields = read_fields([str(p) for p in shards.values()])
    assert len(fields.ids) == DEMO.n_train + DEMO.n_test + DEMO.n_tiff + DEMO.n_jpg
    table = pairs_table(fields, DEFAULT, threads=2)
    truth = pd.read_csv(root / "duplicates_truth.csv")
    assert len(truth) == DEMO.dup_external + DEMO.dup_test
    # HPAv18 fields 0, 1, ... copy train fields 0, 1, ...; test fields 0, 1, ... the last train fields.
    ids = {split: list(read_labels(str(root / csv), False).ids) for split, (_, _, csv) in SPLITS.items()}
    ext, test = truth[truth["split_b"] == "hpav18"], truth[truth["split_b"] == "test"]
    assert ext["id_a"].tolist() == ids["train"][: DEMO.dup_external]
    assert ext["id_b"].tolist() == ids["hpav18"][: DEMO.dup_external]
    assert test["id_a"].tolist() == ids["train"][::-1][: DEMO.dup_test]
    assert test["id_b"].tolist() == ids["test"][: DEMO.dup_test]
    assert set(truth["split_a"]) == {"train"} and ext["label_changed"].tolist()[: DEMO.dup_conflicts] == [True] * 2
    assert truth["label_changed"].sum() == DEMO.dup_conflicts
    planted = {
        (a, b): (kind, changed) for a, b, kind, changed in truth[["id_a", "id_b", "kind", "label_changed"]].values
    }
    found = {(a, b): (kind, agree) for a, b, kind, agree in table[["id_a", "id_b", "kind", "labels_agree"]].values}
    hits = set(planted) & set(found)
    assert len(hits) >= 0.95 * len(planted), set(planted) - hits
    assert len(hits) >= 0.95 * len(found), set(found) - hits
    for pair in hits:
        kind, changed = planted[pair]
        assert found[pair][0] == kind, pair
        assert (found[pair][1] is pd.NA) if kind == "train-test" else (found[pair][1] == (not changed)), pair
    conflicts = {pair for pair, (kind, agree) in found.items() if kind == "train-train" and not agree}
    assert conflicts == {pair for pair in hits if planted[pair][1]}
    assert len(conflicts) == DEMO.dup_conflicts
    # The train field comes first; test copies are exact (lossless PNGs of the same render).
    assert set(table["dataset_a"]) == {"train"}
    assert (table.loc[table["kind"] == "train-test", ["d_red", "d_green", "d_blue", "d_yellow"]] == 0).all().all()
    # Antibodies: the planted copies alone in theirs, the others antibody_fields fields with one label set.
    hpa = read_labels(str(root / "hpav18.csv"), True)
    copies = set(truth.loc[truth["split_b"] == "hpav18", "id_b"])
    by_antibody: dict[str, list[int]] = {}
    for r, image_id in enumerate(hpa.ids):
        by_antibody.setdefault(antibody(image_id), []).append(r)
    assert None not in by_antibody
    for rows in by_antibody.values():
        if hpa.ids[rows[0]] in copies:
            assert len(rows) == 1
        else:
            assert len(rows) == DEMO.antibody_fields
            assert (hpa.labels[rows] == hpa.labels[rows[0]]).all()
    n_rest = DEMO.n_jpg - DEMO.dup_external
    assert len(by_antibody) == DEMO.dup_external + n_rest // DEMO.antibody_fields
    hpa_ids = np.array(hpa.ids)
    groups = train_groups(hpa_ids, table.iloc[:0], antibodies(hpa_ids, np.full(len(hpa_ids), "hpav18"), HPAV18))
    assert (
        np.bincount(np.unique(groups, return_inverse=True)[1]).tolist().count(DEMO.antibody_fields)
        == n_rest // DEMO.antibody_fields
    )


def test_shard_stores_the_phash_of_each_row_and_old_shards_are_refused(demo, tmp_path):
    """write_shard's hashes are phash_rgby of the rows it stores (and of read_rgby at image_size); a shard
    of an older format is refused (no hashing on the fly); a tiled shard repeats its image's hashes per tile."""
    root, shards = demo
    for split, path in shards.items():
        shard = read_shard(path)
        ids, stored = shard_hashes(path)
        assert stored.dtype == np.uint64 and stored.shape == (len(shard.ids), 4)
        assert ids.tolist() == shard.ids.tolist()
        assert np.array_equal(stored, np.stack([phash_rgby(img) for img in shard.images])), split
        fmt = SPLITS[split][0]
        assert np.array_equal(stored[0], phash_rgby(read_rgby(root / split, ids[0], fmt, 64)))
        assert len({tuple(h) for h in stored.tolist()}) == len(ids)  # distinct fields, distinct hashes
        # A shard of the format before stored hashes: refused with what to rerun, not hashed on the fly.
        old = tmp_path / f"{split}.h5"
        shutil.copy(path, old)
        with h5py.File(old, "a") as h5:
            del h5["hashes"]
            h5.attrs["format_version"] = 1
        with pytest.raises(FormatError, match="a shard file of format 1; this workflow reads format 2"):
            shard_hashes(old)
    # Tiles: 2 x 2 of 32 px per 64 px image, each row carrying the whole image's hashes.
    table = read_labels(str(root / "train.csv"), True)
    tiled = tmp_path / "tiled.h5"
    ids = list(table.ids[:5])
    write_shard(tiled, ShardSpec("train", "png", str(root / "train"), "train", 64, "grid", 32), ids, table.labels[:5])
    row_ids, hashes = shard_hashes(tiled)
    assert row_ids.tolist() == [i for i in ids for _ in range(4)]
    assert np.array_equal(hashes, np.repeat(shard_hashes(shards["train"])[1][:5], 4, axis=0))
    assert np.array_equal(read_fields([str(tiled)]).hashes, hashes[::4])


def test_read_fields_one_row_per_field_with_its_dataset_role_and_labels(demo):
    root, shards = demo
    f = read_fields([str(shards["test"]), str(shards["train"])])
    train = read_labels(str(root / "train.csv"), True)
    assert f.ids.tolist() == list(read_labels(str(root / "sample_submission.csv"), False).ids) + list(train.ids)
    assert f.datasets.tolist() == ["test"] * DEMO.n_test + ["train"] * DEMO.n_train
    assert f.train.tolist() == [False] * DEMO.n_test + [True] * DEMO.n_train
    assert not f.labels[: DEMO.n_test].any() and np.array_equal(f.labels[DEMO.n_test :], train.labels)
    assert f.hashes.dtype == np.uint64 and f.hashes.shape == (DEMO.n_test + DEMO.n_train, 4)


def test_demo_folds_keep_planted_pairs_together_and_drop_external_removes_the_planted_copies(demo):
    """On the demo's own pairs: policy group puts both fields of every planted train-train pair (and each
    antibody) in one fold; drop_external leaves out exactly the planted HPAv18 copies of train fields."""
    root, shards = demo
    table = pairs_table(read_fields([str(p) for p in shards.values()]), DEFAULT, threads=2)
    truth = pd.read_csv(root / "duplicates_truth.csv")
    tables = {s: read_labels(str(root / csv), True) for s, (_, role, csv) in SPLITS.items() if role == "train"}
    grouped = folds_table(tables, 3, 0, table, DEFAULT, frozenset({"hpav18"}), HPAV18)
    fold = dict(zip(grouped["Id"], grouped["fold"]))
    for a, b in truth.loc[truth["kind"] == "train-train", ["id_a", "id_b"]].values:
        assert fold[a] == fold[b] >= 0
    assert (grouped.groupby("group")["fold"].nunique() == 1).all()
    dropped = folds_table(tables, 3, 0, table, replace(DEFAULT, policy="drop_external"), frozenset({"hpav18"}), HPAV18)
    left_out = set(dropped.loc[dropped["fold"] < 0, "Id"])
    assert left_out == set(truth.loc[truth["split_b"] == "hpav18", "id_b"])
    assert set(dropped.loc[dropped["fold"] >= 0, "fold"]) == {0, 1, 2}


# --- group_folds by hand ----------------------------------------------------------------------------------
# cost of fold k for group g = sum_c w_c ((counts[k,c] + gy_c - t_c)^2 - (counts[k,c] - t_c)^2)
#                              + ((sizes_k + n_g - T)^2 - (sizes_k - T)^2) / T,
# t_c = total_c / n_folds, T = rows / n_folds, w_c = 1 / max(total_c, 1); argmin, ties to the lowest fold.


def one_class_groups(names, sizes, positives):
    """Rows group by group (names[i] repeated sizes[i] times), the first positives[i] of them with the one class."""
    groups = np.repeat(np.array(names), sizes)
    labels = np.concatenate([[1] * p + [0] * (s - p) for s, p in zip(sizes, positives)]).astype(np.uint8)
    return labels[:, None], groups


def test_group_folds_by_hand_size_narrowly_beats_class_and_counts_add_up():
    """2 folds, one class; groups A (4 rows, 3 with the class), B (3, 1), C (2, 1), D (1, 1), named so
    that np.unique lists them D, C, B, A: largest first is by size, not by name. 10 rows, 6 positives:
    t = 3, T = 5, w = 1/6. Distinct sizes: the rng orders nothing, any seed gives the same folds.

    A: both folds empty, equal costs -> fold 0.             counts [3, 0], sizes [4, 0]
    B: fold 0 class (1 - 0)/6 = 1/6,  size (4 - 1)/5 = 3/5;
       fold 1 class (4 - 9)/6 = -5/6, size (4 - 25)/5 = -21/5 -> fold 1.  counts [3, 1], sizes [4, 3]
    C: fold 0 class (1 - 0)/6 = 1/6,  size (1 - 1)/5 = 0;
       fold 1 class (1 - 4)/6 = -1/2, size (0 - 4)/5 = -4/5 -> fold 1.    counts [3, 2], sizes [4, 5]
    D: fold 0 class (1 - 0)/6 = 1/6,  size (0 - 1)/5 = -1/5: -1/30;
       fold 1 class (0 - 1)/6 = -1/6, size (1 - 0)/5 = 1/5:   1/30 -> fold 0.
    D is where class (fold 1 is 1/3 better) and size (fold 0 is 2/5 better) pull apart and size wins by
    1/15: a class term twice as large (2 / total), weighted by total instead of 1 / total, or with
    + t in the square; or a size term divided by rows * n_folds (20) instead of T, would send D to
    fold 1. So would fold 1 holding C's 1 positive (counts set, not added) instead of B's + C's 2:
    class (1 - 4)/6 = -1/2, -1/2 + 1/5 < -1/30."""
    labels, groups = one_class_groups(["d", "c", "b", "a"], [4, 3, 2, 1], [3, 1, 1, 1])
    for seed in range(3):
        fold = group_folds(labels, groups, 2, np.random.default_rng(seed))
        assert fold.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 0], seed


def test_group_folds_by_hand_size_term_is_the_change_in_squared_deviation():
    """2 folds, one class; groups A (4 rows, none with the class), B (2, both), C (1, 1). 7 rows,
    3 positives: t = 1.5, T = 3.5, w = 1/3.

    A: both folds empty -> fold 0.                                    counts [0, 0], sizes [4, 0]
    B: class equal (both counts 0); size fold 0 (2.5^2 - 0.5^2)/3.5 = 6/3.5,
       fold 1 (1.5^2 - 3.5^2)/3.5 = -10/3.5 -> fold 1.                counts [0, 2], sizes [4, 2]
    C: fold 0 class (0.5^2 - 1.5^2)/3 = -2/3, size (1.5^2 - 0.5^2)/3.5 = 4/7:  -2/21;
       fold 1 class (1.5^2 - 0.5^2)/3 = 2/3,  size (0.5^2 - 1.5^2)/3.5 = -4/7: 2/21 -> fold 0.
    With (sizes + n - T) * 2 in place of its square, C's size term would be (2 * 1.5 - 0.5^2)/3.5 = 11/14
    on fold 0 and (2 * -0.5 - 1.5^2)/3.5 = -13/14 on fold 1: 5/42 against -11/42, fold 1; with
    (sizes - T) * 2 in place of the other square, B would cost (2.5^2 - 1)/3.5 = 5.25/3.5 on fold 0 and
    (1.5^2 + 7)/3.5 = 9.25/3.5 on fold 1, fold 0."""
    labels, groups = one_class_groups([2, 1, 0], [4, 2, 1], [0, 2, 1])
    for seed in range(3):
        fold = group_folds(labels, groups, 2, np.random.default_rng(seed))
        assert fold.tolist() == [0, 0, 0, 0, 1, 1, 0], seed


def test_assign_folds_with_groups_is_deterministic_for_a_seed():
    """16 pairs and 8 single rows with random labels: the order of equal-sized groups and the swaps
    are drawn from the seed, so one seed gives one split (and other seeds other splits)."""
    labels = encode(sample_label_sets(40, np.random.default_rng(3), 0.3))
    groups = np.concatenate([np.repeat(np.arange(16), 2), np.arange(16, 24)])
    first = assign_folds(labels, 2, 4, groups)
    assert np.array_equal(first, assign_folds(labels, 2, 4, groups))
    assert all(len(set(first[groups == g])) == 1 for g in range(16))
    assert any(not np.array_equal(first, assign_folds(labels, 2, seed, groups)) for seed in range(5, 8))
