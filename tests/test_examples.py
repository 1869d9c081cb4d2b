"""The documented Python walk-through (examples/api_walkthrough.py) runs as written: a study
through study.api, its trials as a DataFrame, a figure, the report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from study_helpers import REPO


@pytest.mark.slow
def test_the_api_walkthrough_runs_as_written(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, "examples/api_walkthrough.py", "--out", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    assert "answer: trial #" in text and "Traceback" not in text, text
    table = text[text.index("objective_best") :].splitlines()
    assert len([line for line in table[1:] if line.strip()[:1].isdigit()]) == 3, text
    assert (tmp_path / "lr_vs_iou.html").stat().st_size > 10_000
    report = next(line for line in text.splitlines() if line.startswith("report: "))
    assert Path(report.removeprefix("report: ")).is_file(), text
