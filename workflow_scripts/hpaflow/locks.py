"""Hash-locked environments (`make lock`): the full closure of the .venv (requirements.lock) and of each rule env
(envs/locked/<env>.yaml), every package pinned with its sha256 hashes.

Direct requirements stay in requirements.txt and envs/<env>.yaml, the one place a human edits; the locks are
generated from them by uv's resolver (pinned in requirements.txt) for Linux x86_64 and Python 3.11, from packages
uploaded before EXCLUDE_NEWER, so `make lock` gives the same files on any day. Each lock records the digest of
what it was made from (its input file and these settings): `check` finds a lock older than its requirements.

A locked env file is a whole conda env file: Snakemake copies only the env file into .snakemake/conda, so the
closure lives in its pip section, one `name==version --hash=...` entry a line (conda hands them to pip as a
requirements file, and pip checks every hash). Where conda is on PATH, `write` also makes Snakemake's pin file
(envs/locked/<env>.linux-64.pin.txt, explicit conda packages) and, since Snakemake builds an env from its pin file
without the env file's pip section, a post-deploy script that installs the same closure with its hashes.

`check` and the reading functions use the standard library only: `make venv` checks requirements.lock with the
system Python before the venv exists. `write` needs uv and PyYAML (the venv, or the small one `make lock` makes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .versions import normalise

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = "requirements.txt"
VENV_LOCK = "requirements.lock"
ENV_DIR = "envs"
LOCKED_DIR = "envs/locked"
PYTHON_VERSION = "3.11"
PYTHON_PLATFORM = "x86_64-manylinux_2_28"  # Linux x86_64, the GPU nodes' and this workflow's CI's platform
CONDA_PLATFORM = "linux-64"
# Packages uploaded after this are invisible to the resolver: the same inputs lock to the same files whenever
# `make lock` runs. Move it forward (and run make lock) to take newer releases.
EXCLUDE_NEWER = "2026-12-02T00:00:00Z"
DIGEST = "# inputs sha256: "
RERUN = "run `make lock`"
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)")
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


class LockError(ValueError):
    """A lock that is missing, stale or malformed; the message names the file and says what to do."""


@dataclass(frozen=True)
class Locked:
    """One package of a lock: pinned version and the sha256 hashes pip accepts for it."""

    name: str
    version: str
    hashes: tuple[str, ...]

    def line(self) -> str:
        return f"{self.name}=={self.version} " + " ".join(f"--hash=sha256:{h}" for h in self.hashes)


# --- reading (standard library only) --------------------------------------------------------------------------


def settings_text() -> str:
    """What besides the input file decides a lock."""
    return f"python {PYTHON_VERSION}; platform {PYTHON_PLATFORM}; exclude-newer {EXCLUDE_NEWER}"


def inputs_digest(source_text: str) -> str:
    return hashlib.sha256(f"{settings_text()}\n{source_text}".encode()).hexdigest()


def parse_requirement_lines(text: str, where: str) -> list[Locked]:
    """`name==version --hash=sha256:...` requirements (backslash continuations joined, comments and option lines
    skipped); a line that is not pinned with == or carries no hash is an error naming it."""
    out = []
    for n, raw in enumerate(re.sub(r"\\\n", " ", text).splitlines(), 1):
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#") or line == "--require-hashes":
            continue
        m = PIN.match(line)
        hashes = tuple(HASH.findall(line))
        if not m or not hashes or len(hashes) != line.count("--hash="):
            raise LockError(f"{where}: line {n} {raw.strip()[:80]!r} is not `name==version --hash=sha256:...`")
        out.append(Locked(normalise(m[1]), m[2], hashes))
    return out


def direct_pins(text: str, where: str) -> dict[str, str]:
    """name -> version of a requirements text's `name==version` lines (comments allowed after them)."""
    pins = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#")[0].strip()
        if line:
            if not (m := PIN.fullmatch(line)):
                raise LockError(f"{where}: line {n} {line!r} is not pinned with ==")
            pins[normalise(m[1])] = m[2]
    return pins


def recorded_digest(text: str) -> str | None:
    return next((line[len(DIGEST) :].strip() for line in text.splitlines() if line.startswith(DIGEST)), None)


def lock_path_of(source: str) -> str:
    """The lock of an input: requirements.txt -> requirements.lock; envs/<env>.yaml -> envs/locked/<env>.yaml."""
    return VENV_LOCK if source == REQUIREMENTS else f"{LOCKED_DIR}/{Path(source).name}"


def check(source: str, root: Path = REPO) -> Path:
    """The lock of `source` (a path relative to root), if it was made from source as it is now; else LockError."""
    lock = root / lock_path_of(source)
    if not lock.exists():
        raise LockError(f"{lock.relative_to(root)}: missing: {RERUN}")
    made_from = recorded_digest(lock.read_text())
    if made_from != inputs_digest((root / source).read_text()):
        raise LockError(
            f"{lock.relative_to(root)} is older than {source} (made from another version of it or other lock "
            f"settings): {RERUN}"
        )
    return lock


def env_sources(root: Path = REPO) -> list[str]:
    return sorted(f"{ENV_DIR}/{p.name}" for p in (root / ENV_DIR).glob("*.yaml"))


def sources(root: Path = REPO) -> list[str]:
    return [REQUIREMENTS, *env_sources(root)]


# --- writing (uv, PyYAML) ----------------------------------------------------------------------------------------


def uv_command(uv: str, requirements: str, constraints: str | None) -> list[str]:
    cmd = [uv, "pip", "compile", requirements, "--generate-hashes", "--no-header", "--quiet"]
    cmd += ["--python-version", PYTHON_VERSION, "--python-platform", PYTHON_PLATFORM, "--exclude-newer", EXCLUDE_NEWER]
    return cmd + (["--constraint", constraints, "--no-annotate"] if constraints else [])


def uv_version(uv: str) -> str:
    return subprocess.run([uv, "--version"], check=True, capture_output=True, text=True).stdout.strip()


def compile_closure(uv: str, requirements: str, constraints: str | None, cwd: Path) -> str:
    """uv's locked closure of a requirements file (relative to cwd, so its annotations name no temp path)."""
    run = subprocess.run(uv_command(uv, requirements, constraints), cwd=cwd, capture_output=True, text=True)
    if run.returncode:
        raise LockError(f"uv could not lock {requirements}: {run.stderr.strip()}")
    return run.stdout


def header(source: str, source_text: str, what: str, tool: str) -> list[str]:
    """A lock's first lines: generated from what, its size (`what`), by what, and the digest `check` compares."""
    return [
        f"# Generated by `make lock` from {source}: do not edit; edit {source} and {RERUN}.",
        f"# {what}",
        f"# {tool} pip compile --generate-hashes; {settings_text()}.",
        f"{DIGEST}{inputs_digest(source_text)}",
    ]


def render_venv_lock(source_text: str, closure: str, tool: str) -> str:
    n = len(parse_requirement_lines(closure, VENV_LOCK))
    what = f"The .venv's full closure (`make venv` installs it with --require-hashes): {n} packages."
    return "\n".join(header(REQUIREMENTS, source_text, what, tool)) + "\n" + closure


def render_env_lock(source: str, source_text: str, env: dict, closure: str, tool: str) -> str:
    """The locked env file: the env's name, channels and conda packages, and its pip closure with hashes."""
    locked = parse_requirement_lines(closure, source)
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    what = f"The env's full pip closure: {len(locked)} packages, each pinned with its sha256 hashes (pip checks them)."
    lines = [
        *header(source, source_text, what, tool),
        f"name: {env['name']}",
        "channels:",
        *(f"  - {c}" for c in env["channels"]),
        "dependencies:",
        *(f"  - {d}" for d in conda),
        "  - pip:",
        "      - --require-hashes",
        # JSON strings are YAML's double-quoted scalars: no entry can be read as a comment or a mapping.
        *(f"      - {json.dumps(p.line())}" for p in locked),
    ]
    return "\n".join(lines) + "\n"


def env_pip_requirements(env: dict, source: str) -> list[str]:
    pip = [d for dep in env["dependencies"] if isinstance(dep, dict) for d in dep.get("pip", [])]
    if not pip:
        raise LockError(f"{source}: no pip section to lock")
    return pip


def locked_pip(text: str, where: str) -> list[Locked]:
    """The pip closure of a locked env file (standard library: the entries are one JSON string a line)."""
    entries = [json.loads(m[1]) for m in re.finditer(r'^      - (".*")$', text, flags=re.M)]
    return parse_requirement_lines("\n".join(entries), where)


def read_lock(path: str | Path) -> list[Locked]:
    """The packages of requirements.lock or of a locked env file."""
    text = Path(path).read_text()
    return locked_pip(text, str(path)) if str(path).endswith(".yaml") else parse_requirement_lines(text, str(path))


def post_deploy_script(source: str, locked: Iterable[Locked]) -> str:
    """Snakemake's post-deploy script for an env built from its pin file (which has no pip section): the same
    hashed closure, installed in the activated env."""
    body = "\n".join(p.line() for p in locked)
    return (
        "#!/usr/bin/env bash\n"
        f"# Generated by `make lock` from {source}: do not edit. Snakemake builds an env from its pin file without\n"
        "# the env file's pip section; this installs the same closure, every hash checked.\n"
        "set -euo pipefail\n"
        "python -m pip install --no-deps --require-hashes -r /dev/stdin <<'LOCK'\n"
        f"{body}\nLOCK\n"
    )


def conda_pin(env: dict, out: Path) -> None:
    """Snakemake's pin file of an env's conda packages: solved into a scratch prefix, listed explicitly."""
    conda = shutil.which("conda")
    specs = [d for d in env["dependencies"] if isinstance(d, str)]
    channels = [a for c in env["channels"] if c != "nodefaults" for a in ("-c", c)]
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "env")
        subprocess.run(
            [conda, "create", "--yes", "--quiet", "--prefix", prefix, "--override-channels", *channels, *specs],
            check=True,
            capture_output=True,
        )
        listed = subprocess.run(
            [conda, "list", "--explicit", "--md5", "--prefix", prefix], check=True, capture_output=True, text=True
        ).stdout
    write_if_changed(out, listed)


def write_if_changed(path: Path, text: str) -> None:
    """Leave an identical lock untouched: its mtime is what makes `make venv` reinstall."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def write(uv: str = "uv", root: Path = REPO, out_root: Path | None = None) -> list[Path]:
    """Lock requirements.txt and every envs/*.yaml (under out_root, default root); the env locks are constrained
    to the venv lock's versions, so every lock agrees on the packages they share."""
    import yaml  # the writing side only: make venv's check runs before PyYAML is there

    out_root = out_root or root
    uv = str(Path(uv).resolve()) if "/" in uv else uv  # uv runs in other folders
    tool = uv_version(uv)
    written = []
    req_text = (root / REQUIREMENTS).read_text()
    closure = compile_closure(uv, REQUIREMENTS, None, root)
    write_if_changed(out_root / VENV_LOCK, render_venv_lock(req_text, closure, tool))
    written.append(out_root / VENV_LOCK)
    venv = read_lock(out_root / VENV_LOCK)
    (out_root / LOCKED_DIR).mkdir(parents=True, exist_ok=True)
    with_conda = shutil.which("conda") is not None
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "constraints.txt").write_text("".join(f"{p.name}=={p.version}\n" for p in venv))
        for source in env_sources(root):
            text = (root / source).read_text()
            env = yaml.safe_load(text)
            name = Path(source).stem
            Path(tmp, f"{name}.txt").write_text("\n".join(env_pip_requirements(env, source)) + "\n")
            closure = compile_closure(uv, f"{name}.txt", "constraints.txt", Path(tmp))
            out = out_root / lock_path_of(source)
            write_if_changed(out, render_env_lock(source, text, env, closure, tool))
            written.append(out)
            if with_conda:
                conda_pin(env, out.with_name(f"{name}.{CONDA_PLATFORM}.pin.txt"))
                script = out.with_name(f"{name}.post-deploy.sh")
                write_if_changed(script, post_deploy_script(source, read_lock(out)))
                written += [out.with_name(f"{name}.{CONDA_PLATFORM}.pin.txt"), script]
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpaflow.locks", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="lock requirements.txt and envs/*.yaml")
    w.add_argument("--uv", default="uv", help="the uv executable")
    c = sub.add_parser("check", help="fail when a lock is older than its requirements")
    c.add_argument("sources", nargs="*", help=f"inputs to check (default: all: {REQUIREMENTS}, envs/*.yaml)")
    args = ap.parse_args(argv)
    try:
        if args.command == "write":
            for path in write(args.uv):
                counted = path.name == VENV_LOCK or path.suffix == ".yaml"
                print(f"wrote {path.relative_to(REPO)}" + (f": {len(read_lock(path))} packages" if counted else ""))
        else:
            for source in args.sources or sources():
                check(source)
    except LockError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
