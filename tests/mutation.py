"""`make mutation`: mutation testing (mutmut, pinned in requirements.txt) of the modules whose maths
decides the results, against their fast tests.

mutmut names a mutant by its module path under the folder it runs in, so the package and the tests
are staged in results/mutation/ (hpaflow/ at the top, as the tests import it) and mutmut runs there.
Writes results/mutation.json: per module the mutants, killed, survived and not covered, and each
survivor with its diff and, where tests/mutation_equivalent.yaml explains it (matched by function and
diff), why it is equivalent (changes no result); prints a table.

    .venv/bin/python tests/mutation.py [--modules metrics thresholds ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STAGE = REPO / "results" / "mutation"  # --stage changes it (one folder per concurrent run)
MODULES = ["metrics", "thresholds", "ensemble", "submission", "summary", "predict", "folds"]
TESTS = [
    "unit/test_metrics.py",
    "unit/test_thresholds.py",
    "unit/test_ensemble_submission.py",
    "unit/test_summary.py",
    "unit/test_predict.py",
    "unit/test_folds.py",
    "unit/test_duplicates.py",  # group-aware folds (group_folds, rebalance with movable rows)
    "unit/test_config.py",  # each stage's settings built from the config (from_config)
]
# mutmut's exit codes of a mutant's test run (mutmut.stats.status_by_exit_code).
STATUS = {
    0: "survived",
    1: "killed",
    3: "killed",
    5: "no tests",
    33: "no tests",
    36: "timeout",
    24: "timeout",
    -24: "timeout",
    152: "timeout",
    255: "timeout",
}


def stage(modules: list[str]) -> None:
    shutil.rmtree(STAGE, ignore_errors=True)
    STAGE.mkdir(parents=True)
    shutil.copytree(
        REPO / "workflow_scripts" / "hpaflow", STAGE / "hpaflow", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(REPO / "tests", STAGE / "tests", ignore=shutil.ignore_patterns("__pycache__", "slurm"))
    for folder in ("config", "rules"):  # test_config reads the schema, the generated README and the rules
        shutil.copytree(REPO / folder, STAGE / folder)
    shutil.copy(REPO / "pytest.ini", STAGE / "pytest.ini")
    if (REPO.parent / "shared").exists():  # tests find ../shared beside the folder they run in
        (STAGE / "shared").symlink_to(REPO.parent / "shared")
    config = {
        "tool": {
            "mutmut": {
                "source_paths": ["hpaflow"],
                "only_mutate": [f"hpaflow/{m}.py" for m in modules],
                "pytest_add_cli_args_test_selection": [f"tests/{t}" for t in TESTS],
                "pytest_add_cli_args": ["-p", "no:cacheprovider", "-m", "not slow"],
                "also_copy": ["config", "rules", "pytest.ini"],
                "process_isolation": "forkserver",  # torch is not fork-safe after the stats run
            }
        }
    }
    (STAGE / "pyproject.toml").write_text(toml(config))


def toml(config: dict) -> str:
    lines = []
    for table, values in config["tool"].items():
        lines.append(f"[tool.{table}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def diff(name: str) -> str:
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "mutmut"), "show", name], cwd=STAGE, capture_output=True, text=True
    )
    return "\n".join(
        line for line in proc.stdout.splitlines() if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))
    )


def collect(modules: list[str], seconds: float) -> dict:
    known = yaml.safe_load((REPO / "tests" / "mutation_equivalent.yaml").read_text()) or []
    equivalent = {(e["function"], e["diff"].strip()): e["reason"] for e in known}
    out = {"seconds": round(seconds, 1), "modules": {}}
    for m in modules:
        meta = json.loads((STAGE / "mutants" / "hpaflow" / f"{m}.py.meta").read_text())["exit_code_by_key"]
        counts = Counter(STATUS.get(code, "suspicious") for code in meta.values())
        survivors = []
        for name, code in sorted(meta.items()):
            if STATUS.get(code) in ("survived", "no tests"):
                short = name.removeprefix("hpaflow.")
                change = diff(name)
                survivors.append(
                    {
                        "mutant": short,
                        "status": STATUS[code],
                        "diff": change,
                        "equivalent": equivalent.get((short.split("__mutmut_")[0], change.strip())),
                    }
                )
        n = len(meta)
        unexplained = [s for s in survivors if not s["equivalent"]]
        out["modules"][m] = {
            "mutants": n,
            "killed": counts["killed"],
            "survived": counts["survived"],
            "not_covered": counts["no tests"],
            "timeout": counts["timeout"],
            "killed_fraction": round(counts["killed"] / n, 4) if n else None,
            "equivalent": len(survivors) - len(unexplained),
            "unexplained": len(unexplained),
            "survivors": survivors,
        }
    total = sum(v["mutants"] for v in out["modules"].values())
    killed = sum(v["killed"] for v in out["modules"].values())
    out["total"] = {
        "mutants": total,
        "killed": killed,
        "killed_fraction": round(killed / total, 4) if total else None,
        "unexplained": sum(v["unexplained"] for v in out["modules"].values()),
    }
    return out


def table(r: dict) -> str:
    rows = [f"{'module':<12}{'mutants':>8}{'killed':>8}{'survived':>9}{'no test':>8}{'killed %':>9}{'unexpl.':>8}"]
    for m, v in [*r["modules"].items(), ("total", {**r["total"], "survived": "", "not_covered": ""})]:
        frac = "" if v["killed_fraction"] is None else f"{100 * v['killed_fraction']:.1f}"
        rows.append(
            f"{m:<12}{v['mutants']:>8}{v['killed']:>8}{v['survived']:>9}{v['not_covered']:>8}{frac:>9}"
            f"{v['unexplained']:>8}"
        )
    rows.append(f"mutmut run: {r['seconds']} s")
    return "\n".join(rows)


def main() -> int:
    global STAGE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modules", nargs="+", default=MODULES, choices=MODULES)
    ap.add_argument("--out", default=str(REPO / "results" / "mutation.json"))
    ap.add_argument("--stage", default=str(STAGE), help="folder to stage and run in")
    args = ap.parse_args()
    STAGE = Path(args.stage).resolve()
    stage(args.modules)
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "mutmut"), "run"], cwd=STAGE, capture_output=True, text=True
    )
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        return proc.returncode
    result = collect(args.modules, seconds)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
