"""A disk that fills during the trials pauses the study; `--resume` finishes it once there
is room (study.diskfull). The disk is a real tmpfs, filled by a real file."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from study_helpers import StudyEnv, wait_for

from flairseg.checkpoint import CHECKPOINT_FORMAT
from flairseg.errors import ConfigError
from study import diskfull, settled


@contextmanager
def tmpfs(disk: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `disk` (skipped with the reason where mounting is not
    allowed: it needs root), unmounted whatever the test does."""
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 128 MB tmpfs at tmp_path/disk (room for a small study's three trials, two at a
    time, with every checkpoint Tune keeps)."""
    with tmpfs(tmp_path / "disk", "128m") as disk:
        yield disk


def fill(disk: Path) -> Path:
    """Write zeros into `disk` until it has no room left; the file, to remove for room."""
    filler = disk / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(bytes(1 << 16))
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            assert err.errno == errno.ENOSPC
    return filler


# -- the parts, fast --------------------------------------------------------------------


def test_a_full_disk_is_told_from_other_errors() -> None:
    assert diskfull.is_full(OSError(errno.ENOSPC, "No space left on device"))
    assert diskfull.is_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert diskfull.is_full(sqlite3.OperationalError("database or disk is full"))
    try:  # as a library wraps it: the cause is what counts
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/data/x/state.pt")
        except OSError as inner:
            raise RuntimeError("could not save") from inner
    except RuntimeError as outer:
        assert diskfull.is_full(outer)
        assert diskfull.where(outer, []) == "/data/x"
    assert not diskfull.is_full(OSError(errno.EACCES, "Permission denied"))
    assert not diskfull.is_full(ValueError("bad"))


def test_the_line_says_what_a_checkpoint_needs_once_one_was_measured(tmp_path: Path) -> None:
    (tmp_path / "state.pt").write_bytes(bytes(3 * 2**20))
    diskfull.measured(tmp_path)
    assert diskfull.note("/data") == "no space left in /data; a checkpoint needs about 3.0 MB"


def test_the_folder_of_a_sqlite_store_is_its_database_folder(tmp_path: Path) -> None:
    db = tmp_path / "stores" / "mlflow.db"
    db.parent.mkdir()
    found = diskfull.folders([f"sqlite:///{db}?timeout=5", "postgresql://h/db", str(tmp_path)])
    assert found == [str(db.parent), str(tmp_path)]


def test_a_disk_without_room_for_the_reserve_is_refused(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "4m") as disk:
        with pytest.raises(ConfigError, match=f"{disk}/studies: no space left there"):
            diskfull.reserve([str(disk / "studies")])
        assert not list(disk.rglob(f"{diskfull.RESERVE_NAME}*"))  # nothing left behind


def test_a_reserve_refused_on_a_second_disk_leaves_none_on_the_first(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "4m") as disk:
        (tmp_path / "first").mkdir()
        with pytest.raises(ConfigError, match="no space left there"):
            diskfull.reserve([str(tmp_path / "first"), str(disk)])
        assert not list(tmp_path.rglob(f"{diskfull.RESERVE_NAME}*"))


def test_the_reserve_is_set_aside_once_per_disk_and_given_back(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    diskfull.reserve([str(tmp_path / "a"), str(tmp_path / "b")])  # one disk: one file
    try:
        files = list(tmp_path.rglob(f"{diskfull.RESERVE_NAME}*"))
        assert len(files) == 1 and files[0].stat().st_size == diskfull.RESERVE_BYTES
    finally:
        diskfull.release()
    assert not list(tmp_path.rglob(f"{diskfull.RESERVE_NAME}*"))


def test_a_checkpoint_cut_short_is_never_read_back(tmp_path: Path) -> None:
    import torch

    trial = tmp_path / "trial-0003-abc"
    whole, cut = trial / "checkpoint_000000", trial / "checkpoint_000001"
    for folder in (whole, cut):
        folder.mkdir(parents=True)
        torch.save({"format": CHECKPOINT_FORMAT, "epoch": 1}, folder / "state.pt")
    data = (cut / "state.pt").read_bytes()
    (cut / "state.pt").write_bytes(data[: len(data) // 2])  # what a full disk leaves
    assert settled.latest_checkpoint(str(tmp_path), 3) == str(whole)
    # whole state, but the pictures beside it cut: not whole either
    torch.save({"format": CHECKPOINT_FORMAT, "epoch": 2}, cut / "state.pt")
    np.savez(cut / "evolution.npz", probs=np.zeros((4, 32, 32)))
    data = (cut / "evolution.npz").read_bytes()
    (cut / "evolution.npz").write_bytes(data[: len(data) - 200])
    assert settled.latest_checkpoint(str(tmp_path), 3) == str(whole)
    np.savez(cut / "evolution.npz", probs=np.zeros((4, 32, 32)))
    assert settled.latest_checkpoint(str(tmp_path), 3) == str(cut)


# -- a study, slow ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("concurrency", ["1", "2"])
def test_a_disk_that_fills_pauses_and_resume_finishes(
    small_disk: Path, phantom_dir: Path, tmp_path: Path, concurrency: str
) -> None:
    # one piece on purpose: the paused study and its resume are one sequence of states.
    # Two at a time: the trial beside the one that found no room writes nothing more
    env = StudyEnv(small_disk / "s", phantom_dir)  # every store and checkpoint on the disk
    args = ("--search", "combo_alpha", "--image-size", "32", "--concurrency", concurrency)
    args += ("--trials", "3", "--max-epochs", "6")
    # trial #1's epochs slowed: the disk fills while it trains, after its first checkpoint
    proc, log = env.start(
        *args, log="../../driver.log", env_extra={"FLAIRSEG_TEST_SLOW_TRIAL": "1:2"}
    )
    wait_for(log, "trial #0 ", proc)
    wait_for_checkpoint(small_disk, 1, proc)
    filler = fill(small_disk)
    proc.wait(timeout=600)
    text = log.read_text()
    assert proc.returncode == diskfull.EXIT_NO_SPACE, text
    assert f"no space left in {small_disk}" in text, text
    assert "--resume" in text  # (what a checkpoint needs is said when a trial found it first)
    assert "Traceback" not in text, text
    assert not list(small_disk.rglob(f"{diskfull.RESERVE_NAME}*"))

    filler.unlink()  # room again
    assert_paused_then_finished(env, args)


def wait_for_checkpoint(disk: Path, trial: int, proc: subprocess.Popen) -> None:
    """Until Optuna trial `trial` has a whole checkpoint in the Tune folder."""
    import time

    while (
        settled.latest_checkpoint(str(disk / "s" / "studies" / "combo_alpha" / "run-1"), trial)
        is None
    ):
        assert proc.poll() is None, "the driver exited early"
        time.sleep(0.2)


def assert_paused_then_finished(env: StudyEnv, args: tuple[str, ...]) -> None:
    import optuna

    states = {t.number: t.state for t in env.study("combo_alpha").trials}
    assert states[1] == optuna.trial.TrialState.RUNNING  # paused, not failed
    runs = env.runs("combo_alpha")
    assert not [r for r in runs if r.info.status == "RUNNING"]

    resumed = env.run(*args, "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    trials = env.study("combo_alpha").trials
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert len(trials) == 3 and all(t.state in ended for t in trials)
    kids = [r for r in env.runs("combo_alpha") if r.data.tags.get("role") == "trial"]
    assert sorted(int(r.data.tags["optuna_trial"]) for r in kids) == [0, 1, 2]  # no duplicate
    (trial_1,) = [r for r in kids if r.data.tags["optuna_trial"] == "1"]
    assert int(trial_1.data.tags["resumed_from_epoch"]) >= 1  # from its checkpoint
    c = env.client()
    for kid in kids:
        steps = [m.step for m in c.get_metric_history(kid.info.run_id, "val_loss")]
        assert steps == list(range(1, int(kid.data.tags["epochs"]) + 1))  # no epoch twice
    assert not [r for r in env.runs("combo_alpha") if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_a_full_disk_under_the_mlflow_store_alone_pauses_too(
    small_disk: Path, phantom_dir: Path, tmp_path: Path
) -> None:
    """The driver's own write (MLflow's SQLite store) is the one that finds no room."""
    from study_helpers import mlflow_template

    root = tmp_path / "s"
    root.mkdir()
    shutil.copyfile(mlflow_template(), small_disk / "mlflow.db")
    (root / "mlflow.db").symlink_to(small_disk / "mlflow.db")  # checkpoints stay on /tmp
    env = StudyEnv(root, phantom_dir)
    args = ("--search", "combo_alpha", "--image-size", "32", "--concurrency", "1")
    args += ("--trials", "3", "--max-epochs", "6")
    proc, log = env.start(*args, env_extra={"FLAIRSEG_TEST_SLOW_TRIAL": "1:2"})
    wait_for(log, "trial #0 ", proc)
    filler = fill(small_disk)
    proc.wait(timeout=600)
    text = log.read_text()
    assert proc.returncode == diskfull.EXIT_NO_SPACE, text
    assert f"interrupted (no space left in {small_disk})" in text, text
    assert "Traceback" not in text, text
    assert not list(small_disk.rglob(f"{diskfull.RESERVE_NAME}*"))
    assert not list(root.rglob(f"{diskfull.RESERVE_NAME}*"))
    filler.unlink()
    resumed = env.run(*args, "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    trials = env.study("combo_alpha").trials
    assert len(trials) == 3 and all(t.state.is_finished() and t.value is not None for t in trials)
    assert not [r for r in env.runs("combo_alpha") if r.info.status == "RUNNING"]
