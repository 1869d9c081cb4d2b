"""study.stops: SIGTERM and SIGHUP reach the driver as a Ctrl+C, and its exit status says
which signal came (the whole study paused and resumed: test_study_run.py, slow)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

# a process that installs the handlers, says so, and waits: a pausing signal must end it
# through KeyboardInterrupt and run_cli, with the exit status study.run gives
WAITER = """
import signal, sys, time
from flairseg.errors import run_cli
from study import stops

def main(argv):
    if sys.argv[1] == "ignored":  # a background job: SIGINT ignored
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.argv[1] == "nohup":  # started by nohup: SIGHUP ignored
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stops.install()
    print("ready", flush=True)
    while True:
        time.sleep(0.05)

run_cli(main, interrupted_status=stops.exit_status)
"""


@pytest.mark.parametrize(
    ("sig", "status", "sigint"),
    [
        (signal.SIGTERM, 143, "handled"),
        (signal.SIGHUP, 129, "handled"),
        (signal.SIGINT, 130, "handled"),
        (signal.SIGTERM, 143, "ignored"),
        (signal.SIGHUP, 129, "ignored"),
    ],
)
def test_a_pausing_signal_ends_the_driver_as_ctrl_c_with_its_own_status(
    sig: signal.Signals, status: int, sigint: str
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WAITER, sigint], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == status, err
    assert err.strip() == "interrupted", err  # one line, no traceback


def test_a_driver_started_by_nohup_keeps_ignoring_sighup() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WAITER, "nohup"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGHUP)  # a logout: ignored, as nohup asked
        proc.send_signal(signal.SIGTERM)  # and then a real stop
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err  # the SIGTERM's, not the SIGHUP's 129
