"""Logging for rule scripts: everything, errors included, goes to the rule's `log:` file."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from .versions import software_line

log = logging.getLogger("hpaflow")


@contextlib.contextmanager
def logged(log_path: str | Path) -> Iterator[logging.Logger]:
    """Log to `log_path` and stderr; an exception is written to the log, then re-raised.

    The log is appended to, so a job that was killed or requeued keeps the story of every attempt.
    """
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers = [logging.FileHandler(log_path, mode="a"), logging.StreamHandler(sys.stderr)]
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    log.setLevel(logging.INFO)
    log.info("=== start (pid %d)", os.getpid())
    # This job's own environment (a rule's conda env, on whichever node): what ran, in the log of each attempt.
    log.info("software: %s", software_line())
    try:
        yield log
    except Exception as e:
        log.error("%s: %s", type(e).__name__, e)
        raise
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
