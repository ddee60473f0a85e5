"""Atomic file writes (standard library only, so every rule's env can use them).

A file is written under a temporary name beside its final path and renamed onto it only when
complete: a failed or killed job never leaves a half-written output. The temporary file is
created with the mode a plain `open()` would give (0666 less the umask), so outputs on a shared
cluster are as readable as any other file the user writes; and a temporary file left by a job
that was killed (SIGKILL, node failure) is removed the next time the same output is written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("hpaflow")


def temp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")


def stale_temps(final: Path) -> list[Path]:
    """Temporary files of earlier writes of `final` (ours, or mkstemp's of older versions)."""
    pattern = re.compile(rf"\.{re.escape(final.name)}\.[A-Za-z0-9_]+\.tmp")
    if not final.parent.is_dir():
        return []
    return [p for p in final.parent.iterdir() if pattern.fullmatch(p.name)]


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the block succeeds.

    One job writes one output, so any temporary file of `final` that is already there was left
    by a killed job: it is removed first (a 1 GB shard or checkpoint otherwise stays forever).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for old in stale_temps(final):
        log.info("removing %s, left by an interrupted earlier write of %s", old.name, final.name)
        old.unlink(missing_ok=True)
    tmp = temp_name(final)
    # O_EXCL: never reuse a path; mode 0o666 lets the umask decide, as open() does (mkstemp: 0600).
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
