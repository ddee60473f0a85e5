"""What ran: the package versions of each job's own running environment, recorded with its outputs.

A job reads the distributions of the interpreter it runs in (`environment_versions`): the launcher's .venv,
or its rule's conda env under --use-conda, on whichever node ran it. The jobs whose outputs decide results
stamp them (`stamp`: a JSON attribute of an HDF5 file, or a key of a JSON file); the jobs that gather
results merge the stamps of their inputs with their own environment (`merge`) into metrics.json, and the
report and the exported package show the key packages as one table (`rst_table`, `markdown_table`).

An environment, as stamped: {"python": "3.11.7", "platform": "Linux-x86_64", "packages": {name: version}},
names normalised as PEP 503 does (lower case, runs of -_. -> -), sorted.

Standard library only (runlog imports it in every job's env); `recorded` imports h5py when called.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import platform
import re
from collections.abc import Iterable, Mapping, MutableMapping, Sequence

from .h5names import SOFTWARE_VERSIONS, SOFTWARE_VERSIONS_INPUTS

# The distributions that decide results, in display order.
KEY_PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "opencv-python-headless",
    "h5py",
    "hdf5plugin",
    "onnx",
    "onnxruntime",
    "pandas",
    "scikit-learn",
    "scipy",
    "pillow",
    "tifffile",
    "imagecodecs",
    "timm",
    "pretrainedmodels",
)
# Another distribution of the same code, shown in a key package's row when that one is not installed.
ALTERNATIVES = {"opencv-python-headless": ("opencv-python",)}
PYTHON = "python"
MISSING = "-"  # a table cell: the stage's environment lacks the package


def normalise(name: str) -> str:
    """A distribution's name as PEP 503 compares them: lower case, runs of -, _ and . as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(dists: Iterable[importlib.metadata.Distribution]) -> dict[str, str]:
    """{normalised name: version}, sorted; a name found twice keeps the first (importlib finds it first on
    sys.path); a distribution without a name (a broken install) is left out."""
    packages: dict[str, str] = {}
    for dist in dists:
        if name := dist.metadata["Name"]:
            packages.setdefault(normalise(name), dist.version)
    return dict(sorted(packages.items()))


@functools.cache
def environment_versions() -> dict:
    """The running interpreter's environment: python version, platform and every installed distribution.
    Cached per process (several writers stamp with it); treat the result as read-only."""
    return {
        "python": platform.python_version(),
        "platform": f"{platform.system()}-{platform.machine()}",
        "packages": installed(importlib.metadata.distributions()),
    }


def key_versions(env: Mapping) -> dict[str, str]:
    """python and the KEY_PACKAGES present in `env`, in display order; an alternative distribution (opencv-python
    for opencv-python-headless) is named beside its version."""
    packages = env["packages"]
    out = {PYTHON: env["python"]}
    for name in KEY_PACKAGES:
        for candidate in (name, *ALTERNATIVES.get(name, ())):
            if candidate in packages:
                version = packages[candidate]
                out[name] = version if candidate == name else f"{version} ({candidate})"
                break
    return out


def software_line(env: Mapping | None = None) -> str:
    """One log line: 'python 3.11.7; torch 2.14.1; numpy 2.4.6; ...' (the key packages installed)."""
    found = key_versions(environment_versions() if env is None else env)
    return "; ".join(f"{name} {version}" for name, version in found.items())


def stamp(attrs: MutableMapping, versions: Mapping | Sequence | None = None, key: str = SOFTWARE_VERSIONS) -> None:
    """Write `versions` (default: this job's environment) as JSON under `key` of an HDF5 attrs-like mapping.
    key SOFTWARE_VERSIONS_INPUTS: a file that only carries its inputs' environments (a list, `distinct`)."""
    attrs[key] = json.dumps(environment_versions() if versions is None else versions, separators=(",", ":"))


def read_stamp(attrs: Mapping, key: str = SOFTWARE_VERSIONS) -> dict | list | None:
    """What `stamp` wrote under `key`; None when there is none (a file written before the stamps)."""
    raw = attrs.get(key)
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        return json.loads(str(raw))
    except json.JSONDecodeError as e:
        raise ValueError(f"attribute {key!r} is not the JSON of software versions ({e})") from None


def recorded(paths: Iterable) -> list[dict]:
    """The environments recorded in HDF5 files: each file's own stamp and the environments it carries from its
    inputs (SOFTWARE_VERSIONS_INPUTS); files without either (written before the stamps) add nothing."""
    import h5py  # here: the module stays importable where h5py is not installed

    out: list[dict] = []
    for path in paths:
        with h5py.File(path, "r") as h5:
            try:
                own = read_stamp(h5.attrs)
                carried = read_stamp(h5.attrs, SOFTWARE_VERSIONS_INPUTS)
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
        if not isinstance(carried, list | None):
            raise ValueError(f"{path}: attribute {SOFTWARE_VERSIONS_INPUTS!r} is no list of environments")
        out += ([] if own is None else [own]) + (carried or [])
    return out


def _check(env, where: str) -> None:
    if not isinstance(env, Mapping) or not isinstance(env.get("packages"), Mapping) or "python" not in env:
        raise ValueError(f"software versions of {where}: {env!r:.80} is no environment (python, platform, packages)")


def distinct(envs: Iterable[Mapping | None], where: str = "a stage") -> list[dict]:
    """The distinct environments among `envs` in order of first appearance, each with "jobs": how many entries
    ran in it (an entry that already counts jobs, as merge's output does, adds its count). None entries (jobs
    whose outputs predate the stamps) are left out."""
    out: dict[str, dict] = {}
    for env in envs:
        if env is None:
            continue
        _check(env, where)
        same = {k: env.get(k) for k in ("python", "platform", "packages")}
        ident = json.dumps(same, sort_keys=True)
        if ident not in out:
            out[ident] = {**same, "jobs": 0}
        out[ident]["jobs"] += int(env.get("jobs", 1))
    return list(out.values())


def merge(stages: Mapping[str, Iterable[Mapping | None]]) -> dict[str, list[dict]]:
    """The environments each stage's jobs recorded, for metrics.json:

        {"train and predict": [{"python": "3.11.7", "platform": "Linux-x86_64", "packages": {...}, "jobs": 10},
                               {... another torch on another node ..., "jobs": 2}],
         "ensemble": [{..., "jobs": 1}]}

    Stages in the order given; within a stage, its distinct environments (`distinct`) with their job counts, so
    that a cluster node with another torch shows up. Entries may be stamps or merge's own output (merging again
    adds up the jobs). A stage with no recorded environment (files from before the stamps) is left out.
    """
    merged = {stage: distinct(envs, f"stage {stage!r}") for stage, envs in stages.items()}
    return {stage: envs for stage, envs in merged.items() if envs}


def versions_table(merged: Mapping[str, Sequence[Mapping]]) -> list[tuple[str, str, str]]:
    """(stage, package, version) for python and each key package installed in any stage: version MISSING where
    the stage lacks it, each distinct version joined by ' / ' where the stage ran in several environments."""
    per_stage = {stage: [key_versions(env) for env in envs] for stage, envs in merged.items()}
    names = [PYTHON, *KEY_PACKAGES]
    present = [n for n in names if any(n in found for found_list in per_stage.values() for found in found_list)]
    rows = []
    for name in present:
        for stage, found_list in per_stage.items():
            versions = list(dict.fromkeys(found.get(name, MISSING) for found in found_list))
            rows.append((stage, name, " / ".join(versions) or MISSING))
    return rows


def _grid(merged: Mapping[str, Sequence[Mapping]]) -> list[list[str]]:
    """Header row (package, stages...), then a row per package."""
    stages = list(merged)
    cells: dict[str, dict[str, str]] = {}
    for stage, name, version in versions_table(merged):
        cells.setdefault(name, {})[stage] = version
    return [["package", *stages]] + [[name, *(row[s] for s in stages)] for name, row in cells.items()]


def _rst_cell(text: str) -> str:
    """A cell as text: a leading - (MISSING, '- / 2.13.0') would start a bullet list."""
    return "\\" + text if text and text[0] in "-+*" else text


def rst_table(merged: Mapping[str, Sequence[Mapping]]) -> str:
    """The key packages per stage as a reStructuredText list-table (the report's front page)."""
    if not merged:
        return "No software versions recorded (results from before the workflow recorded them).\n"
    lines = [".. list-table:: Software versions per stage", "   :header-rows: 1", ""]
    for row in _grid(merged):
        cells = [_rst_cell(c) for c in row]
        lines += [f"   * - {cells[0]}"] + [f"     - {c}" for c in cells[1:]]
    return "\n".join(lines) + "\n"


def markdown_table(merged: Mapping[str, Sequence[Mapping]]) -> str:
    """The key packages per stage as a Markdown table (the exported package's README)."""
    if not merged:
        return "No software versions recorded (results from before the workflow recorded them).\n"
    grid = _grid(merged)
    lines = ["| " + " | ".join(grid[0]) + " |", "|" + "---|" * len(grid[0])]
    lines += ["| " + " | ".join(row) + " |" for row in grid[1:]]
    return "\n".join(lines) + "\n"
