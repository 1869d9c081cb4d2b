"""study.api in this very process, as a notebook would call it (real Ray, Optuna, MLflow):
a typed result, the trials as a DataFrame, an existing study opened, errors as the
project's exceptions, Ctrl+C that leaves the process running, two studies in one process."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from study_helpers import StudyEnv

from flairseg.errors import ConfigError
from study import api

TINY = {"image_size": 32, "max_epochs": 2, "trials": 2, "confirm": False, "register": False}


def test_keywords_are_the_flags_of_the_command_line() -> None:
    argv = api.argv_of("combo_alpha", {"max_epochs": 3, "confirm": False, "compile": True})
    assert argv == ["--search", "combo_alpha", "--max-epochs", "3", "--no-confirm", "--compile"]
    assert api.argv_of("s", {"fuse": False, "study": None}) == ["--search", "s", "--no-fuse"]
    with pytest.raises(ConfigError, match=r"^run\(\): unknown setting 'max_epoch'"):
        api.argv_of("combo_alpha", {"max_epoch": 3})


def test_a_bad_setting_raises_the_line_the_command_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^--trials 0: must be at least 1$"):
        api.run("combo_alpha", trials=0)
    with pytest.raises(ConfigError, match=r"no_such_search"):
        api.run("no_such_search")
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def here(env: StudyEnv, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The stores and data of `env`, for a study run in this process."""
    env._prefill()
    monkeypatch.chdir(env.root)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    return {"storage": str(env.root / "studies"), "mlflow_uri": env.mlflow_uri,
            "data": str(env.data), "status_every": "5"}  # fmt: skip


@pytest.mark.slow
def test_two_studies_in_one_process_each_with_its_result(
    tmp_path: Path, phantom_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = StudyEnv(tmp_path, phantom_dir)
    where = here(env, monkeypatch)
    before = signal.getsignal(signal.SIGTERM)  # what the process had (an earlier test's)
    first = api.run("combo_alpha", study="first", **TINY, **where)
    second = api.run("combo_alpha", study="second", **TINY, **where)
    for result, name in ((first, "first"), (second, "second")):
        assert result.study == name and result.outcome == "finished" and result.exit_status == 0
        assert result.invocation == 1 and result.objective == "val_iou"
        assert result.best_trial is not None and "test_iou" in result.scores
        assert result.best_value == result.scores["val_iou"]
        assert result.report is not None and Path(result.report).is_file()
        frame = result.trials()
        assert len(frame) == 2 and set(frame["trial"]) == {0, 1}
        assert frame.attrs["study"] == name
    assert first.parent_run != second.parent_run
    # the same study from the command line, in a folder of its own: the same answer
    cli = StudyEnv(tmp_path / "cli", phantom_dir)
    out = tmp_path / "cli.json"
    flags = ("--image-size", "32", "--max-epochs", "2", "--trials", "2", "--no-register")
    done = cli.run("--search", "combo_alpha", "--study", "first", *flags, "--json", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(out.read_text())
    assert first.summary["best_trial"] == summary["best_trial"] == first.best_trial
    assert first.best_config == summary["best_config"]
    for key, value in first.scores.items():
        assert value == pytest.approx(summary[key], abs=1e-6), key
    assert first.trial_counts == summary["trials"]
    opened = api.open("second", experiment="combo_alpha", mlflow_uri=env.mlflow_uri)
    assert opened.parent_run == second.parent_run and opened.scores == second.scores
    assert opened.exit_status is None and opened.best_config == second.best_config
    assert signal.getsignal(signal.SIGTERM) is before  # the process's own, put back


@pytest.mark.slow
def test_ctrl_c_stops_the_study_and_the_process_goes_on_to_finish_it(
    tmp_path: Path, phantom_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl+C once a trial trains: KeyboardInterrupt from `run`, the invocation recorded
    interrupted; the same process resumes it."""
    env = StudyEnv(tmp_path, phantom_dir)
    where = here(env, monkeypatch)
    stop = threading.Event()

    def ctrl_c_once_a_trial_trains() -> None:
        while not stop.is_set():
            runs = env.runs("combo_alpha") if (env.root / "mlflow.db").exists() else []
            if any(r.data.metrics.get("val_iou") is not None for r in runs if _trial(r)):
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.5)

    watcher = threading.Thread(target=_quietly(ctrl_c_once_a_trial_trains), daemon=True)
    watcher.start()
    settings = {**TINY, "max_epochs": 50, "trials": 1}
    try:
        with pytest.raises(KeyboardInterrupt):
            api.run("combo_alpha", **settings, **where)
    finally:
        stop.set()
    records = env.study("combo_alpha").user_attrs["invocations"]
    assert [r["state"] for r in records] == ["interrupted"]
    resumed = api.run("combo_alpha", resume=True, storage=where["storage"],
                      mlflow_uri=env.mlflow_uri)  # fmt: skip
    assert resumed.outcome == "finished" and resumed.invocation == 1
    records = env.study("combo_alpha").user_attrs["invocations"]
    assert [r["state"] for r in records] == ["done"]


def _trial(run) -> bool:
    return run.data.tags.get("role") == "trial"


def _quietly(target):
    """A watcher's read of the store may meet it mid-write: try again next time."""

    def run() -> None:
        while True:
            try:
                return target()
            except Exception:
                time.sleep(0.5)

    return run


def test_a_bad_value_is_the_line_argparse_prints_as_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"--trials: invalid int value: 'x'"):
        api.parsed(__import__("study.cli").cli.build_parser(), api.argv_of("s", {"trials": "x"}))
    with pytest.raises(ConfigError, match=r"--confirm: expected one argument"):
        api.parsed(__import__("study.cli").cli.build_parser(), api.argv_of("s", {"confirm": True}))
