"""A study whose MLflow server dies for good mid-study: the trials train on, the driver
keeps the writes it could not make, ends in one line (exit 3) with nothing left RUNNING in
Optuna, and `--resume` against the server brought back writes the rest: nothing lost, nothing
twice (a real MLflow server, killed)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from cluster import MlflowServer, stop
from study_helpers import StudyEnv, wait_for
from test_notify import Hook

pytestmark = pytest.mark.slow

ARGS = ("--search", "combo_alpha", "--study", "outage", "--image-size", "32")
ARGS += ("--trials", "2", "--max-epochs", "2", "--concurrency", "1")


def test_a_study_outlives_its_mlflow_server(tmp_path: Path, phantom_dir: Path) -> None:
    import optuna

    backend = f"sqlite:///{tmp_path / 'server.db'}"
    server = MlflowServer(backend, tmp_path / "artifacts")
    env = StudyEnv(tmp_path, phantom_dir)
    hook = Hook()  # --notify's message for this ending (study.notify)
    proc, log = env.start(*ARGS, "--mlflow-uri", server.url, "--notify", hook.url())
    try:
        wait_for(log, ": completed", proc)  # the first trial is logged; the second is not yet
        stop(server.proc, signal.SIGKILL)  # gone, and not back before the study ends
        proc.wait(timeout=1200)
        ((_, _, body),) = hook.wait()
    finally:
        stop(server.proc, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        hook.close()
    out = log.read_text()
    assert proc.returncode == 3, out
    message = json.loads(body)
    assert (message["outcome"], message["exit_status"]) == ("mlflow away", 3)
    assert message["mlflow"]["uri"] == server.url and "--resume" in message["message"]
    assert message["best"]["trial"] in (0, 1)  # Optuna still answers
    assert "Traceback" not in out
    assert "trials train on, their MLflow writes kept in" in out  # said once, at the outage
    (away,) = [line for line in out.splitlines() if line.startswith("error:")]
    assert "does not answer" in away and "--resume" in away, away
    study = env.study("outage")
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 2  # trained on, nothing RUNNING

    back = MlflowServer(backend, tmp_path / "artifacts", port=server.port)
    try:
        again = env.run(*ARGS, "--mlflow-uri", back.url, "--resume")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "kept writes replayed" in again.stdout
        c = back_client(back.url)
        (experiment,) = [e for e in c.search_experiments() if e.name == "combo_alpha"]
        runs = c.search_runs([experiment.experiment_id])
        assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
        (parent,) = [r for r in runs if r.data.tags.get("role") == "study"]
        trials = [r for r in runs if r.data.tags.get("role") == "trial"]
        assert parent.info.status == "FINISHED" and len(trials) == 2
        for run in trials:
            assert run.info.status == "FINISHED", run.data.tags
            steps = [m.step for m in c.get_metric_history(run.info.run_id, "val_iou")]
            assert steps == list(range(1, int(run.data.tags["epochs"]) + 1))  # once each
            pictures = [a.path for a in c.list_artifacts(run.info.run_id, "evolution")]
            assert "evolution/evolution.npz" in pictures
        assert not list(tmp_path.rglob("*.mlflow-outbox/ops.jsonl"))
    finally:
        back.close()


def back_client(url: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(url)
