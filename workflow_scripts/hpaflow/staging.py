"""Node-local staging of shards (config key stage_shards): a job copies its shard files to a local disk
before reading them, for clusters whose shared filesystem cannot serve many GPU jobs' random reads.

Staging is an optimisation only: whatever goes wrong before the job starts reading (an unset variable, a
missing folder, too little room, a failed copy) is a warning, and the job reads the shared copy. The
copies live in a folder of their own (mkdtemp) that is removed when the job ends, on errors too.
Staged paths only change where bytes are read from: fingerprints follow the shards' content
(`shards.content_fingerprint`), so a job resumes the same whether or not it staged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .progress import Progress

log = logging.getLogger("hpaflow")

# Room left free beyond the copies: other jobs on the node write to the same local disk.
STAGE_MARGIN = 1 << 30
# $NAME or ${NAME}, as os.path.expandvars reads them.
VARIABLE = re.compile(r"\$(\w+|\{[^}]*\})")


def _size(n: int) -> str:
    return f"{n:,} bytes ({n / 1e9:.2f} GB)"


def stage_folder(where: str, log: logging.Logger = log) -> Path | None:
    """`where` with environment variables and `~` expanded, if it names a writable folder; else None and a
    warning saying why (the job then reads the shared copy)."""
    unset = [m.strip("{}") for m in VARIABLE.findall(where) if not os.environ.get(m.strip("{}"))]
    if unset:
        log.warning(
            "stage_shards: %s: environment variable %s is not set on this node; reading the shared copy",
            where,
            ", ".join(f"${v}" for v in unset),
        )
        return None
    folder = Path(os.path.expanduser(os.path.expandvars(where)))
    if not folder.is_dir():
        log.warning("stage_shards: %s (%s) is not a folder on this node; reading the shared copy", where, folder)
        return None
    if not os.access(folder, os.W_OK | os.X_OK):
        log.warning("stage_shards: %s (%s) is not writable; reading the shared copy", where, folder)
        return None
    return folder


def local_names(files: list[str]) -> list[Path]:
    """Where each file goes inside the staging folder: `{dataset}/{index}.h5` as in results/shards, so that
    messages naming a staged file still say which shard it is; a name taken already gets its position."""
    names: list[Path] = []
    for k, f in enumerate(files):
        name = Path(Path(f).parent.name) / Path(f).name
        names.append(name if name not in names else Path(f"{k}_{name.parent}") / name.name)
    return names


@contextlib.contextmanager
def staged(
    files: list[str], where: str | None, log: logging.Logger = log, margin: int = STAGE_MARGIN
) -> Iterator[list[str]]:
    """Yield paths to read `files` from, in the same order: copies in a new folder inside `where` (a path
    or an environment variable such as $TMPDIR, expanded here, on the node), removed when the block ends;
    `files` themselves when `where` is None, or, with a warning, when `where` is unusable or lacks room
    for the files plus `margin` bytes, or when a copy fails."""
    files = [str(f) for f in files]
    folder = stage_folder(where, log) if where is not None and files else None
    copied = stage_files(files, folder, margin, log) if folder is not None else None
    if copied is None:
        yield files
        return
    stage, local = copied
    try:
        yield [local[f] for f in files]
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        log.info("stage_shards: removed the staged copies in %s", stage)


def stage_files(
    files: list[str], folder: Path, margin: int, log: logging.Logger = log
) -> tuple[Path, dict[str, str]] | None:
    """Copy `files` into a new folder inside `folder` if it has room for them plus `margin` bytes: that
    folder and each file's copy; else None, with a warning (nothing is left behind)."""
    unique = list(dict.fromkeys(files))  # a file listed twice is copied once
    try:
        needed = sum(os.path.getsize(f) for f in unique)
    except OSError as e:  # a shard that is not there: the job, reading the shared copy, says which
        log.warning("stage_shards: %s; reading the shared copy", e)
        return None
    free = shutil.disk_usage(folder).free
    if free < needed + margin:
        log.warning(
            "stage_shards: %s has %s free; the %d shards need %s plus a margin of %s: reading the shared copy",
            folder,
            _size(free),
            len(unique),
            _size(needed),
            _size(margin),
        )
        return None
    try:
        stage = Path(tempfile.mkdtemp(prefix="hpaflow-shards-", dir=folder))
    except OSError as e:
        log.warning("stage_shards: cannot make a folder in %s (%s); reading the shared copy", folder, e)
        return None
    try:
        return stage, copy_files(unique, stage, needed, log)
    except OSError as e:
        log.warning(
            "stage_shards: copying to %s failed (%s); %s needed, %s free before copying: reading the shared copy",
            stage,
            e,
            _size(needed),
            _size(free),
        )
        shutil.rmtree(stage, ignore_errors=True)
        return None
    except BaseException:  # interrupted: leave nothing behind on the node
        shutil.rmtree(stage, ignore_errors=True)
        raise


def copy_files(files: list[str], stage: Path, total: int, log: logging.Logger = log) -> dict[str, str]:
    """Copy each file into `stage` (under a temporary name, renamed when complete: a copy is never
    half-written); logs progress on long copies and the rate. The local path of each file."""
    progress = Progress(len(files), f"stage_shards: copying to {stage}", "files", log=log)
    start = time.monotonic()
    local = {}
    for f, name in zip(files, local_names(files)):
        dest = stage / name
        dest.parent.mkdir(exist_ok=True)
        part = dest.with_name(f".{dest.name}.part")
        shutil.copyfile(f, part)
        os.replace(part, dest)
        local[f] = str(dest)
        if len(local) < len(files):  # progress lines on long copies only; the last line says it all
            progress.update()
    seconds = max(time.monotonic() - start, 1e-9)
    log.info(
        "stage_shards: %d shards, %.1f MB copied to %s in %.1f s (%.0f MB/s)",
        len(files),
        total / 1e6,
        stage,
        seconds,
        total / 1e6 / seconds,
    )
    return local


@contextlib.contextmanager
def staged_groups(
    groups: dict[str, list[str]], where: str | None, log: logging.Logger = log, margin: int = STAGE_MARGIN
) -> Iterator[dict[str, list[str]]]:
    """`staged` for files in named groups (predict: train and test shards; embed: each dataset's), all
    staged together: the same groups, with the paths to read from."""
    flat = [f for files in groups.values() for f in files]
    with staged(flat, where, log, margin) as local:
        paths = iter(local)
        yield {name: [next(paths) for _ in files] for name, files in groups.items()}
