"""study.ledger after a Ctrl+C that came inside a storage call: the interrupted statement
keeps its lock on the SQLite file while the traceback holds its cursor, and the record of
the interruption was refused (`database is locked`; seen in CI: an invocation left
`running`). The interrupt is raised from SQLAlchemy's own `after_cursor_execute` event of a
query, where a SIGINT arriving inside `cursor.execute` raises it (found by sending SIGINT at
random moments to a loop of Optuna writes)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from sqlalchemy import event

from study import ledger


def a_study(tmp_path: Path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    # a short wait for the lock: the refusal comes in a second, not Optuna's default minute
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 1}})
    study = optuna.create_study(study_name="s", storage=storage)
    record = ledger.Invocation(
        number=1,
        path="p",
        parent_run="r",
        trials=1,
        state="running",
        started=0.0,
        host="h",
        pid=1,
        search={},
        data="",
        profile="laptop",
        seed=0,
    )
    ledger.start(study, record)
    return study, storage


def interrupted_write(study, storage) -> KeyboardInterrupt:
    """A user-attribute write interrupted in its first query, the statement still open."""

    def interrupt(conn, cursor, statement, *args) -> None:
        if statement.startswith("SELECT"):
            event.remove(storage.engine, "after_cursor_execute", interrupt)
            raise KeyboardInterrupt

    event.listen(storage.engine, "after_cursor_execute", interrupt)
    try:
        study.set_user_attr("seen", 1)
    except KeyboardInterrupt as err:
        return err
    raise AssertionError("the write was not interrupted")


def test_the_interruption_is_recorded_after_a_ctrl_c_inside_a_write(tmp_path: Path) -> None:
    study, storage = a_study(tmp_path)
    err = interrupted_write(study, storage)
    ledger.release_connections(err)  # as the driver does, the interrupt still in hand
    ledger.mark(study, 1, "interrupted")
    again = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [r.state for r in ledger.invocations(again)] == ["interrupted"]


def test_without_the_release_the_lock_refuses_the_record(tmp_path: Path) -> None:
    """What the release is for: the same write, the interrupt still held, is refused."""
    study, storage = a_study(tmp_path)
    err = interrupted_write(study, storage)
    with pytest.raises(optuna.exceptions.StorageInternalError):
        ledger.mark(study, 1, "interrupted")
    del err
