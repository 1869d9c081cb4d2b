"""The GPU benchmark keeps every figure it measures, whatever fails, and needs no Ray stack.

`benchmarks/gpu.sh` runs on a borrowed GPU machine that has torch, numpy and pillow but
no Ray, Optuna, MLflow or Plotly; here it runs end to end on the CPU (tiny sizes, its
`--device` overridden) from another folder, with those packages made unimportable in
every process it starts, and with a compile variant that really fails (no C++ compiler
for inductor): the other rows must be kept, and the exit status and last line must say
what failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks.runner import Runner
from tests.study_helpers import REPO

BLOCKED = ("ray", "optuna", "mlflow", "plotly", "psycopg", "sqlalchemy")


def blocking_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose Python processes cannot import the study stack."""
    site = tmp_path / "block"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""
            import sys
            class _Block:
                def find_spec(self, name, path=None, target=None):
                    if name.split(".")[0] in {BLOCKED!r}:
                        raise ImportError(f"{{name}} is not on the GPU machine")
                    return None
            sys.meta_path.insert(0, _Block())
            """
        )
    )
    path = os.pathsep.join([str(site), str(REPO)])
    return {**os.environ, "PYTHONPATH": path, "PYTHON": sys.executable}


def test_the_blocker_blocks(tmp_path: Path) -> None:
    env = blocking_env(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", "import ray"], env=env, capture_output=True, text=True
    )
    assert result.returncode != 0 and "not on the GPU machine" in result.stderr


def test_a_failed_child_costs_its_own_row_only(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    runner = Runner(budget_s=3600, rows_path=str(rows))
    good = runner.run("peaks", "good", {"kind": "peaks", "device": "cpu", "n": 64}, 300)
    bad = runner.run("peaks", "bad", {"kind": "no such measurement", "device": "cpu"}, 300)
    assert good is not None and good["fp32"] > 0
    assert bad is None and runner.failed == ["bad (exit 1: KeyError: 'no such measurement')"]
    lines = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [r["name"] for r in lines] == ["good", "bad"] and "error" in lines[1]


def test_a_spent_budget_skips_and_says_so(tmp_path: Path) -> None:
    runner = Runner(budget_s=0)
    assert runner.run("peaks", "late", {"kind": "peaks", "device": "cpu"}, 300) is None
    assert runner.failed == ["late (skipped: budget spent)"]


@pytest.mark.slow
def test_gpu_script_from_elsewhere_keeps_every_row_when_compile_fails(tmp_path: Path) -> None:
    out = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = blocking_env(tmp_path) | {"OUT": str(out), "CXX": "/nonexistent/g++"}
    # a slow or busy machine gets all the time it needs: no limit stands in for progress
    env["HARD_STOP_S"] = env["BOUND_STOP_S"] = "3600"
    # the smallest sizes that still run every row: 16 px (the seed U-Net's bottleneck is
    # 1 x 1 there), batches and fold parts of 2 slices (batch norm needs 2 values there), a
    # width-1 U-Net for packing; every child still imports torch, which is most of its time
    env["BOUND_FLAGS"] = (
        "--device cpu --image-size 16 --steps 1 --warmup 1 --repeats 1 --budget-s 3600 --limit-s 3600"
    )
    flags = (
        "--budget-s 3600 --limit-s 3600 --compile-limit-s 3600 --packing-limit-s 3600 "
        "--device cpu --models unet --image-size 16 --batch-size 2 --steps 1 --warmup 1 "
        "--repeats 2 --threads --thread-steps 1 --agreement --agreement-epochs 1 --seeds 2 "
        "--packing-trials 4 --packing-epochs 1 --packing-width 1 --fold-slices 2"
    )
    result = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu.sh"), *flags.split()],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 1, log
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("incomplete: 1 failed: unet/compile (exit 1:"), last
    assert "InvalidCxxCompiler" in last
    assert (out / "preflight.json").exists() and (out / "nvidia-smi.txt").exists()
    assert (out / "train_step_gpu.log").read_text().strip().endswith(last)
    # every row arrived as a line of its own, failures included
    rows = [json.loads(line) for line in (out / "train_step_gpu.jsonl").read_text().splitlines()]
    names = {r["name"] for r in rows if "error" not in r}
    for variant in ("plain", "reference", "fast", "augment", "instance"):
        assert f"unet/{variant}" in names
    assert {r["name"] for r in rows if "error" in r} == {"unet/compile"}
    # the record holds the figures of what was measured
    record = json.loads((out / "train_step_gpu.json").read_text())
    steps = {(r["model"], r["variant"]): r for r in record["steps"]}
    assert len(steps) == 5 and all(r["precision"] == "fp32" for r in steps.values())
    for r in steps.values():
        assert r["images_per_s"] > 0 and r["peak_mb"] > 0 and r["flops_per_step"] > 0
        assert r["repeats"] == 2 and r["images_per_s_range"][0] <= r["images_per_s"]
    assert steps[("unet", "plain")]["ratio_to_plain"] == 1.0
    assert "mfu_sheet" not in steps[("unet", "fast")]  # no GPU, no MFU
    assert len(record["agreement"]["val_dice"]["fast"]) == 2
    assert set(record["packing"]) == {"1", "0.5", "0.25"}
    assert record["failed"] == [last.removeprefix("incomplete: 1 failed: ")]
    assert "ours/plain" in result.stdout and "packing" in result.stdout
    assert "2 trials x 1 thread" in result.stdout
    # the fold models one by one and fused, each K (flairseg.fused)
    fused = [r for r in rows if r["section"] == "fused"]
    assert {(r["k"], r["path"]) for r in fused} == {
        (k, p) for k in (2, 4) for p in ("one by one", "fused")
    } and all(r["train_s"] > 0 for r in fused)
    assert "train: one by one / fused" in result.stdout
    # first of all, what bounds the step (no CUDA graph on the CPU)
    (bound,) = [json.loads(line) for line in (out / "bound_gpu.jsonl").read_text().splitlines()]
    assert {"eager_b16_ms", "eager_b32_ms", "eager_b64_ms"} <= set(bound)
    assert "what bounds the unet step: batch 16" in (out / "bound_gpu.log").read_text()


@pytest.mark.parametrize("model", ["unet", "setr"])
def test_the_seed_style_baseline_trains(model: str) -> None:
    import numpy as np
    import torch

    from benchmarks import seed_style

    images = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    masks = (images[:, :1] > 0.8).astype(np.float32)
    net = seed_style.build(model, 32)
    before = [p.detach().clone() for p in net.parameters()]
    seed_style.train_steps(net, seed_style.loader(images, masks, 2), torch.device("cpu"), 2)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_mfu_is_against_the_peak_of_each_rows_own_precision() -> None:
    """On a GPU each row's MFU divides by its precision's peak: the datasheet's and the
    measured matmul's (pure arithmetic on rows, so it is checked here without a GPU)."""
    from benchmarks.tables import SHEET_PEAKS, step_summary

    flops = 10**12  # per step; batch 10 -> 1 TFLOP per 10 images
    rows = [
        {"section": "peaks", "name": "matmul", "n": 8192, "fp32": 50.0, "tf32": 400.0,
         "bf16": 800.0},
        {"section": "steps", "name": "unet/plain", "model": "unet", "variant": "plain",
         "precision": "fp32", "images_per_s": 100.0, "flops_per_step": flops},
        {"section": "steps", "name": "unet/plain_tf32", "model": "unet",
         "variant": "plain_tf32", "precision": "tf32", "images_per_s": 200.0},
        {"section": "steps", "name": "unet/fast", "model": "unet", "variant": "fast",
         "precision": "bf16", "images_per_s": 400.0, "flops_per_step": flops},
        {"section": "steps", "name": "unet/compile", "model": "unet", "variant": "compile",
         "precision": "bf16", "images_per_s": 500.0},
        {"section": "steps", "name": "unet/augment", "error": "timed out after 90 s"},
    ]  # fmt: skip
    steps = {r["variant"]: r for r in step_summary(rows, "NVIDIA H100 80GB HBM3", batch=10)}
    assert set(steps) == {"plain", "plain_tf32", "fast", "compile"}  # the failed row is left out
    sheet = SHEET_PEAKS["H100"]
    for variant, tflops in (("plain", 10.0), ("plain_tf32", 20.0), ("fast", 40.0)):
        r = steps[variant]
        assert r["tflops"] == tflops
        assert r["mfu_sheet"] == round(tflops / sheet[r["precision"]], 4)
        assert r["mfu_matmul"] == round(
            tflops / {"fp32": 50, "tf32": 400, "bf16": 800}[r["precision"]], 4
        )
    assert steps["compile"]["flops_per_step"] == flops  # ours: counted once, on the fast row
    assert steps["fast"]["ratio_to_plain"] == 4.0
    pcie = step_summary(rows, "NVIDIA H100 PCIe", batch=10)
    assert {r["variant"]: r["mfu_sheet"] for r in pcie}["fast"] == round(40.0 / 756.0, 4)
