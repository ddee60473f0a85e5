"""Label csv checks: every bad input names the file and the row or Id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpaflow.labels import LabelError, decode, read_labels


def csv(tmp_path: Path, text: str, name: str = "labels.csv") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_reads_ids_and_one_hot(tmp_path):
    t = read_labels(csv(tmp_path, "Id,Target\na,16 0\nb,7 1 2 0\nc,27\n"), True)
    assert t.ids == ("a", "b", "c")
    assert t.labels.dtype == np.uint8 and t.labels.shape == (3, 28)
    assert decode(t.labels) == ["0 16", "0 1 2 7", "27"]


def test_test_csv_needs_only_ids(tmp_path):
    t = read_labels(csv(tmp_path, "Id,Predicted\nx,0\ny,0\n"), False)
    assert t.ids == ("x", "y") and t.labels is None


@pytest.mark.parametrize(
    "text,message",
    [
        ("Id,Target\na,0\nb,28\n", r"line 3 \(Id b\): label '28' is not a class index in 0-27"),
        ("Id,Target\na,0 x\n", r"line 2 \(Id a\): label 'x' is not a class index"),
        ("Id,Target\na,-1\n", r"line 2 \(Id a\): label '-1'"),
        ("Id,Target\na,0\nb,\n", r"line 3 \(Id b\): empty Target"),
        ("Id,Target\na,0\nb,1\na,2\n", r"duplicate Id 'a' on lines 2, 4"),
        ("", r"empty csv"),
        ("Id,Target\n", r"header but no rows"),
        ("Image,Target\na,0\n", r"no 'Id' column \(columns: Image, Target\)"),
        ("Id,Label\na,0\n", r"no 'Target' column"),
    ],
)
def test_bad_csv(tmp_path, text, message):
    path = csv(tmp_path, text)
    with pytest.raises(LabelError, match=message) as e:
        read_labels(path, True)
    assert str(e.value).startswith(path)


def test_missing_file(tmp_path):
    with pytest.raises(LabelError, match="does not exist"):
        read_labels(str(tmp_path / "nope.csv"), True)


@pytest.mark.parametrize(
    "text,message",
    [
        # An unquoted comma between labels: where every row has one, pandas takes the Ids as the index.
        ("Id,Target\na,0,1\nb,1,2\nc,1,3\n", r"labels\.csv: line 2: 3 fields, the header has 2 \(labels"),
        (
            "Id,Target\na,0\nb,1,2\nc,1\n",
            r"labels\.csv: line 3: 3 fields, the header has 2 \(labels of one image "
            r"are separated by spaces",
        ),
        ("Id,Target\na,0\nb\n", r"labels\.csv: line 3: 1 fields, the header has 2$"),
    ],
)
def test_rows_with_another_field_count_are_named(tmp_path, text, message):
    with pytest.raises(LabelError, match=message):
        read_labels(csv(tmp_path, text), True)
    assert read_labels(csv(tmp_path, 'Id,Target\na,0\nb,"1 2"\n', "quoted.csv"), True).labels[1, [1, 2]].all()
