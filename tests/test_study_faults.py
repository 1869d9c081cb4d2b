"""Faults and hostile input around the study driver: names that break filters or folders,
failures once the parent run exists, two invocations at once, Ctrl+C while Ray starts."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from study_helpers import StudyEnv, wait_for

from flairseg.errors import ConfigError
from study import schema

TINY = ("--search", "combo_alpha", "--image-size", "32", "--trials", "1", "--max-epochs", "1")
LOCKED = "is being run by another invocation"
STARTING_RAY = "starting Ray on this machine"

ROUNDS = 1  # of the races below: more hunt a rarer collision longer, at a test's cost each


def assert_refused(env: StudyEnv, args: tuple[str, ...], culprit: str) -> str:
    """In process: exit 2, one line holding `culprit`, nothing written to either store."""
    code, stdout, stderr = env.run_here(*args)
    assert code == 2, stdout + stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert culprit in lines[0], lines[0]
    assert not (env.root / "studies").exists() and not (env.root / "mlflow.db").exists()
    return lines[0]


def stop(*procs: subprocess.Popen) -> None:
    """Kill what is still running (a failed assertion must not leave a driver behind)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=300)


def first_to_exit(procs: list[subprocess.Popen], timeout: float = 900) -> subprocess.Popen:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                return proc
        time.sleep(0.1)
    stop(*procs)
    raise AssertionError("neither driver exited")


def nothing_running(env: StudyEnv, experiment: str, study: str, text: str = "") -> None:
    """No MLflow run RUNNING, no Optuna trial RUNNING, no invocation recorded running
    (`text`, the driver's output, is shown when one is)."""
    import optuna

    runs = env.runs(experiment)
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == [], text
    trials = env.study(study).get_trials(deepcopy=False)
    running = [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    assert running == [], text
    records = env.study(study).user_attrs.get("invocations", [])
    assert [r["number"] for r in records if r["state"] == "running"] == [], text


# -- names ---------------------------------------------------------------------------


def test_quote_writes_any_value_with_one_kind_of_quote() -> None:
    assert schema.quote("plain") == "'plain'"
    assert schema.quote("o'brien") == '"o\'brien"'
    assert schema.quote('a"b') == "'a\"b'"
    assert schema.quote("back\\slash") == "'back\\slash'"
    with pytest.raises(ConfigError, match="--study .*both"):
        schema.quote("a'b\"c")


def test_study_runs_finds_quotes_and_backslashes_in_a_real_store(tmp_path: Path) -> None:
    """MLflow's filter grammar, asked for real: each name finds its own run and only it."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = c.create_experiment("names")
    names = ["o'brien", 'say "hi"', "back\\slash", "100%_done", "plain"]
    ids = {
        n: c.create_run(experiment, tags={"study": n, "role": "study"}).info.run_id for n in names
    }
    for name in names:
        runs = schema.study_runs(c, experiment, name, role=schema.Role.STUDY, status="RUNNING")
        assert [r.info.run_id for r in runs] == [ids[name]], name


@pytest.mark.parametrize(
    ("name", "culprit"),
    [
        ("a/b", "holds / or \\"),
        ("a\\b", "holds / or \\"),
        ("..", "names a folder's parent or itself"),
        (".", "names a folder's parent or itself"),
        ("-x", "starts with '-'"),
        ("", "is empty"),
        ("x" * 101, "is 101 characters long; at most 100"),
        ("tab\there", "control character '\\t'"),
        ("a'b\"c", "holds both ' and \""),
    ],
    ids=["slash", "backslash", "dotdot", "dot", "dash", "empty", "long", "control", "quotes"],
)
def test_a_bad_study_name_is_refused_in_one_line(
    tmp_path: Path, phantom_dir: Path, name: str, culprit: str
) -> None:
    line = assert_refused(StudyEnv(tmp_path, phantom_dir), (*TINY, f"--study={name}"), culprit)
    assert line.startswith("error: --study "), line


def test_a_default_study_name_says_where_it_came_from(tmp_path: Path, phantom_dir: Path) -> None:
    search = tmp_path / "-dashing.yaml"
    search.write_text(
        "fixed: {model: unet, loss: combo, image_size: 32, unet: {width: 8}}\n"
        "space: {alpha: {uniform: [0.0, 1.0]}}\ntrials: 1\nasha: {max_epochs: 1}\n"
    )
    line = assert_refused(
        StudyEnv(tmp_path, phantom_dir), ("--search", str(search)), "starts with '-'"
    )
    assert "--study not given" in line and str(search) in line and "give --study NAME" in line


@pytest.mark.parametrize(
    ("name", "culprit"),
    [("", "is empty"), ("e" * 501, "is 501 characters long; at most 500")],
    ids=["empty", "long"],
)
def test_a_bad_experiment_name_is_refused_in_one_line(
    tmp_path: Path, phantom_dir: Path, name: str, culprit: str
) -> None:
    line = assert_refused(StudyEnv(tmp_path, phantom_dir), (*TINY, f"--experiment={name}"), culprit)
    assert line.startswith("error: --experiment "), line


def test_json_under_a_file_is_refused_before_the_study(tmp_path: Path, phantom_dir: Path) -> None:
    (tmp_path / "a-file").write_text("")
    target = tmp_path / "a-file" / "summary.json"
    assert_refused(
        StudyEnv(tmp_path, phantom_dir), (*TINY, "--json", str(target)), "is not a folder"
    )


@pytest.mark.slow
def test_a_study_named_with_a_quote_runs_and_ends(tmp_path: Path, phantom_dir: Path) -> None:
    env = StudyEnv(tmp_path, phantom_dir)
    result = env.run(*TINY, "--study=o'brien")
    assert result.returncode == 0, result.stdout + result.stderr
    # a models:/ URI cannot carry the quote: the registered model is named o-brien
    assert "model registry: o-brien version 1: champion" in result.stdout, result.stdout
    runs = env.runs("combo_alpha")
    assert {r.data.tags["study"] for r in runs} == {"o'brien"}
    assert sorted((r.data.tags["role"], r.info.status) for r in runs) == [
        ("study", "FINISHED"),
        ("trial", "FINISHED"),
    ]
    nothing_running(env, "combo_alpha", "o'brien")


# -- a failure once the parent run exists -------------------------------------------------


@pytest.mark.slow
def test_a_failure_after_the_parent_exists_ends_it(tmp_path: Path, phantom_dir: Path) -> None:
    """--json's folder is taken by a file once the study runs: the summary cannot be
    written at the end. One line naming --json; the parent FAILED, the record failed."""
    env = StudyEnv(tmp_path, phantom_dir)
    target = tmp_path / "out" / "summary.json"
    proc, log = env.start(*TINY, "--json", str(target))
    try:
        wait_for(log, "live view: ", proc)  # the banner's last line: the parent run exists
        (tmp_path / "out").write_text("a file where the summary's folder would go")
        proc.wait(timeout=900)
    finally:
        stop(proc)
    text = log.read_text()
    assert proc.returncode == 2, text
    assert text.strip().splitlines()[-1].startswith(f"error: --json {target}: cannot write it")
    assert "Traceback" not in text
    (parent,) = [r for r in env.runs("combo_alpha") if r.data.tags["role"] == "study"]
    assert parent.info.status == "FAILED"
    nothing_running(env, "combo_alpha", "combo_alpha", text)
    records = env.study("combo_alpha").user_attrs["invocations"]
    assert [r["state"] for r in records] == ["failed"]
    again = env.run("--search", "combo_alpha", "--resume")
    assert again.returncode == 0 and "nothing to resume (invocation #1 failed)" in again.stdout


# -- two invocations at once --------------------------------------------------------------


@pytest.mark.slow
def test_two_invocations_of_one_study_at_once(tmp_path: Path, phantom_dir: Path) -> None:
    """Started at the same instant in a fresh folder, both would make MLflow's tables: the
    one refused must say the study is held, never that the store is unreachable (one round
    collided on the code before the lock came first: `duplicate column name: step`)."""
    for round_ in range(ROUNDS):
        env = StudyEnv(tmp_path / f"round-{round_}", phantom_dir, fresh=True)
        env.root.mkdir()
        a, log_a = env.start(*TINY, log="a.log")
        b, log_b = env.start(*TINY, log="b.log")
        try:
            loser = first_to_exit([a, b])
            winner, loser_log, winner_log = (b, log_a, log_b) if loser is a else (a, log_b, log_a)
            text = loser_log.read_text()
            assert loser.returncode == 2, text
            assert "alembic" not in text and "cannot reach" not in text, text
            assert LOCKED in text and len(text.strip().splitlines()) == 1, text
            wait_for(winner_log, STARTING_RAY, winner)  # past the tracking store
            winner.send_signal(signal.SIGINT)
            assert winner.wait(timeout=600) == 130, winner_log.read_text()
        finally:
            stop(a, b)


@pytest.mark.slow
def test_two_studies_sharing_the_stores_start_at_once(tmp_path: Path, phantom_dir: Path) -> None:
    """Two studies, one new mlflow.db and optuna.db: both get past the tracking store."""
    env = StudyEnv(tmp_path, phantom_dir, fresh=True)
    a, log_a = env.start(*TINY, "--study", "first", log="a.log")
    b, log_b = env.start(*TINY, "--study", "second", log="b.log")
    try:
        for proc, log in ((a, log_a), (b, log_b)):
            wait_for(log, STARTING_RAY, proc)
            proc.send_signal(signal.SIGINT)
        for proc, log in ((a, log_a), (b, log_b)):
            assert proc.wait(timeout=600) == 130, log.read_text()
            text = log.read_text()
            assert "cannot reach" not in text and "already exists" not in text, text
    finally:
        stop(a, b)
    assert env.client().get_experiment_by_name("combo_alpha") is not None


# -- Ctrl+C -----------------------------------------------------------------------------

# Loaded by every Python the driver starts (PYTHONPATH): on the Nth fork that runs the
# at-fork hooks, which only Ray's process starts do, the driver gets a SIGINT right there,
# where a Ctrl+C that comes during a fork is handled, and Python swallows it.
SIGINT_AT_FORK = """
import os, signal

def _sigint_at_fork():
    left = int(os.environ.get("SIGINT_AT_FORK", "0"))
    if left == 1:
        os.environ.pop("SIGINT_AT_FORK")
        os.kill(os.getpid(), signal.SIGINT)
    elif left > 1:
        os.environ["SIGINT_AT_FORK"] = str(left - 1)

os.register_at_fork(before=_sigint_at_fork)
"""


def assert_stopped(env: StudyEnv, proc: subprocess.Popen, log: Path, trained: bool) -> None:
    """Exit 130 in a line, nothing RUNNING; no trial trained unless `trained`."""
    text = log.read_text()
    assert proc.returncode == 130, text
    assert "interrupted" in text, text
    assert "Traceback" not in text and "Exception ignored" not in text, text
    runs = env.runs("combo_alpha")
    if not trained:
        assert [r for r in runs if r.info.status == "FINISHED"] == [], text
    nothing_running(env, "combo_alpha", "combo_alpha", text)


@pytest.mark.slow
@pytest.mark.parametrize("fork", [1, 5], ids=["first-fork", "fifth-fork"])
def test_ctrl_c_during_rays_forks_stops_the_study(
    tmp_path: Path, phantom_dir: Path, fork: int
) -> None:
    """Ray starts its processes with a preexec_fn: the driver runs the at-fork hooks, and a
    SIGINT that came during the fork raises there, where Python swallows it. Today's Ray
    forks five times in ray.init: the first and the last."""
    env = StudyEnv(tmp_path, phantom_dir)
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(SIGINT_AT_FORK)
    path = os.pathsep.join(filter(None, [str(tmp_path / "inject"), os.environ.get("PYTHONPATH")]))
    extra = {"PYTHONPATH": path, "SIGINT_AT_FORK": str(fork)}
    proc, log = env.start(*TINY, env_extra=extra)
    try:
        proc.wait(timeout=900)
    finally:
        stop(proc)
    assert STARTING_RAY in log.read_text()
    assert_stopped(env, proc, log, trained=False)


@pytest.mark.slow
def test_ctrl_c_once_the_last_trial_ended_stops_the_study(
    tmp_path: Path, phantom_dir: Path
) -> None:
    """Tune's SIGINT handler outlives its run: a Ctrl+C while the study scores and reports
    went to it and was lost. Now it stops the study, whose trial has trained."""
    env = StudyEnv(tmp_path, phantom_dir)
    proc, log = env.start(*TINY)
    try:
        wait_for(log, "trial #0 ", proc)  # the one trial ended
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=600)
    finally:
        stop(proc)
    assert_stopped(env, proc, log, trained=True)


@pytest.mark.slow
def test_ctrl_c_while_ray_starts_stops_the_study(tmp_path: Path, phantom_dir: Path) -> None:
    """SIGINT as soon as the driver says Ray starts: wherever it lands (in Ray's forks,
    where Python swallows it, or just after), the study stops with 130 and trains nothing.
    Where it lands varies: the fork tests above pin the swallowed case down."""
    for round_ in range(ROUNDS):
        env = StudyEnv(tmp_path / f"round-{round_}", phantom_dir, fresh=True)
        env.root.mkdir()
        proc, log = env.start(*TINY, "--json", str(env.root / "summary.json"))
        try:
            wait_for(log, STARTING_RAY, proc)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=600)
        finally:
            stop(proc)
        assert not (env.root / "summary.json").exists()
        assert_stopped(env, proc, log, trained=False)
