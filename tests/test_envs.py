"""Conda envs cannot be built here (no channel access): lint them against requirements.txt instead."""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import REPO

ENVS = sorted((REPO / "envs").glob("*.yaml"))


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([\w.+-]+)", line)
            assert m, f"requirements.txt: {line!r} is not pinned with =="
            pins[norm(m[1])] = m[2]
    return pins


def test_envs_exist_for_every_rule_family():
    assert {p.name for p in ENVS} >= {"data.yaml", "torch.yaml"}
    used = set()
    for smk in (REPO / "rules").glob("*.smk"):
        used |= set(re.findall(r'conda:\s*\n\s*"\.\./envs/([\w.-]+)"', smk.read_text()))
    assert used and all((REPO / "envs" / u).exists() for u in used), used
    assert used == {p.name for p in ENVS}, "an env file no rule uses, or a rule env that is missing"


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
    for dep in pip_deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([\w.+-]+)", dep)
        assert m, f"{path.name}: {dep!r} not pinned with =="
        name, version = norm(m[1]), m[2]
        assert name in pins, f"{path.name}: {name} is not in requirements.txt"
        assert pins[name] == version, f"{path.name}: {name}=={version}, requirements.txt has {pins[name]}"


def test_requirements_carry_the_mandated_pins():
    pins = requirements()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert pins["pretrainedmodels"] == "0.7.4" and "six" in pins
    assert pins["snakemake"].startswith("9.")
    for name in ["snakemake-executor-plugin-slurm", "h5py", "tifffile", "opencv-python-headless",
                 "numpy", "pandas", "iterative-stratification", "pytest"]:
        assert name in pins, name


# Import name -> distribution name, where they differ.
DISTRIBUTIONS = {"cv2": "opencv-python-headless", "iterstrat": "iterative-stratification",
                 "yaml": "pyyaml", "sklearn": "scikit-learn"}


def third_party_imports(path, seen=None) -> set[str]:
    """Top-level third-party modules a script needs, following imports into hpaflow."""
    import ast
    import sys

    seen = set() if seen is None else seen
    if path in seen:
        return set()
    seen.add(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import inside hpaflow
                mod = path.parent / f"{node.module}.py" if node.module else None
                if mod and mod.exists():
                    found |= third_party_imports(mod, seen)
                continue
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            pkg = REPO / "workflow_scripts" / top
            if top == "hpaflow":
                sub = pkg / (name.split(".", 1)[1].replace(".", "/") + ".py") if "." in name else pkg / "__init__.py"
                found |= third_party_imports(sub, seen)
            elif top not in sys.stdlib_module_names and top != "__future__":
                found.add(top)
    return found


RULE_ENV_SCRIPT = r'conda:\s*\n\s*"\.\./envs/([\w.-]+)"\s*\n\s*script:\s*\n\s*"\.\./(workflow_scripts/[\w.]+)"'


def test_rule_scripts_need_only_what_their_env_installs():
    checked = 0
    for smk in (REPO / "rules").glob("*.smk"):
        text = smk.read_text()
        for env, script in re.findall(RULE_ENV_SCRIPT, text):
            env_yaml = yaml.safe_load((REPO / "envs" / env).read_text())
            pip = [d for dep in env_yaml["dependencies"] if isinstance(dep, dict) for d in dep["pip"]]
            installed = {norm(d.split("==")[0]) for d in pip}
            for module in third_party_imports(REPO / script):
                assert norm(DISTRIBUTIONS.get(module, module)) in installed, f"{script} needs {module}, {env} lacks it"
            checked += 1
    assert checked >= 4  # demo_data, shard, folds, train
