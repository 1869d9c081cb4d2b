"""Trials run at the driver's niceness, not at Ray's 15 (which starved them on a busy machine):
a real local Ray started by `study.tuner.start_ray`, asked for the niceness of a worker."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

PROBE = """
import os, ray
from study import tuner
tuner.start_ray(None)
print("worker niceness", ray.get(ray.remote(lambda: os.nice(0)).remote()), flush=True)
ray.shutdown()
"""


def _worker_niceness(driver_niceness: int, ray_setting: str | None) -> int:
    """The niceness of a worker of a Ray that start_ray started under `nice -n
    driver_niceness`, with RAY_worker_niceness set to `ray_setting` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_worker_niceness"}
    if ray_setting is not None:
        env["RAY_worker_niceness"] = ray_setting
    proc = subprocess.run(
        ["nice", "-n", str(driver_niceness), sys.executable, "-c", PROBE],
        cwd=REPO, env={**env, "RAY_USAGE_STATS_ENABLED": "0"},
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("worker niceness ")]
    return int(line.split()[-1])


def test_a_trial_runs_at_the_drivers_niceness() -> None:
    assert _worker_niceness(3, None) == 3  # Ray's own default gave 3 + 15 = 18


@pytest.mark.slow
def test_a_niceness_the_user_set_for_ray_wins() -> None:
    assert _worker_niceness(0, "7") == 7
