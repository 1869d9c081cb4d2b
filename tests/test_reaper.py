"""A test that pytest-timeout kills part way leaves no server behind (tests/reaper.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.study_helpers import REPO

pytestmark = pytest.mark.slow

# PostgreSQL started as the cluster tests start it (at collection here, so that the test's
# timer covers only its hang: a cleanup that never returns); nothing stops it but the reaper
LEAKY = """
import os, pathlib, time
import pytest
from tests.cluster import Postgres

SERVER = Postgres(password="pw")
pathlib.Path(os.environ["LEAK_PID_FILE"]).write_text(
    (SERVER.dir / "data" / "postmaster.pid").read_text().split()[0]
)

@pytest.mark.timeout(2)
def test_its_cleanup_hangs():
    time.sleep(3600)  # as a stop() that never returns
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def test_a_test_killed_by_pytest_timeout_leaves_no_server_behind(tmp_path: Path) -> None:
    from tests.cluster import Postgres

    probe = Postgres()  # skips (or fails in CI) where PostgreSQL cannot start, as its tests do
    probe.close()
    test_file = tmp_path / "test_leaky.py"
    test_file.write_text(LEAKY)
    pid_file = tmp_path / "pid"
    env = {**os.environ, "LEAK_PID_FILE": str(pid_file)}
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest", str(test_file),
         "--rootdir", str(REPO)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    out, _ = run.communicate(timeout=900)
    assert "Timeout" in out and "1 failed" in out, out
    assert pid_file.exists(), out
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 60  # the reaper ran before pytest exited: at most a reap
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(pid), f"PostgreSQL (pid {pid}) outlived the test run:\n{out}"
    assert "stopped what tests left running: PostgreSQL in" in out
