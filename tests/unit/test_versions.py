"""What ran (hpaflow.versions): this interpreter's environment as the jobs read it, stamps through real HDF5 files,
merging the stages' environments, and the tables of the report and the exported package."""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
import sys

import h5py
import pytest
from docutils.core import publish_parts

from conftest import REPO
from hpaflow import h5names as h5n
from hpaflow import versions
from hpaflow.runlog import logged


def pinned(name: str) -> str:
    """The version requirements.txt pins `name` to (the .venv the tests run in is installed from it)."""
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if m := re.fullmatch(rf"\s*{re.escape(name)}\s*==\s*([^\s;#]+).*", line, re.I):
            return m[1]
    raise AssertionError(f"requirements.txt pins no {name}")


def env(python: str = "3.11.7", **packages: str) -> dict:
    """A stamped environment with these packages (keyword names use _ for -)."""
    named = {k.replace("_", "-"): v for k, v in packages.items()}
    return {"python": python, "platform": "Linux-x86_64", "packages": dict(sorted(named.items()))}


def table_cells(html: str) -> list[list[str]]:
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", html, re.S)
    return [
        [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<(?:td|th)[^>]*>(.*?)</(?:td|th)>", r, re.S)]
        for r in rows
    ]


# --- this environment --------------------------------------------------------------------------------------


def test_this_environment_names_the_pinned_torch_and_numpy():
    e = versions.environment_versions()
    assert e["packages"]["torch"] == pinned("torch") and e["packages"]["numpy"] == pinned("numpy")
    assert e["python"] == ".".join(map(str, sys.version_info[:3]))
    assert re.fullmatch(r"[A-Za-z]+-[A-Za-z0-9_]+", e["platform"])
    assert versions.environment_versions() is e  # cached: read once per job


def test_names_are_normalised_and_sorted():
    packages = versions.environment_versions()["packages"]
    assert list(packages) == sorted(packages)
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", n) for n in packages), packages
    assert packages["scikit-learn"] == importlib.metadata.version("scikit-learn")
    assert "opencv-python-headless" in packages
    assert versions.normalise("Foo__Bar.baz") == "foo-bar-baz" and versions.normalise("PyYAML") == "pyyaml"


def test_a_name_installed_twice_counts_as_importlib_finds_it_first(tmp_path):
    """Real dist-info folders on two path entries: the first one's version wins, and one without a name
    (a broken install) is left out."""
    for folder, dist, meta in [
        ("a", "Foo_Bar-1.0", "Name: Foo_Bar\nVersion: 1.0\n"),
        ("b", "foo.bar-2.0", "Name: foo.bar\nVersion: 2.0\n"),
        ("b", "broken-3.0", "Version: 3.0\n"),
    ]:
        info = tmp_path / folder / f"{dist}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\n{meta}")
    found = versions.installed(importlib.metadata.distributions(path=[str(tmp_path / "a"), str(tmp_path / "b")]))
    assert found == {"foo-bar": "1.0"}


def test_the_log_line_names_the_key_packages_on_one_line(tmp_path):
    line = versions.software_line()
    assert "\n" not in line
    assert line.startswith(f"python {versions.environment_versions()['python']}; torch {pinned('torch')}; ")
    assert f"; numpy {pinned('numpy')};" in line
    assert versions.software_line(env(numpy="2.0.0", opencv_python="4.10.0")) == (
        "python 3.11.7; numpy 2.0.0; opencv-python-headless 4.10.0 (opencv-python)"
    )
    with logged(tmp_path / "job.log"):
        pass
    text = (tmp_path / "job.log").read_text().splitlines()
    assert "=== start" in text[0] and text[1].endswith(f"INFO software: {line}")


# --- stamps ------------------------------------------------------------------------------------------------


def test_stamp_round_trips_through_an_hdf5_file_and_an_unstamped_file_reads_none(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as h5:
        versions.stamp(h5.attrs)
    with h5py.File(tmp_path / "old.h5", "w") as h5:
        h5.attrs["format_version"] = 1
    with h5py.File(tmp_path / "a.h5", "r") as h5:
        assert versions.read_stamp(h5.attrs) == versions.environment_versions()
        assert versions.read_stamp(h5.attrs, h5n.SOFTWARE_VERSIONS_INPUTS) is None
    with h5py.File(tmp_path / "old.h5", "r") as h5:
        assert versions.read_stamp(h5.attrs) is None
    assert versions.recorded([tmp_path / "old.h5"]) == []


def test_recorded_reads_a_files_own_stamp_and_the_environments_it_carries(tmp_path):
    own, carried = env(torch="2.14.1"), [{**env(torch="2.13.0"), "jobs": 3}]
    with h5py.File(tmp_path / "s.h5", "w") as h5:
        versions.stamp(h5.attrs, own)
        versions.stamp(h5.attrs, carried, h5n.SOFTWARE_VERSIONS_INPUTS)
    assert versions.recorded([tmp_path / "s.h5"]) == [own, *carried]


def test_a_damaged_stamp_is_named_with_its_file(tmp_path):
    with h5py.File(tmp_path / "bad.h5", "w") as h5:
        h5.attrs[h5n.SOFTWARE_VERSIONS] = "{not json"
    with pytest.raises(ValueError, match=r"bad\.h5: attribute 'software_versions' is not the JSON"):
        versions.recorded([tmp_path / "bad.h5"])


# --- merge -------------------------------------------------------------------------------------------------


def test_merge_keeps_each_distinct_environment_of_a_stage_and_counts_its_jobs():
    a, b = env(torch="2.14.1", numpy="2.4.6"), env(torch="2.13.0", numpy="2.4.6")
    merged = versions.merge({"train and predict": [a, b, copy.deepcopy(a), None], "ensemble": [a], "old": [None]})
    assert list(merged) == ["train and predict", "ensemble"]  # no stamp at all: left out
    assert merged["train and predict"] == [{**a, "jobs": 2}, {**b, "jobs": 1}]
    assert merged["ensemble"] == [{**a, "jobs": 1}]
    again = versions.merge({**merged, "export": [b], "train and predict": merged["train and predict"] + [b]})
    assert [e["jobs"] for e in again["train and predict"]] == [2, 2]  # merged output merges again: jobs add up
    assert list(again) == ["train and predict", "ensemble", "export"]
    assert json.loads(json.dumps(again)) == again


def test_merge_names_the_stage_of_an_entry_that_is_no_environment():
    with pytest.raises(ValueError, match=r"stage 'ensemble'.*no environment"):
        versions.merge({"ensemble": [{"python": "3.11.7"}]})


# --- tables ------------------------------------------------------------------------------------------------


MERGED = versions.merge(
    {
        "shards": [env(numpy="2.4.6", opencv_python_headless="5.0.0.93")],
        "train and predict": [env(torch="2.14.1", numpy="2.4.6"), env(torch="2.13.0", numpy="2.4.6")],
        "ensemble": [env(numpy="2.4.6", opencv_python="4.10.0")],
    }
)
EXPECTED = [
    ["package", "shards", "train and predict", "ensemble"],
    ["python", "3.11.7", "3.11.7", "3.11.7"],
    ["torch", "-", "2.14.1 / 2.13.0", "-"],
    ["numpy", "2.4.6", "2.4.6", "2.4.6"],
    ["opencv-python-headless", "5.0.0.93", "-", "4.10.0 (opencv-python)"],
]


def test_versions_table_rows():
    rows = versions.versions_table(MERGED)
    assert ("train and predict", "torch", "2.14.1 / 2.13.0") in rows and ("shards", "torch", "-") in rows
    assert {name for _, name, _ in rows} == {"python", "torch", "numpy", "opencv-python-headless"}
    assert len(rows) == 4 * 3


def test_rst_table_renders_as_the_report_renders_it():
    html = publish_parts(versions.rst_table(MERGED), writer="html")["html_body"]
    assert table_cells(html) == EXPECTED
    assert "<li>" not in html  # a lone "-" is text, not a bullet list


def test_markdown_table():
    lines = versions.markdown_table(MERGED).splitlines()
    assert lines[1] == "|---|---|---|---|"
    assert [[c.strip() for c in line.strip("|").split("|")] for line in [lines[0], *lines[2:]]] == EXPECTED


def test_tables_of_results_from_before_the_stamps_say_so():
    assert "No software versions recorded" in versions.rst_table({})
    assert "No software versions recorded" in versions.markdown_table({})
