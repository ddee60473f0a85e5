"""Progress lines with rate and ETA for long loops, written to a log at most every few seconds."""

from __future__ import annotations

import logging
import time


class Progress:
    """Call `update(n)` as work completes; logs `label: done/total (pct) rate/s, ETA` periodically."""

    def __init__(
        self, total: int, label: str, unit: str = "it", every_s: float = 5.0, log: logging.Logger | None = None
    ) -> None:
        self.total, self.label, self.unit, self.every_s = total, label, unit, every_s
        self.log = log or logging.getLogger("hpaflow")
        self.done = 0
        self.suffix = ""  # e.g. the running loss, appended to each line
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            self.log.info(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.label}: {self.done}/{self.total} ({pct:.0f}%) {rate:.1f} {self.unit}/s, "
            f"elapsed {format_seconds(elapsed)}, ETA {format_seconds(left)}"
            + (f", {self.suffix}" if self.suffix else "")
        )


def format_seconds(s: float) -> str:
    if s == float("inf"):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
