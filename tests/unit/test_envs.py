"""Conda envs cannot be built here (no channel access): lint them against requirements.txt instead.

Rules use the locked env files (envs/locked/<env>.yaml, made by `make lock` from envs/<env>.yaml): what a rule's
script imports is checked against the direct requirements in envs/<env>.yaml; test_locks checks the locks."""

from __future__ import annotations

import functools
import re

import pytest
import yaml

from conftest import REPO
from hpaflow import locks, versions

ENVS = sorted((REPO / "envs").glob("*.yaml"))
LAUNCHER = "snakemake.yaml"  # where snakemake itself runs; no rule uses it
RULE_ENV = r'conda:\s*\n\s*"\.\./envs/locked/([\w.-]+)"'  # a rule's env: the lock of envs/<env>.yaml


norm = versions.normalise


def requirements() -> dict[str, str]:
    """requirements.txt's pins (an unpinned line raises, naming it)."""
    return locks.direct_pins((REPO / "requirements.txt").read_text(), "requirements.txt")


def test_envs_exist_for_every_rule_family():
    assert {p.name for p in ENVS} >= {"data.yaml", "torch.yaml"}
    used = set()
    for smk in (REPO / "rules").glob("*.smk"):
        used |= set(re.findall(RULE_ENV, smk.read_text()))
    assert used and all((REPO / "envs" / u).exists() for u in used), used
    assert used == {p.name for p in ENVS} - {LAUNCHER}, "an env file no rule uses, or a rule env that is missing"


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_env_is_pinned_and_in_step_with_requirements(path):
    env = yaml.safe_load(path.read_text())
    assert env["channels"] and env["dependencies"]
    pins = requirements()
    pip_deps = []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip_deps += dep["pip"]
        else:
            assert re.fullmatch(r"[\w.-]+=[\w.]+", dep), f"{path.name}: conda dependency {dep!r} not pinned"
    assert pip_deps, f"{path.name}: no pip section"
    for name, version in locks.direct_pins("\n".join(pip_deps), path.name).items():  # raises on an unpinned one
        assert name in pins, f"{path.name}: {name} is not in requirements.txt"
        assert pins[name] == version, f"{path.name}: {name}=={version}, requirements.txt has {pins[name]}"


def test_requirements_carry_the_mandated_pins():
    pins = requirements()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert pins["pretrainedmodels"] == "0.7.4" and "six" in pins
    assert pins["snakemake"].startswith("9.")
    for name in [
        "snakemake-executor-plugin-slurm",
        "h5py",
        "tifffile",
        "opencv-python-headless",
        "numpy",
        "pandas",
        "iterative-stratification",
        "pytest",
    ]:
        assert name in pins, name


# Modules a package imports only when first used: where the key is in a script's import closure,
# these are imported too when the closure is recorded.
LAZY_IMPORTS = {
    "hpaflow.models": ["torchvision", "pretrainedmodels", "timm"],  # imported by the backbone builders
    "hpaflow.export": ["onnxscript", "onnx", "onnxruntime", "bioimageio.spec"],  # dynamo exporter; checks
}
# Modules that packages import only where installed (try/except ImportError): found in a closure
# because the test venv has them, needed only where a script says so below.
OPTIONAL = {
    "charset_normalizer": "numpy.f2py",
    "psutil": "joblib's loky backend",
    "rich": "scikit-learn's progress bar callback",
    "imagecodecs": "tifffile, to decode compressed (LZW, deflate, ...) TIFFs",
    "attr": "rich's pretty printer, for attrs classes (bioimageio.spec)",
    "click": "httpx's command-line client (bioimageio.spec)",
    "linkify_it": "markdown-it's linkify option (bioimageio.spec)",
}
# Modules a script's work needs beyond its imports: the shard jobs decode TIFFs and hash planes.
SCRIPT_NEEDS = {
    "workflow_scripts/shard.py": ["imagecodecs", "hpaflow.hashing"],
    "workflow_scripts/classify_shard.py": ["imagecodecs", "hpaflow.hashing"],
}
# Distributions a script needs as programs, not imports.
PROGRAMS = {"workflow_scripts/download_kaggle.py": ["kaggle"]}
# Where a conda dependency (outside the pip section) has another name on PyPI.
CONDA_TO_PIP: dict[str, str] = {}

PROBE = r"""
import builtins, json, sys
sys.path.insert(0, sys.argv[2])
lazy, extra = json.loads(sys.argv[3]), json.loads(sys.argv[4])
class Stop(BaseException):
    pass
class Snakemake:  # the first use of the `snakemake` object ends the script: its imports are done
    def __getattr__(self, name):
        raise Stop
builtins.snakemake = Snakemake()
before = set(sys.modules)
try:
    exec(compile(open(sys.argv[1]).read(), sys.argv[1], "exec"), {"__name__": "__main__"})
except Stop:
    pass
for m in extra + [m for key, modules in lazy.items() if key in sys.modules for m in modules]:
    __import__(m)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


@functools.cache
def import_closure(script: str) -> list[str]:
    """Every module a rule script imports, recorded by running its imports in a fresh interpreter."""
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE,
            str(REPO / script),
            str(REPO / "workflow_scripts"),
            json.dumps(LAZY_IMPORTS),
            json.dumps(SCRIPT_NEEDS.get(script, [])),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(proc.stdout.splitlines()[-1])


def third_party(modules: list[str], script: str) -> dict[str, str]:
    """Top-level third-party module -> its (normalised) distribution, as installed here; optional
    modules only where the script needs them."""
    import importlib.metadata
    import sys

    dists = importlib.metadata.packages_distributions()
    out = {}
    for top in sorted({m.split(".")[0] for m in modules}):
        optional = top in OPTIONAL and top not in SCRIPT_NEEDS.get(script, [])
        if top in sys.stdlib_module_names or top in ("hpaflow", "__main__") or optional or top not in dists:
            continue
        # A namespace package (bioimageio) spans distributions: the one named as an imported module, if any.
        out[top] = norm(next((d for d in dists[top] if norm(d) in {norm(m) for m in modules}), dists[top][0]))
    return out


def install_closure(names: set[str]) -> set[str]:
    """The distributions pip installs for `names`: them and their requirements, transitively."""
    import importlib.metadata

    from packaging.requirements import Requirement

    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in importlib.metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(norm(req.name))
    return seen


def env_packages(env: str) -> set[str]:
    deps = yaml.safe_load((REPO / "envs" / env).read_text())["dependencies"]
    pip = {norm(d.split("==")[0]) for dep in deps if isinstance(dep, dict) for d in dep["pip"]}
    conda = {norm(CONDA_TO_PIP.get(d.split("=")[0], d.split("=")[0])) for d in deps if isinstance(d, str)}
    return pip | (conda - {"python", "pip"})


def rule_env_scripts(text: str) -> set[tuple[str, str]]:
    """(env file, script) of each rule in a .smk file that has both, whatever the directive order."""
    out = set()
    for block in re.split(r"^\s*rule \w+:", text, flags=re.M)[1:]:  # rules in an if block are indented
        env = re.search(RULE_ENV, block)
        script = re.search(r'script:\s*\n\s*"\.\./(workflow_scripts/[\w.]+)"', block)
        if env and script:
            out.add((env.group(1), script.group(1)))
    return out


RULE_SCRIPTS = sorted(
    {pair for smk in (REPO / "rules").glob("*.smk") for pair in rule_env_scripts(smk.read_text())}, key=lambda x: x[1]
)


def test_every_rule_with_a_script_is_checked():
    assert len(RULE_SCRIPTS) == len({s for _, s in RULE_SCRIPTS}) >= 10
    scripts = {s for _, s in RULE_SCRIPTS}
    assert scripts == {f"workflow_scripts/{p.name}" for p in (REPO / "workflow_scripts").glob("*.py")}


@pytest.mark.parametrize("env,script", RULE_SCRIPTS, ids=[s.split("/")[-1] for _, s in RULE_SCRIPTS])
def test_rule_env_holds_what_its_script_imports_and_nothing_unused(env, script):
    needed = third_party(import_closure(script), script)
    needed_dists = set(needed.values()) | {norm(d) for d in PROGRAMS.get(script, [])}
    listed = env_packages(env)
    installed = install_closure(listed)
    missing = {m: d for m, d in needed.items() if d not in installed}
    assert not missing, f"{script} imports {missing}; envs/{env} does not install them"
    assert not {norm(d) for d in PROGRAMS.get(script, [])} - installed, f"{script} runs a program {env} lacks"
    # Minimal: every listed package is needed by some script of this env (or pulled in by one that is).
    used = set()
    for other_env, other in RULE_SCRIPTS:
        if other_env == env:
            used |= install_closure(
                set(third_party(import_closure(other), other).values()) | {norm(d) for d in PROGRAMS.get(other, [])}
            )
    assert needed_dists <= used
    assert listed <= used, f"envs/{env} lists {sorted(listed - used)}, which none of its rules' scripts needs"
