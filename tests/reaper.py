"""Every server a test starts is stopped: when its test passes, fails, times out or is
interrupted, and when the test process ends.

A server's helper (tests/cluster.py) registers how to kill it the moment it starts (`own`)
and unregisters once it stopped it (`release`). What is still registered when the session
ends (`pytest_sessionfinish` in conftest.py) or the process exits (atexit) is killed then:
a pytest-timeout that fires inside a test's cleanup, a KeyboardInterrupt or an error half
way through a teardown leave no PostgreSQL, MLflow server or Ray node behind.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
from collections.abc import Callable

_OWNED: dict[int, tuple[str, Callable[[], None]]] = {}


def own(key: int, what: str, kill: Callable[[], None]) -> None:
    """Register `kill` (it must not raise when the server is gone) under `key`."""
    _OWNED[key] = (what, kill)


def release(key: int) -> None:
    _OWNED.pop(key, None)


def own_process(proc: subprocess.Popen, what: str) -> None:
    """A child process started with `start_new_session=True`: its whole group is killed."""

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            proc.wait(timeout=30)

    own(proc.pid, what, kill)


def reap() -> list[str]:
    """Kill every server still registered; what was killed."""
    killed = []
    for key, (what, kill) in list(_OWNED.items()):
        with contextlib.suppress(Exception):
            kill()
        killed.append(what)
        _OWNED.pop(key, None)
    return killed


atexit.register(reap)
