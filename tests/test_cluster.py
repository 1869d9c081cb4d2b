"""A real two-node Ray cluster on loopback, MLflow on PostgreSQL over HTTP, Optuna in PostgreSQL.

Head on 127.0.0.2 and a node on 127.0.0.3, one CPU each; PostgreSQL and the MLflow server
on 127.0.0.1. Tests run in file order on one cluster: the last one kills the node.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from cluster import MlflowServer, Postgres, RayNode, free_port, wait_nodes
from study_helpers import StudyEnv, wait_for, write_search

pytestmark = pytest.mark.slow


class Cluster:
    def __init__(self, root: Path) -> None:
        self.pg = Postgres()
        self.server = None
        self.head = self.node = None
        try:
            self.server = MlflowServer(self.pg.url("mlflow"), root / "artifacts")
            self.head = RayNode("127.0.0.2", cpus=1, head_port=free_port("127.0.0.2"))
            self.node = RayNode("127.0.0.3", cpus=1, address=self.head.address)
            wait_nodes(self.head.address, 2)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for part in (self.node, self.head, self.server):
            if part is not None:
                part.close()
        self.pg.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.close()


def argv(env: StudyEnv, cluster: Cluster, *args: str) -> list[str]:
    out = env.argv(
        # the laptop profile's small U-Nets: --address alone would pick the full profile
        "--profile", "laptop", "--image-size", "32", "--concurrency", "2",
        "--address", cluster.head.address,
        "--optuna-storage", cluster.pg.url("optuna"), *args,
    )  # fmt: skip
    out[out.index("--mlflow-uri") + 1] = cluster.server.url
    return out


def study_cmd(env: StudyEnv, cluster: Cluster, study: str, trials: int, epochs: int) -> list[str]:
    return argv(
        env, cluster, "--search", "combo_alpha", "--study", study,
        "--trials", str(trials), "--max-epochs", str(epochs),
    )  # fmt: skip


def start_driver(env: StudyEnv, cmd: list[str], log: Path):
    import subprocess

    with log.open("w") as handle:
        return subprocess.Popen(
            cmd, cwd=env.root, stdout=handle, stderr=subprocess.STDOUT, env=env.env()
        )


def server_runs(cluster: Cluster, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(cluster.server.url)
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], max_results=1000)


def optuna_study(cluster: Cluster, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=cluster.pg.url("optuna"))


def run(env: StudyEnv, cmd: list[str], timeout: float = 400):
    import subprocess

    return subprocess.run(
        cmd, cwd=env.root, capture_output=True, text=True, timeout=timeout, env=env.env()
    )


def test_a_study_runs_on_both_nodes_and_logs_over_http(
    tmp_path: Path, phantom_dir: Path, cluster: Cluster
) -> None:
    env = StudyEnv(tmp_path, phantom_dir)
    cmd = study_cmd(env, cluster, "two-nodes", trials=4, epochs=3)
    result = run(env, cmd)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = [
        r for r in server_runs(cluster, "combo_alpha") if r.data.tags.get("study") == "two-nodes"
    ]
    trials = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(trials) == 4
    assert {r.data.tags["node_ip"] for r in trials} == {"127.0.0.2", "127.0.0.3"}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert "report: " in result.stdout


def test_a_scheduled_firing_killed_midway_is_closed_out_by_the_next(
    tmp_path: Path, phantom_dir: Path, cluster: Cluster
) -> None:
    import optuna

    env = StudyEnv(tmp_path, phantom_dir)
    cmd = study_cmd(env, cluster, "nightly", trials=4, epochs=8)
    log = tmp_path / "first.log"
    first = start_driver(env, cmd, log)
    wait_for(log, "trial #", first, timeout=300)
    first.kill()  # the scheduler's pod dies mid-firing
    first.wait(timeout=60)
    done_before = sum(
        t.state == optuna.trial.TrialState.COMPLETE for t in optuna_study(cluster, "nightly").trials
    )
    assert done_before >= 1

    second = run(env, cmd)  # the next firing: the same command
    assert second.returncode == 0, second.stdout + second.stderr
    assert "closed out invocation #1" in second.stdout
    states = Counter(t.state for t in optuna_study(cluster, "nightly").trials)
    assert states[optuna.trial.TrialState.COMPLETE] == done_before + 4
    assert states[optuna.trial.TrialState.RUNNING] == 0
    runs = [r for r in server_runs(cluster, "combo_alpha") if r.data.tags.get("study") == "nightly"]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    numbers = [r.data.tags["optuna_trial"] for r in runs if r.data.tags.get("role") == "trial"]
    assert len(numbers) == len(set(numbers))  # no duplicate run for a trial


LOST = """
description: "U-Nets trained long enough to lose a node mid-trial"
fixed: {model: unet, loss: combo, image_size: 32, unet: {width: 8}}
space:
  lr: {loguniform: [1.0e-4, 1.0e-2]}
trials: 4
asha: {enabled: false, max_epochs: 60}
concurrency: 2
"""


def test_losing_the_worker_node_mid_study(
    tmp_path: Path, phantom_dir: Path, cluster: Cluster
) -> None:

    import optuna

    env = StudyEnv(tmp_path, phantom_dir)
    # no early stopping: laptop-sized trials are quick, and one that ASHA stops can end before
    # the node is lost; each trial runs all its epochs, so the node dies mid-trial
    search = write_search(tmp_path / "lost.yaml", LOST)
    cmd = argv(env, cluster, "--search", str(search), "--study", "lost-node")
    log = tmp_path / "driver.log"
    proc = start_driver(env, cmd, log)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # until a trial trains on the node
        assert proc.poll() is None, log.read_text()
        try:
            runs = server_runs(cluster, "lost")
        except Exception:
            runs = []
        if any(
            r.data.tags.get("study") == "lost-node" and r.data.tags.get("node_ip") == "127.0.0.3"
            for r in runs
        ):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"no trial trained on the worker node in 300 s:\n{log.read_text()}")
    cluster.node.kill()
    proc.wait(timeout=600)
    assert proc.returncode == 0, log.read_text()
    runs = [r for r in server_runs(cluster, "lost") if r.data.tags.get("study") == "lost-node"]
    trials = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(trials) == 4
    assert not [r for r in runs if r.info.status == "RUNNING"]
    lost = [r for r in trials if r.data.tags.get("node_ip") == "127.0.0.3"]
    assert lost and any(r.data.tags["status"] == "failed" for r in lost), [
        r.data.tags for r in lost
    ]
    assert any(r.data.tags["status"] != "failed" for r in trials)  # finished on the head
    assert not [
        t
        for t in optuna_study(cluster, "lost-node").trials
        if t.state == optuna.trial.TrialState.RUNNING
    ]
