"""What an earlier invocation left, dealt with before this one runs (study.invocation).

A study has at most one unfinished invocation (`ledger.unfinished`: one interrupted, or one
whose driver died). `--resume` takes it up again (`take_up`); a new invocation first closes
it out (`close_out`). Either way the MLflow writes its driver kept while the server was away
are replayed first (study.outbox), so its runs are whole before they are touched again.
"""

from __future__ import annotations

from typing import Any

from flairseg.errors import ConfigError
from study import ledger, outbox, tracking
from study.plan import Plan


def say_nothing_to_resume(study: Any, study_name: str) -> None:
    """A --resume with no interrupted invocation is not an error: it says so."""
    records = ledger.invocations(study)
    ended = "failed" if records and records[-1].state == "failed" else "finished"
    last = f"invocation #{records[-1].number} {ended}" if records else "it has no invocation yet"
    print(f"study {study_name}: nothing to resume ({last})")


def take_up(study: Any, client: Any, pending: ledger.Invocation, plan: Plan) -> ledger.Invocation:
    """--resume: the interrupted invocation's kept writes replayed, its parent run and record
    marked running again; it needs the Tune state it left. Its record, to run on."""
    from ray import tune

    outbox.catch_up(plan.mlflow_uri, pending.path, f"invocation #{pending.number}")
    if not tune.Tuner.can_restore(pending.path):
        raise ConfigError(
            f"study {plan.study_name}: invocation #{pending.number} left no Tune state at "
            f"{pending.path} to resume; run without --resume to close it out"
        )
    client.update_run(pending.parent_run, status="RUNNING")
    ledger.mark(study, pending.number, "running")
    return pending


def close_out(study: Any, pending: ledger.Invocation | None, plan: Plan) -> None:
    """Before a new invocation, the interrupted one (if any): its kept writes replayed to the
    server it wrote to, its unfinished trials recorded as killed (failed in Optuna, KILLED
    in MLflow), its record closed; said."""
    if pending is None:
        return
    uri = pending.mlflow_uri or plan.mlflow_uri
    outbox.catch_up(uri, pending.path, f"invocation #{pending.number}")
    killed_trials = ledger.close_out_trials(study)
    killed_runs = tracking.close_out(plan.mlflow_uri, plan.experiment_id, plan.study_name)
    ledger.mark(study, pending.number, "closed")
    print(
        f"closed out invocation #{pending.number} of study {plan.study_name}, which was interrupted: "
        f"{killed_trials} unfinished trials recorded as failed (killed), {killed_runs} MLflow runs KILLED"
    )
