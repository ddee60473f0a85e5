"""Acquisition: the HPAv18 images over HTTP (bounded, retried, resumable, verified) and the Kaggle set.

A file is written under a temporary name and renamed only once it has fully arrived and decodes
as an RGB JPEG, so an interrupted or failed download never leaves an image the shard step would read.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .files import atomic_path
from .layout import COLORS
from .progress import Progress

log = logging.getLogger("hpaflow")
USER_AGENT = "hpa-workflow/1.0 (Snakemake; polite bounded downloader)"


class DownloadError(RuntimeError):
    pass


@dataclass(frozen=True)
class FetchSettings:
    """How HPAv18 images are fetched; defaults live in the config schema only (from_config)."""

    base_url: str
    concurrency: int  # requests in flight at once
    retries: int  # further attempts after a failed one (not after a 404)
    backoff_s: float  # first wait; doubles per attempt, at most 60 s
    timeout_s: float
    resize: int | None  # store at this side instead of the original (saves disk)

    @classmethod
    def from_config(cls, config: dict) -> FetchSettings:
        d = config["download"]
        return cls(
            config["hpav18_base_url"], d["concurrency"], d["retries"], d["backoff_s"], d["timeout_s"], d["resize"]
        )


def hpav18_url(base_url: str, image_id: str, color: str) -> str:
    """Id `{antibody}_{plate}_{well}_{field}` -> `{base}/{antibody}/{plate}_{well}_{field}_{color}.jpg`."""
    antibody, rest = image_id.split("_", 1)
    return f"{base_url.rstrip('/')}/{antibody}/{rest}_{color}.jpg"


def part_rows(n: int, part: int, parts: int) -> slice:
    """Rows of part `part` (0-based) when n rows are cut into `parts` contiguous ranges."""
    return slice(n * part // parts, n * (part + 1) // parts)


def is_complete_jpeg(path: Path) -> bool:
    """Cheap completeness test for resuming: JPEG start and end-of-image markers."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(-2, os.SEEK_END)
            return head == b"\xff\xd8" and f.read(2) == b"\xff\xd9"
    except OSError:
        return False


def verify_jpeg(body: bytes) -> np.ndarray:
    if not body.startswith(b"\xff\xd8") or not body.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise ValueError("not a complete JPEG")
    img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("JPEG does not decode")
    return img


def fetch(url: str, dest: Path, s: FetchSettings) -> tuple[str, str]:
    """(status, detail): status ok, skipped (already complete), missing (404) or failed."""
    if is_complete_jpeg(dest):
        return "skipped", ""
    detail = ""
    for attempt in range(s.retries + 1):
        if attempt:
            time.sleep(min(s.backoff_s * 2 ** (attempt - 1), 60.0))
        try:
            req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            with urllib.request.urlopen(req, timeout=s.timeout_s) as resp:
                body = resp.read()
            img = verify_jpeg(body)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return "missing", "HTTP 404"
            detail = f"HTTP {e.code}"
            continue
        except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out
            detail = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            continue
        except ValueError as e:  # the body is not an image: a proxy error page, a cut transfer
            detail = str(e)
            continue
        if s.resize and img.shape[0] != s.resize:
            img = cv2.resize(img, (s.resize, s.resize), interpolation=cv2.INTER_AREA)
            body = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        with atomic_path(dest) as tmp:
            tmp.write_bytes(body)
        return "ok", f"{len(body)} bytes"
    return "failed", f"{detail} after {s.retries + 1} attempt(s)"


def download_hpav18(ids: list[str], out_dir: str | Path, s: FetchSettings, report: str | Path) -> dict[str, int]:
    """Fetch the 4 channels of every Id into out_dir/{Id}_{color}.jpg; write a TSV report of every file.

    Raises DownloadError naming what is missing when anything could not be fetched.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(i, c) for i in ids for c in COLORS]
    progress = Progress(len(tasks), "hpav18 download", "files", log=log)
    rows = []
    with ThreadPoolExecutor(max_workers=s.concurrency) as pool:
        futures = {pool.submit(fetch, hpav18_url(s.base_url, i, c), out / f"{i}_{c}.jpg", s): (i, c) for i, c in tasks}
        for fut in as_completed(futures):
            i, c = futures[fut]
            status, detail = fut.result()
            rows.append((i, c, status, detail))
            progress.update()
    df = pd.DataFrame(rows, columns=["Id", "color", "status", "detail"]).sort_values(["Id", "color"])
    counts = df["status"].value_counts().to_dict()
    bad = df[~df["status"].isin(["ok", "skipped"])]
    report = Path(report)
    # The report is kept whatever happens: the failures file is what a user reads next.
    with atomic_path(report.with_suffix(".failures.tsv")) as tmp:
        bad.to_csv(tmp, sep="\t", index=False)
    if len(bad):
        first = bad.iloc[0]
        raise DownloadError(
            f"{len(bad)} of {len(df)} file(s) not downloaded ({counts}); e.g. {first['Id']}_{first['color']}.jpg: "
            f"{first['status']} ({first['detail']}). All failures: {report.with_suffix('.failures.tsv')}. "
            "A rerun fetches only what is missing."
        )
    with atomic_path(report) as tmp:
        df.to_csv(tmp, sep="\t", index=False)
    return counts


def download_kaggle(data_root: str | Path, competition: str) -> str:
    """The competition's files via the kaggle CLI, unpacked into data_root (skipped when present)."""
    root = Path(data_root)
    if (root / "train.csv").exists() and (root / "train").is_dir() and (root / "test").is_dir():
        return "already present"
    cli = shutil.which("kaggle")
    if cli is None:
        raise DownloadError(
            "the kaggle command is not installed (it comes with requirements.txt: `make venv`); then log in "
            "(`kaggle auth login`, or a token from https://www.kaggle.com/settings/api) and accept the "
            f"competition rules at https://www.kaggle.com/c/{competition}/rules"
        )
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [cli, "competitions", "download", "-c", competition, "-p", str(root)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip()
        hint = ""
        if any(k in msg.lower() for k in ("401", "authentication", "credentials", "kaggle.json", "token")):
            hint = (
                " Missing or wrong Kaggle credentials: run `kaggle auth login`, or create a token at "
                "https://www.kaggle.com/settings/api and export KAGGLE_API_TOKEN (or save it to "
                "~/.kaggle/access_token)."
            )
        elif "403" in msg:
            hint = f" Accept the competition rules first: https://www.kaggle.com/c/{competition}/rules"
        raise DownloadError(f"kaggle competitions download failed: {msg[-500:]}.{hint}")
    for z in root.glob("*.zip"):
        with zipfile.ZipFile(z) as f:
            f.extractall(root)
        z.unlink()
    return "downloaded"
