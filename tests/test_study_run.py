"""Real studies through `python -m study.run`: Ray Tune, Optuna, ASHA and a SQLite MLflow store.

Tiny on purpose: 32 px slices, 8-wide U-Nets, one or two epochs, so the whole module
runs in a few minutes on two CPU cores.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import pytest
from study_helpers import HOPELESS, StudyEnv, readable_by_others, wait_for, write_search
from test_notify import Hook

pytestmark = pytest.mark.slow

TINY = ("--image-size", "32", "--concurrency", "2")


def children_of(runs: list, parent) -> list:
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def parents(runs: list) -> list:
    return [r for r in runs if r.data.tags.get("role") == "study"]


def assert_nothing_running(runs: list) -> None:
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []


def test_a_study_lands_in_mlflow_as_designed(tmp_path: Path, phantom_dir: Path) -> None:
    """One full study (the family search: both models, their own knobs) and the MLflow
    layout of DESIGN.md; every search file is smoke-tested in process in test_searches_train.
    One piece on purpose: its assertions all read the one study it runs (a minute each)."""
    name = "family"
    env = StudyEnv(tmp_path, phantom_dir, fresh=True)  # every file here is the study's own
    out = tmp_path / "summary.json"
    home = tmp_path / "home"  # Ray's defaults as a user has them: its token file in HOME
    result = env.run(
        "--search", name, *TINY, "--trials", "2", "--max-epochs", "2", "--json", str(out),
        env_extra={"HOME": str(home), "RAY_AUTH_MODE": None},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert readable_by_others(tmp_path) == []  # MLflow's db, Tune's state, caches, the token
    assert (home / ".ray" / "auth_token").stat().st_mode & 0o777 == 0o600
    assert "Traceback" not in result.stdout + result.stderr
    assert "warning" not in result.stdout
    summary = json.loads(out.read_text())
    assert sum(summary["trials"].values()) == 2
    for key in ("epochs_spent", "epochs_without_stopping", "best_config"):
        assert key in summary
    for part in ("val", "test"):
        for metric in ("iou", "dice", "pixel_accuracy", "mean_accuracy", "volume_dice"):
            assert 0.0 <= summary[f"{part}_{metric}"] <= 1.0

    runs = env.runs(name)
    (parent,) = parents(runs)
    kids = children_of(runs, parent)
    assert len(kids) == 2
    assert_nothing_running(runs)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["search"] == name and parent.data.tags["study"] == name
    assert "test_iou" in parent.data.metrics and "val_iou" in parent.data.metrics
    c = env.client()
    artifacts = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"best", "best_config.json", "search.json", "summary.json"} <= artifacts
    # two trials are too few to rank what mattered: the reason, and no importance metric
    assert summary["importance"]["objective"]["why"] == "2 trials with a value; needs 5"
    assert "what mattered: none (2 trials with a value; needs 5)" in result.stdout
    assert "importance.json" in artifacts
    assert not [k for k in parent.data.metrics if "importance." in k]
    for kid in kids:
        tags, params = kid.data.tags, kid.data.params
        assert tags["search"] == name and tags["model"] in ("unet", "setr")
        assert tags["loss"] in ("dice", "bce", "combo")
        assert tags["status"] in ("completed",) or tags["status"].startswith("stopped at epoch")
        assert len(tags["data_fingerprint"]) == 64
        assert kid.info.status == "FINISHED"
        for key in ("model", "loss", "alpha", "lr", "batch_size", "epochs", "image_size", "seed"):
            assert key in params
        assert params["image_size"] == "32"
        history = c.get_metric_history(kid.info.run_id, "val_iou")
        assert [m.step for m in history] == list(range(1, int(tags["epochs"]) + 1))
        for key in ("train_loss", "val_loss", "val_dice", "val_volume_dice"):
            assert len(c.get_metric_history(kid.info.run_id, key)) == len(history)
        for key in ("images_per_s", "peak_memory_mb"):  # measured every epoch
            measured = c.get_metric_history(kid.info.run_id, key)
            assert [m.step for m in measured] == [m.step for m in history], key
            assert all(m.value > 0 for m in measured), key
        assert tags["device"] == "cpu"
        assert "gpu_util_percent" not in kid.data.metrics  # no GPU: absent, never made up
        pictures = [a.path for a in c.list_artifacts(kid.info.run_id, "evolution")]
        assert any(p.endswith(".png") for p in pictures) and "evolution/evolution.npz" in pictures
    from flairseg.models import model_keys, model_params

    for kid in kids:  # a trial's params carry its own model's knobs and no other model's
        model = kid.data.tags["model"]
        assert set(model_params(model)) <= set(kid.data.params)
        assert not (set(model_keys()) - set(model_params(model))) & set(kid.data.params)
    split = json.loads(parent.data.tags["split"])  # the split is stored as JSON
    assert set(split) == {"train", "val", "test"} and all(split.values())
    assert_environment(parent.data.tags)


def assert_environment(tags: dict[str, str]) -> None:
    """The code and the versions a study ran with, as they are here (study.environment)."""
    import subprocess
    import sys

    import mlflow
    import optuna
    import ray
    import torch

    from study.environment import REPO

    if (REPO / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        assert tags["env.commit"] == head and tags["env.dirty"] in ("true", "false")
    assert tags["env.python"] == ".".join(map(str, sys.version_info[:3]))
    versions = {"torch": torch, "ray": ray, "optuna": optuna, "mlflow": mlflow}
    for name, module in versions.items():
        assert tags[f"env.{name}"] == module.__version__, name


ASHA = (
    """
description: "a study where half the configs cannot learn: ASHA must stop them"
"""
    + HOPELESS
)


def test_asha_stops_the_hopeless_at_the_grace_period(tmp_path: Path, phantom_dir: Path) -> None:
    env = StudyEnv(tmp_path, phantom_dir)
    search = write_search(tmp_path / "asha.yaml", ASHA)
    out = tmp_path / "summary.json"
    result = env.run("--search", str(search), "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(out.read_text())
    assert summary["trials"].get("stopped", 0) >= 2, summary
    assert summary["epochs_spent"] < summary["epochs_without_stopping"] == 6 * 4
    assert summary["best_config"]["lr"] == 0.003
    runs = env.runs("asha")
    stopped = [r for r in runs if r.data.tags.get("status", "").startswith("stopped at epoch")]
    assert stopped and all(r.data.params["lr"] == "1e-07" for r in stopped)
    assert any(r.data.tags["stopped_at_epoch"] == "1" for r in stopped)
    assert "stopped by ASHA at epoch 1/4" in result.stdout
    # what mattered: lr is the one sampled parameter, and it set both the objective and
    # the epochs (ASHA stopped the lr 1e-7 trials); the stopped trials count
    mattered = summary["importance"]
    assert mattered["trials"] == 6
    assert mattered["objective"]["ranking"] == mattered["cost"]["ranking"] == {"lr": 1.0}
    (parent,) = parents(runs)
    assert parent.data.metrics["importance.lr"] == parent.data.metrics["cost_importance.lr"] == 1
    assert "what mattered: lr 1.00; cost (epochs): lr 1.00" in result.stdout


NAN = """
description: "one planted config whose loss becomes NaN"
fixed: {model: unet, loss: combo, image_size: 32, unet: {width: 8}}
space:
  lr: {choice: [0.001, 1.0e+30]}
points: [{lr: 1.0e+30}, {lr: 0.001}, {lr: 0.001}]
trials: 3
asha: {max_epochs: 2, grace_period: 2}
concurrency: 2
"""


def test_a_failing_trial_fails_alone(tmp_path: Path, phantom_dir: Path) -> None:
    env = StudyEnv(tmp_path, phantom_dir)
    search = write_search(tmp_path / "nan.yaml", NAN)
    out = tmp_path / "summary.json"
    result = env.run("--search", str(search), "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(out.read_text())
    assert summary["trials"] == {"failed": 1, "completed": 2}
    runs = env.runs("nan")
    assert_nothing_running(runs)
    failed = [r for r in runs if r.data.tags.get("status") == "failed"]
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    assert "nan" in failed[0].data.tags["error"]
    assert "failed after 0 epochs: DivergedError: train loss became nan" in result.stdout
    import optuna

    states = Counter(t.state for t in env.study("nan").trials)
    assert states == {optuna.trial.TrialState.FAIL: 1, optuna.trial.TrialState.COMPLETE: 2}


def test_a_study_where_every_trial_fails_exits_1(tmp_path: Path, phantom_dir: Path) -> None:
    env = StudyEnv(tmp_path, phantom_dir)
    text = NAN.replace(
        "points: [{lr: 1.0e+30}, {lr: 0.001}, {lr: 0.001}]", "points: [{lr: 1.0e+30}]"
    )
    text = text.replace("trials: 3", "trials: 1")
    hook = Hook()  # --notify's message for this ending (study.notify)
    try:
        search = str(write_search(tmp_path / "allnan.yaml", text))
        result = env.run("--search", search, "--notify", hook.url())
        ((_, _, body),) = hook.wait()
    finally:
        hook.close()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no trial" in result.stdout
    assert_nothing_running(env.runs("allnan"))
    message = json.loads(body)
    assert (message["outcome"], message["exit_status"], message["best"]) == (
        "no trial succeeded",
        1,
        None,
    )
    assert message["message"] == "invocation #1 of study allnan ended: no trial succeeded"


def test_extending_a_study_adds_new_trials_and_reruns_nothing(
    tmp_path: Path, phantom_dir: Path
) -> None:
    env = StudyEnv(tmp_path, phantom_dir)
    first = env.run("--search", "combo_alpha", *TINY, "--trials", "2", "--max-epochs", "1")
    assert first.returncode == 0, first.stdout + first.stderr
    second = env.run("--search", "combo_alpha", *TINY, "--trials", "3", "--max-epochs", "1")
    assert second.returncode == 0, second.stdout + second.stderr
    trials = env.study("combo_alpha").trials
    # the run's first line names the profile; the banner says what this invocation adds to
    # what the study holds; the summary labels the study's best and this invocation's counts
    assert first.stdout.splitlines()[0].startswith("running study combo_alpha (search combo_alpha")
    assert "\ninvocation #1: 2 trials, a new study\n" in first.stdout
    earlier = max(trials[:2], key=lambda t: t.value)
    assert (
        f"\ninvocation #2 adds 3 trials to a study of 2 (best so far: trial #{earlier.number}, "
        f"val_iou {earlier.value:.4f})\n" in second.stdout
    )
    assert "\nstudy combo_alpha (search combo_alpha), invocation #2: 3 trials in " in second.stdout
    assert "\n  this invocation: completed " in second.stdout
    assert "\n  best of the study (5 trials so far): #" in second.stdout
    best = max(trials, key=lambda t: t.value)
    last = second.stdout.strip().splitlines()[-1]  # the best's val_iou as rescored at the end
    where = "this invocation" if best.number >= 2 else "an earlier invocation"
    assert last.startswith("best of the study: val_iou "), last
    assert f" (trial #{best.number}, {where}), test iou " in last, last
    assert last.endswith("; this invocation: 3 trials, 3/3 epochs"), last
    for status in [ln for ln in second.stdout.splitlines() if " trials done " in ln]:
        assert f"the study before it {earlier.value:.4f}" in status, status
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert [t.params for t in trials[:2]] == [
        {"alpha": 0.7, "lr": 0.0001},
        {"alpha": 0.5, "lr": 0.0001},
    ]
    seen = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(seen)) == 5  # nothing proposed twice: the sampler saw the history
    runs = env.runs("combo_alpha")
    assert len(parents(runs)) == 2
    kids = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert sorted(int(r.data.tags["optuna_trial"]) for r in kids) == [0, 1, 2, 3, 4]
    assert_nothing_running(runs)


def wait_for_epoch(env: StudyEnv, experiment: str, trial: int, proc, timeout: float = 600) -> None:
    """Wait until Optuna trial `trial` has logged an epoch to MLflow."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the driver exited early"
        for run in env.runs(experiment):
            tags = run.data.tags
            if tags.get("optuna_trial") == str(trial) and tags.get("epochs_logged"):
                return
        time.sleep(0.3)
    raise AssertionError(f"trial {trial} logged no epoch in {timeout} s")


def _interrupt_and_resume(tmp_path: Path, phantom_dir: Path, sig: signal.Signals) -> None:
    # one piece on purpose: the interrupted study and its resume are one sequence of states
    env = StudyEnv(tmp_path, phantom_dir)
    args = ("--search", "combo_alpha", "--image-size", "32", "--concurrency", "1")
    args += ("--trials", "3", "--max-epochs", "6")
    proc, log = env.start(*args)
    wait_for(log, "trial #0 ", proc)  # one trial ended
    wait_for_epoch(env, "combo_alpha", 1, proc)  # and the next one has trained an epoch
    proc.send_signal(sig)
    proc.wait(timeout=600)
    import optuna

    paused = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}  # exit statuses
    if sig in paused:
        assert proc.returncode == paused[sig], log.read_text()
        assert "--resume" in log.read_text()
        assert_nothing_running(env.runs("combo_alpha"))  # interrupted runs are KILLED
    if sig in (signal.SIGTERM, signal.SIGHUP):
        assert f"interrupted by {sig.name}:" in log.read_text()
        assert "Traceback" not in log.read_text(), log.read_text()
    (trial_1,) = [r for r in env.runs("combo_alpha") if r.data.tags.get("optuna_trial") == "1"]
    logged_before = int(trial_1.data.tags["epochs_logged"])
    states = [t.state for t in env.study("combo_alpha").trials]
    assert optuna.trial.TrialState.COMPLETE in states
    assert optuna.trial.TrialState.RUNNING in states  # the interrupted trial, not yet told

    out = tmp_path / "summary.json"
    # from another folder and without --mlflow-uri: the study's record says where it logs
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    argv = env.argv(*args, "--resume", "--json", str(out))
    del argv[argv.index("--mlflow-uri") : argv.index("--mlflow-uri") + 2]
    import subprocess

    resumed = subprocess.run(
        argv, cwd=elsewhere, capture_output=True, text=True, timeout=900, env=env.env()
    )
    assert not (elsewhere / "mlflow.db").exists()
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming study combo_alpha" in resumed.stdout
    trials = env.study("combo_alpha").trials
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)  # PRUNED: ASHA
    assert len(trials) == 3 and all(t.state in ended and t.value is not None for t in trials), (
        [(t.number, t.state.name) for t in trials],
        log.read_text(),
        resumed.stdout,
    )
    runs = env.runs("combo_alpha")
    assert len(parents(runs)) == 1
    kids = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert sorted(int(r.data.tags["optuna_trial"]) for r in kids) == [0, 1, 2]  # no duplicate
    assert_nothing_running(runs)
    c = env.client()
    for kid in kids:
        steps = [m.step for m in c.get_metric_history(kid.info.run_id, "val_loss")]
        assert steps == list(range(1, int(kid.data.tags["epochs"]) + 1))  # no epoch twice
    summary = json.loads(out.read_text())
    assert sum(summary["trials"].values()) == 3
    from study.export import trials_frame  # the study's table, as a notebook reads it

    frame = trials_frame(env.mlflow_uri, "combo_alpha", "combo_alpha")
    assert list(frame["trial"]) == [0, 1, 2]
    assert set(frame["run_id"]) == {kid.info.run_id for kid in kids}
    for row, trial in zip(frame.to_dict(orient="records"), trials, strict=True):
        assert row["objective_last"] == pytest.approx(trial.value, abs=1e-9)
        assert row["epochs"] == max(trial.intermediate_values)
    best = max(trials, key=lambda t: t.value)
    assert summary["best_trial"] == best.number
    assert summary["val_iou"] == pytest.approx(best.value, abs=1e-6)
    # the resumed trial went on from its checkpoint, it did not start again: its first
    # epoch after the resume is the one after the checkpoint's, not 1
    interrupted = [t for t in kids if int(t.data.tags["optuna_trial"]) == 1][0]
    resumed_from = int(interrupted.data.tags["resumed_from_epoch"])
    assert resumed_from >= 1, (resumed_from, logged_before)
    # (not always the last epoch logged: Tune restores the checkpoint its saved state
    # names, which can be one behind the driver's log under SIGINT as under SIGKILL)

    again = env.run(*args, "--resume")
    assert again.returncode == 0 and "nothing to resume" in again.stdout


def test_sigint_then_resume(tmp_path: Path, phantom_dir: Path) -> None:
    _interrupt_and_resume(tmp_path, phantom_dir, signal.SIGINT)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_or_sighup_pauses_and_resume_finishes(
    tmp_path: Path, phantom_dir: Path, sig: signal.Signals
) -> None:
    """What Kubernetes, SLURM, `docker stop` or a closed terminal send: a pause, as Ctrl+C."""
    _interrupt_and_resume(tmp_path, phantom_dir, sig)


def test_sigkill_of_the_driver_then_resume(tmp_path: Path, phantom_dir: Path) -> None:
    _interrupt_and_resume(tmp_path, phantom_dir, signal.SIGKILL)


def test_a_new_invocation_closes_out_a_killed_one(tmp_path: Path, phantom_dir: Path) -> None:
    env = StudyEnv(tmp_path, phantom_dir)
    args = ("--search", "combo_alpha", "--image-size", "32", "--concurrency", "1")
    proc, log = env.start(*args, "--trials", "3", "--max-epochs", "6")
    wait_for(log, "trial #0 ", proc)
    wait_for_epoch(env, "combo_alpha", 1, proc)
    proc.kill()
    proc.wait(timeout=300)
    result = env.run(*args, "--trials", "1", "--max-epochs", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "closed out invocation #1" in result.stdout
    import optuna

    trials = env.study("combo_alpha").trials
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    killed = [t for t in trials if t.user_attrs.get("status") == "killed"]
    assert killed and all(t.state == optuna.trial.TrialState.FAIL for t in killed)
    runs = env.runs("combo_alpha")
    assert_nothing_running(runs)
    assert [
        r.data.tags.get("status")
        for r in runs
        if r.info.status == "KILLED" and r.data.tags.get("role") == "trial"
    ]
    assert {r.info.status for r in parents(runs)} == {"KILLED", "FINISHED"}
