"""Downloads against a real HTTP server on 127.0.0.1 serving the real HPAv18 sample; the Kaggle CLI."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import DATA, run_snakemake
from hpaflow import download
from hpaflow.download import DownloadError, FetchSettings, download_hpav18, download_kaggle, hpav18_url, part_rows
from hpaflow.layout import COLORS

IDS = ["11088_89_B5_1", "11088_89_B5_2"]  # the second is the same field served under another name


class Server:
    """Serves /images/{antibody}/{rest}_{color}.jpg from the sample; `script[path]` overrides the next replies."""

    def __init__(self) -> None:
        self.files = {}
        for image_id in IDS:
            antibody, rest = image_id.split("_", 1)
            for c in COLORS:
                self.files[f"/images/{antibody}/{rest}_{c}.jpg"] = (DATA / f"89_B5_1_{c}.jpg").read_bytes()
        self.script: dict[str, list] = {}
        self.hits: dict[str, int] = {}
        self.times: dict[str, list[float]] = {}  # when each request arrived (time.monotonic)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                server.times.setdefault(self.path, []).append(time.monotonic())
                action = server.script.get(self.path, []).pop(0) if server.script.get(self.path) else "serve"
                if isinstance(action, int):
                    self.send_error(action)
                    return
                body = b"<html>proxy error</html>" if action == "garbage" else server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/images"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def path(self, image_id: str, color: str) -> str:
        return hpav18_url("/images", image_id, color)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def settings(server, **kw) -> FetchSettings:
    return FetchSettings(
        server.url, **{"concurrency": 4, "retries": 2, "backoff_s": 0.01, "timeout_s": 10, "resize": None, **kw}
    )


def test_url_layout_and_parts():
    assert hpav18_url("http://h/images/", "10580_1610_C1_1", "red") == "http://h/images/10580/1610_C1_1_red.jpg"
    cover = [i for k in range(3) for i in range(10)[part_rows(10, k, 3)]]
    assert cover == list(range(10))


def test_full_download(server, tmp_path):
    counts = download_hpav18(IDS, tmp_path / "hpav18", settings(server), tmp_path / "report.tsv")
    assert counts == {"ok": 8}
    for image_id in IDS:
        for c in COLORS:
            got = (tmp_path / "hpav18" / f"{image_id}_{c}.jpg").read_bytes()
            assert got == (DATA / f"89_B5_1_{c}.jpg").read_bytes()
    report = pd.read_csv(tmp_path / "report.tsv", sep="\t")
    assert len(report) == 8 and set(report["status"]) == {"ok"}
    assert not [p for p in (tmp_path / "hpav18").iterdir() if p.suffix != ".jpg"]  # no temporary files


def test_resume_skips_complete_files_and_refetches_a_truncated_one(server, tmp_path):
    out = tmp_path / "hpav18"
    download_hpav18(IDS[:1], out, settings(server), tmp_path / "r1.tsv")
    victim = out / f"{IDS[0]}_green.jpg"
    victim.write_bytes(victim.read_bytes()[:5000])  # an interrupted transfer by another tool
    hits_before = dict(server.hits)
    counts = download_hpav18(IDS, out, settings(server), tmp_path / "r2.tsv")
    assert counts == {"ok": 5, "skipped": 3}
    refetched = {p for p, n in server.hits.items() if n > hits_before.get(p, 0)}
    assert server.path(IDS[0], "green") in refetched
    assert not any(server.path(IDS[0], c) in refetched for c in ["red", "blue", "yellow"])
    assert victim.read_bytes() == (DATA / "89_B5_1_green.jpg").read_bytes()


def test_server_error_is_retried(server, tmp_path):
    path = server.path(IDS[0], "blue")
    server.script[path] = [500]
    counts = download_hpav18(IDS[:1], tmp_path / "d", settings(server), tmp_path / "r.tsv")
    assert counts == {"ok": 4} and server.hits[path] == 2


def test_retries_wait_twice_as_long_each_time(server, tmp_path):
    path = server.path(IDS[0], "green")
    server.script[path] = [503, 503, 503]
    counts = download_hpav18(IDS[:1], tmp_path / "d", settings(server, retries=3, backoff_s=0.1), tmp_path / "r.tsv")
    assert counts == {"ok": 4} and server.hits[path] == 4
    gaps = np.diff(server.times[path])
    for k, gap in enumerate(gaps):  # at least 0.1, 0.2, 0.4 s apart (sleeps never end early)
        assert gap >= 0.1 * 2**k * 0.95, gaps


def test_backoff_is_capped_at_60_seconds(server, tmp_path, monkeypatch):
    waits = []
    monkeypatch.setattr(download.time, "sleep", waits.append)  # record the waits instead of sitting them out
    path = server.path(IDS[0], "red")
    server.script[path] = [500] * 4
    download_hpav18(IDS[:1], tmp_path / "d", settings(server, retries=4, backoff_s=20), tmp_path / "r.tsv")
    assert waits == [20, 40, 60, 60]


def test_404_is_reported_and_fails(server, tmp_path):
    server.files.pop(server.path(IDS[1], "yellow"))
    with pytest.raises(DownloadError, match=r"1 of 8 file\(s\) not downloaded .* 11088_89_B5_2_yellow\.jpg: missing"):
        download_hpav18(IDS, tmp_path / "d", settings(server), tmp_path / "r.tsv")
    assert server.hits[server.path(IDS[1], "yellow")] == 1  # a 404 is not retried
    failures = pd.read_csv(tmp_path / "r.failures.tsv", sep="\t")
    assert failures[["Id", "color", "status"]].values.tolist() == [[IDS[1], "yellow", "missing"]]
    assert not (tmp_path / "r.tsv").exists() and not (tmp_path / "d" / f"{IDS[1]}_yellow.jpg").exists()


def test_body_that_is_not_a_jpeg_is_rejected(server, tmp_path):
    path = server.path(IDS[0], "red")
    server.script[path] = ["garbage"] * 3
    with pytest.raises(DownloadError, match="not a complete JPEG after 3 attempt"):
        download_hpav18(IDS[:1], tmp_path / "d", settings(server), tmp_path / "r.tsv")
    assert not (tmp_path / "d" / f"{IDS[0]}_red.jpg").exists()


def test_resize_on_the_fly(server, tmp_path):
    download_hpav18(IDS[:1], tmp_path / "d", settings(server, resize=512), tmp_path / "r.tsv")
    img = cv2.imread(str(tmp_path / "d" / f"{IDS[0]}_green.jpg"), cv2.IMREAD_COLOR)
    assert img.shape == (512, 512, 3)


def test_snakemake_download_hpav18_then_nothing_to_do(server, workflow_dir, tmp_path):
    root = tmp_path / "hpa"
    root.mkdir()
    (root / "HPAv18RBGY_wodpl.csv").write_text("Id,Target\n" + "".join(f"{i},6\n" for i in IDS))
    # The acceptance command (8 download jobs by default: most get no Id here).
    args = ["download_hpav18", "--config", f"data_root={root}", f"hpav18_base_url={server.url}"]
    run_snakemake(workflow_dir, *args)
    assert sorted(p.name for p in (root / "hpav18").iterdir()) == sorted(f"{i}_{c}.jpg" for i in IDS for c in COLORS)
    hits = sum(server.hits.values())
    assert hits == 8
    proc = run_snakemake(workflow_dir, *args)
    assert "Nothing to be done" in proc.stdout + proc.stderr and sum(server.hits.values()) == hits


def test_kaggle_without_credentials_says_what_to_do(tmp_path):
    if shutil.which("kaggle") is None and not (Path(sys.executable).parent / "kaggle").exists():
        pytest.skip("kaggle CLI not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE")}
    env["HOME"] = str(tmp_path)  # no ~/.kaggle token
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        with pytest.raises(DownloadError, match="kaggle auth login"):
            download_kaggle(tmp_path / "hpa", "human-protein-atlas-image-classification")
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_kaggle_skipped_when_present(tmp_path):
    for d in ["train", "test"]:
        (tmp_path / d).mkdir()
    (tmp_path / "train.csv").write_text("Id,Target\n")
    assert download_kaggle(tmp_path, "human-protein-atlas-image-classification") == "already present"
