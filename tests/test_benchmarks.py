"""The training-step benchmark runs end to end (tiny sizes), so its GPU script does not rot.

Only the CPU branches run here; `benchmarks/gpu.sh` is the same code with `--device cuda`.
The compile variant is left out for time (a cold compile of each model is tens of
seconds on two cores); tests/test_speed.py trains a compiled model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.study_helpers import REPO

pytestmark = pytest.mark.slow


def test_train_step_benchmark_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "train_step.json"
    flags = (
        "--device cpu --image-size 32 --steps 1 --warmup 1 --threads --thread-steps 2 "
        "--agreement --agreement-epochs 1 --seeds 2 "
        "--packing --packing-trials 4 --packing-epochs 1 --packing-width 4"
    )
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.train_step", *flags.split(), "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads(out.read_text())
    rows = {(r["model"], r["variant"]): r for r in record["steps"]}
    for model in ("unet", "setr"):
        for variant in ("plain", "reference", "fast", "augment"):
            r = rows[(model, variant)]
            assert r["images_per_s"] > 0 and r["peak_mb"] > 0 and r["flops_per_step"] > 0
        assert rows[(model, "plain")]["ratio_to_plain"] == 1.0
    assert rows[("unet", "fast")]["flops_per_step"] > rows[("setr", "fast")]["flops_per_step"]
    assert "mfu" not in rows[("unet", "fast")]  # no GPU, no MFU
    assert len(record["threads"]["two_trials_one_thread"]) == 2
    assert len(record["agreement"]["val_dice"]["fast"]) == 2
    assert set(record["packing"]) == {"1.0", "0.5", "0.25"}
    assert "ours/plain" in result.stdout and "packing" in result.stdout
