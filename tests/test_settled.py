"""study.settled: the trials Optuna holds ended, and the checkpoint such a trial reports."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
import torch

from flairseg.checkpoint import CHECKPOINT_FORMAT
from study import settled


def test_ended_lists_the_invocations_finished_trials_by_state(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "COMPLETE"):
        trial = study.ask()
        if state == "COMPLETE":
            study.tell(trial, 0.5)
        elif state != "RUNNING":
            study.tell(trial, state=optuna.trial.TrialState[state])
    assert settled.ended("s", storage, first=0) == {
        0: "COMPLETE",
        1: "PRUNED",
        2: "FAIL",
        4: "COMPLETE",
    }
    assert settled.ended("s", storage, first=2) == {2: "FAIL", 4: "COMPLETE"}  # this invocation's


def test_latest_checkpoint_is_the_newest_complete_one_of_any_folder_of_the_trial(
    tmp_path: Path,
) -> None:
    def checkpoint(folder: str, name: str, complete: bool = True) -> Path:
        path = tmp_path / folder / name
        path.mkdir(parents=True)
        if complete:
            torch.save({"format": CHECKPOINT_FORMAT, "epoch": 1}, path / "state.pt")
        return path

    older = checkpoint("trial-0003-aaaa", "checkpoint_000005")
    newest = checkpoint("trial-0003-bbbb", "checkpoint_000002")  # adopted: numbered anew
    os.utime(older / "state.pt", ns=(10**18, 10**18))
    os.utime(newest / "state.pt", ns=(2 * 10**18, 2 * 10**18))
    checkpoint("trial-0003-bbbb", "checkpoint_000003", complete=False)  # cut while written
    checkpoint("trial-0013-cccc", "checkpoint_000009")  # another trial
    assert settled.latest_checkpoint(str(tmp_path), 3) == str(newest)
    assert settled.latest_checkpoint(str(tmp_path), 4) is None
    assert settled.latest_checkpoint("s3://bucket/run-1", 3) is None  # remote: not looked at


def test_a_trial_that_had_failed_fails_again_saying_so(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"trial #7 had failed before the driver stopped"):
        settled.replay(7, "FAIL", str(tmp_path), planned=3)
