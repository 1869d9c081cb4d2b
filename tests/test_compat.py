"""What an invocation started by the previous version left behind still resumes: Tune's
pickled sampler (its TPE factory under its old name, no cost or waits), and ledger records
a version without the budget's fields reads (and records with fields it does not know)."""

from __future__ import annotations

import functools
import pickle

from study import budget, ledger
from study.ordered import OrderedSampler
from study.searcher import StudySearch


def test_a_sampler_pickled_before_costs_resumes_with_the_defaults() -> None:
    from study import tuner

    make = functools.partial(tuner._tpe, startup=1, conditional=False, liar=False)
    sampler = OrderedSampler(make, seed=0, first=0, lag=2)
    for name in ("cost", "waits"):  # as the previous version pickled it: no such attributes
        del sampler.__dict__[name]
    again = pickle.loads(pickle.dumps(sampler))
    assert again.cost is None and again.waits is True
    assert type(again._make(3)).__name__ == "TPESampler"
    assert StudySearch._cost is None  # a searcher pickled before costs reads no cost


def record(**extra: object) -> dict:
    base = ledger.Invocation(
        number=1, path="p", parent_run="r", trials=3, state="running", started=0.0,
        host="h", pid=1, search={}, data="", profile="laptop", seed=0,
    )  # fmt: skip
    return {**base.to_dict(), **extra}


def test_records_leave_the_budgets_fields_out_at_their_defaults() -> None:
    plain = record()
    assert "budget_spent_s" not in plain and "budget_ended_search" not in plain
    spent = ledger.Invocation(**{**plain, "budget_spent_s": 12.5}).to_dict()
    assert spent["budget_spent_s"] == 12.5


def test_a_record_with_a_field_this_version_does_not_know_is_read() -> None:
    class Study:
        user_attrs = {ledger.LEDGER_KEY: [record(some_later_field=1)]}

    (read,) = ledger.invocations(Study())
    assert read.number == 1 and read.budget_spent_s == 0.0


def test_a_resumed_invocation_whose_budget_ended_its_search_proposes_nothing() -> None:
    budget.driver_started()
    budget.start(3600, spent_before=100, search_ended=True)
    assert budget.ended() and not budget.may_start() and not budget.cut()
    assert budget.paused()["budget_ended_search"] is True
    budget.start(None)


def test_a_study_callback_pickled_before_the_split_runs_as_the_three_callbacks() -> None:
    """Tune's restore runs the callbacks pickled in `tuner.pkl`: one StudyCallback, as the
    previous version wrote it (its attributes, no `_parts`), comes back as TrialRuns,
    Progress and FullDisk with the settings it held."""
    from study.callbacks import FullDisk, StudyCallback
    from study.progress import Progress
    from study.trial_runs import TrialRuns

    old = object.__new__(StudyCallback)
    old.__dict__.update(
        uri="sqlite:///m.db", experiment_id="1", parent_id="p", study="s", search="combo_alpha",
        fingerprint="f", metric="val_iou", mode="max", total=12, status_every=30.0, folds=None,
        outbox_dir="o", datasets=[], study_best=None, _client=None, _started=0.0,
        _last_status=0.0,
    )  # fmt: skip
    again = pickle.loads(pickle.dumps(old))
    runs, progress, disk = again._parts
    assert (type(runs), type(progress), type(disk)) == (TrialRuns, Progress, FullDisk)
    assert (runs.uri, runs.parent_id, runs.outbox_dir) == ("sqlite:///m.db", "p", "o")
    assert (progress.metric, progress.mode, progress.total) == ("val_iou", "max", 12)
    assert again.__getstate__().keys() == old.__dict__.keys()  # what it pickles again
