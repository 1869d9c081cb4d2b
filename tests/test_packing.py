"""GPU packing: `--gpus-per-trial 0.25` puts four trials on one GPU at once.

This machine has no GPU, so the Ray node declares one (`ray start --num-gpus=1`): Ray's
scheduler then places trials by that resource exactly as on a GPU machine, and the
trials, finding no CUDA device, train on the CPU. What runs on a real GPU, and how many
trials per hour packing buys there, is `benchmarks/gpu.sh`'s part.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cluster import RayNode, free_port, wait_nodes
from study_helpers import StudyEnv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head():
    """One Ray node of 2 CPUs that declares 1 GPU, shared by this file's tests."""
    node = RayNode("127.0.0.2", cpus=2, head_port=free_port("127.0.0.2"), gpus=1)
    try:
        wait_nodes(node.address, 1)
        yield node
    finally:
        node.close()


def quarter_gpu_study(env: StudyEnv, head: RayNode, *args: str):
    """combo_alpha at 32 px on the head, half a CPU and a quarter of the GPU per trial."""
    return env.run(
        "--search", "combo_alpha", "--profile", "laptop", "--address", head.address,
        "--image-size", "32", "--cpus-per-trial", "0.5", "--gpus-per-trial", "0.25", *args,
    )  # fmt: skip


def test_a_quarter_gpu_per_trial_runs_four_trials_at_once(
    tmp_path: Path, phantom_dir: Path, head: RayNode
):
    from mlflow.tracking import MlflowClient

    env = StudyEnv(tmp_path, phantom_dir)
    result = quarter_gpu_study(env, head, "--trials", "4", "--max-epochs", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    # no --concurrency: the quarter GPU sets it (the search's own is 2)
    assert "4 at a time, 0.5 CPU and 0.25 GPU per trial" in result.stdout, result.stdout
    c = MlflowClient(env.mlflow_uri)
    exp = c.get_experiment_by_name("combo_alpha")
    runs = c.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("role") != "trial")
    trials = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert parent.data.params["concurrency"] == "4"
    assert parent.data.params["fast_path"] == "True"
    assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)


def test_an_explicit_concurrency_wins_over_packing(
    tmp_path: Path, phantom_dir: Path, head: RayNode
):
    env = StudyEnv(tmp_path, phantom_dir)
    result = quarter_gpu_study(
        env, head, "--trials", "2", "--max-epochs", "1", "--concurrency", "1"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 at a time, 0.5 CPU and 0.25 GPU per trial" in result.stdout, result.stdout
