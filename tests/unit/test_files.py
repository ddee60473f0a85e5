"""Atomic writes: nothing half-written, modes as the umask says, temporaries of killed jobs removed."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from hpaflow.files import atomic_path


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_mode_follows_the_umask_like_a_plain_write(tmp_path: Path, umask, mode):
    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "a.csv") as tmp:
            tmp.write_text("x")
        (tmp_path / "plain.csv").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.csv").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "plain.csv").stat().st_mode) == mode


def test_temporary_of_a_killed_writer_is_removed_by_the_next_write(tmp_path: Path):
    target = tmp_path / "0.h5"
    # A real SIGKILL inside the block: the temporary file stays behind, as it would after a node failure.
    code = (
        "import os\n"
        "from hpaflow.files import atomic_path\n"
        f"with atomic_path({str(target)!r}) as tmp:\n"
        "    tmp.write_bytes(b'x' * 1000)\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO / "workflow_scripts")}
    )
    assert proc.returncode == -9
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".0.h5.") and left[0].endswith(".tmp")
    # Older versions wrote mkstemp names (8 random characters); those are found as well.
    (tmp_path / ".0.h5.k_3xq9za.tmp").write_bytes(b"old")
    # Temporaries of other outputs in the same folder are not touched.
    (tmp_path / ".0.h5.extra.abc.tmp").write_bytes(b"other")
    (tmp_path / ".10.h5.abcd1234.tmp").write_bytes(b"other")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".0.h5.extra.abc.tmp", ".10.h5.abcd1234.tmp", "0.h5"]
