"""A time budget (study.budget): durations read as written, refused in one line when too
small, and a study whose budget ends mid-trial closes out, records every trial, leaves
nothing RUNNING, and is continued by a later invocation (real Ray, Optuna, MLflow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from study_helpers import StudyEnv
from test_notify import Hook
from test_study_faults import assert_refused, nothing_running

from flairseg.errors import ConfigError
from study import budget, schema
from study import search as searches
from study.schema import Role, Tag


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("8h", 28800), ("1h30m", 5400), ("1.5h", 5400), (120, 120)],
)
def test_a_duration_is_read_as_written(text: str | int, seconds: float) -> None:
    assert budget.parse(text, "--time-budget") == seconds


@pytest.mark.parametrize("text", ["8 hours", "h", "-5m", "10", "5x", True])
def test_a_duration_that_is_not_one_is_refused_naming_the_flag(text: str | bool) -> None:
    with pytest.raises(ConfigError, match=r"^--time-budget .*a duration such as 90s"):
        budget.parse(text, "--time-budget")


@pytest.mark.parametrize("text", ["1s", "59s", "31d"])
def test_a_budget_out_of_range_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match=r"must be between 1m and 30d"):
        budget.parse(text, "--time-budget")


def test_the_reserve_is_five_percent_within_its_bounds() -> None:
    assert budget.reserve(60) == 30
    assert budget.reserve(3600) == 180
    assert budget.reserve(8 * 3600) == 600
    assert budget.describe(5400) == "1h30m" and budget.describe(90) == "1m30s"


def test_a_search_file_takes_a_budget_and_the_flag_wins(tmp_path: Path) -> None:
    raw = {"space": {"alpha": {"uniform": [0.0, 1.0]}}, "time_budget": "30m"}
    assert searches.parse(raw, "b").time_budget == 1800
    assert searches.parse(raw, "b", overrides={"time_budget": "2h"}).time_budget == 7200
    with pytest.raises(ConfigError, match=r"^<dict>: time_budget 'soon'"):
        searches.parse({**raw, "time_budget": "soon"}, "b")


def test_one_more_trial_is_proposed_only_while_it_fits() -> None:
    """The search's share: the budget less the reserve less the confirmation's need; a
    trial fits while the share left holds its first ASHA rung (grace x the median epoch)."""
    budget.driver_started()
    budget.start(600, grace=3, confirm_epochs=10)  # reserve 30 s: 570 s to share
    assert budget.may_start()  # nothing measured yet
    budget.saw_epoch(100.0)  # the confirmation would need 1000 s: more than a third, kept
    assert budget.clock().confirm_keep() == 0  # nothing for it (it will be skipped)
    budget.clock().epoch_s[:] = [5.0]  # it needs 10 x 5 s: the search has about 520 s
    assert budget.clock().confirm_keep() == 50
    assert budget.may_start() and not budget.phase_over()
    budget.clock().epoch_s[:] = [200.0]  # a rung of 3 such epochs (600 s) no longer fits
    assert not budget.may_start() and budget.ended() and not budget.cut()
    assert not budget.may_start()  # once refused, never again
    budget.start(None)
    assert budget.may_start() and not budget.ended() and budget.spent() == 0.0


def test_a_resumed_clock_goes_on_from_what_was_spent() -> None:
    budget.driver_started()
    budget.start(600, spent_before=560)  # 600 - 30 reserve - 560 spent: 10 s left
    assert budget.spent() >= 560
    budget.start(600, spent_before=600)
    assert budget.phase_over() and budget.cut() and budget.ended_phase("search")
    budget.confirming()
    assert budget.phase_over() and budget.ended_phase("confirm")
    budget.start(None)


def test_a_budget_too_small_for_an_epoch_is_refused_before_anything_is_written(
    tmp_path: Path, phantom_dir: Path
) -> None:
    env = StudyEnv(tmp_path, phantom_dir, fresh=True)
    args = ("--search", "combo_alpha", "--image-size", "32", "--time-budget", "1s")
    line = assert_refused(env, args, "--time-budget 1s")
    assert "a shorter budget trains nothing" in line


@pytest.mark.slow
def test_a_budget_that_ends_mid_trial_closes_out_and_a_later_invocation_goes_on(
    tmp_path: Path, phantom_dir: Path
) -> None:
    """One trial at a time, far more epochs than the budget holds: the budget stops the
    running trial at its last epoch, the invocation scores it, registers it and reports;
    `--resume` has nothing to finish and the same command again adds a trial."""
    env = StudyEnv(tmp_path, phantom_dir)
    args = ("--search", "combo_alpha", "--image-size", "32", "--concurrency", "1")
    hook = Hook()  # --notify's message for this ending (study.notify)
    try:
        budgeted = ("--trials", "3", "--max-epochs", "500", "--time-budget", "90s")
        done = env.run(*args, *budgeted, "--notify", hook.url())
        ((_, _, body),) = hook.wait()
    finally:
        hook.close()
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    message = json.loads(body)
    assert (message["outcome"], message["exit_status"]) == ("budget spent", 0), message
    assert message["message"].endswith("ended: its time budget is spent")
    assert message["report"] and message["best"]["objective"] == "val_iou"
    assert "time budget 1m30s: it ended the search after" in text, text
    assert "stopped by the time budget at epoch" in text, text
    assert "Traceback" not in text and "left RUNNING" not in text, text
    nothing_running(env, "combo_alpha", "combo_alpha", text)
    runs = [r for r in env.runs("combo_alpha") if r.data.tags.get(Tag.ROLE) == Role.TRIAL]
    statuses = [r.data.tags[Tag.STATUS] for r in runs]
    assert any(schema.is_budget_stopped(s) for s in statuses), statuses
    assert all(s == "completed" or schema.is_stopped(s) for s in statuses), statuses
    cut = next(r for r in runs if schema.is_budget_stopped(r.data.tags[Tag.STATUS]))
    assert Tag.CHECKPOINT in cut.data.tags and cut.info.status == "FINISHED"
    epochs = int(cut.data.tags[Tag.EPOCHS])
    assert cut.data.tags[Tag.STATUS] == schema.budget_status(epochs)
    study = env.study("combo_alpha")
    trials = {t.number: t for t in study.trials if t.state.is_finished()}
    stopped = trials[int(cut.data.tags[Tag.OPTUNA_TRIAL])]
    assert stopped.user_attrs["status"] == schema.budget_status(epochs)
    assert stopped.value == pytest.approx(cut.data.metrics["val_iou"])
    (parent,) = [r for r in env.runs("combo_alpha") if r.data.tags[Tag.ROLE] == Role.STUDY]
    assert parent.info.status == "FINISHED" and parent.data.params["time_budget_s"] == "90.0"
    assert "report.html" in text

    again = env.run("--search", "combo_alpha", "--resume")
    assert "nothing to resume (invocation #1 finished)" in again.stdout, again.stderr
    more = env.run(*args, "--trials", "1", "--max-epochs", "1")
    assert more.returncode == 0, more.stdout + more.stderr
    records = env.study("combo_alpha").user_attrs["invocations"]
    assert [r["state"] for r in records] == ["done", "done"]
    assert (
        len([t for t in env.study("combo_alpha").trials if t.state.is_finished()])
        == len(trials) + 1
    )
