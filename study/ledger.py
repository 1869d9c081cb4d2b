"""The persistent study: its Optuna storage, the one-invocation-at-a-time lock, the ledger.

A study lives in Optuna's storage (SQLite by default, a database URL on a cluster).
Its invocations are recorded in the study's user attributes (`invocations`: number,
results path, MLflow parent run, planned trials, state), so any machine that reaches
the database knows what ran, what was interrupted, and what to resume.

Only one invocation runs a study at a time. The lock is held by the driver process for
its whole life and released by the operating system or database when it dies, even
by SIGKILL: `flock` on a file beside a SQLite database, a session advisory lock on
PostgreSQL. A second invocation is refused with one line; the study is never touched
by two drivers at once. The driver takes it before it writes to either store, so an
invocation refused at the same instant as another starts has written nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from flairseg.errors import ConfigError
from study import adapters, schema, secrets

LEDGER_KEY = "invocations"
# fields added after the first records were written, and their defaults (see to_dict)
NEWER_FIELDS = {"budget_spent_s": 0.0, "budget_ended_search": False}


@dataclass
class Invocation:
    number: int
    path: str  # the Ray Tune experiment folder (or URI)
    parent_run: str
    trials: int
    state: str  # running | done | interrupted | closed | failed (an error ended its driver)
    started: float
    host: str
    pid: int
    search: dict[str, Any]
    data: str
    profile: str
    seed: int
    mlflow_uri: str = ""  # where its runs are: a --resume logs there again
    experiment: str = ""
    first_trial: int = 0  # its first Optuna trial number: the order decisions follow
    budget_spent_s: float = 0.0  # of a time budget, by its interrupted drivers (study.budget)
    budget_ended_search: bool = False  # the budget ended its search: its trials are all run

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        # left out at their defaults: a driver of an older version reads this record too
        for key, default in NEWER_FIELDS.items():
            if out.get(key) == default:
                out.pop(key)
        return out


def storage_url(url: str) -> str:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return url


@contextlib.contextmanager
def creation_lock(database: str | os.PathLike) -> Iterator[None]:
    """Held while a SQLite database may get its tables: two processes that open a new one
    at once (MLflow's migrations, Optuna's create_all) otherwise collide, "table ...
    already exists". An flock on a file in the temporary folder named after the database's
    real path, so nothing lands beside it; best effort where that file cannot be opened."""
    real = os.path.realpath(database)
    name = f"flairseg-create-{hashlib.sha256(real.encode()).hexdigest()[:16]}.lock"
    try:
        fd = os.open(os.path.join(tempfile.gettempdir(), name), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:  # another user's file: unlocked, as MLflow and Optuna are on their own
        fd = None
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd is not None:
            os.close(fd)


def open_storage(url: str):
    import optuna

    sqlite = url.startswith("sqlite:///")
    try:
        with creation_lock(url.removeprefix("sqlite:///")) if sqlite else contextlib.nullcontext():
            return optuna.storages.RDBStorage(
                storage_url(url),
                engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
            )
    except Exception as err:
        raise cannot_open(url, err) from None


def cannot_open(url: str, err: Exception) -> ConfigError:
    """The one line for a storage that cannot be opened (or locked), without a password."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ConfigError(secrets.scrub(f"--optuna-storage {url}: cannot open ({first[:200]})"))


class StudyLock:
    """Held for the driver's life; `acquire` refuses with one line when another holds it."""

    def __init__(self, url: str, study: str) -> None:
        self.url = url
        self.study = study
        self._fd: int | None = None
        self._conn = None

    def acquire(self) -> StudyLock:
        """Taken before anything is written, so a storage that cannot be reached is said
        here, in the line `open_storage` would say."""
        try:
            if self.url.startswith("sqlite:///"):
                self._flock()
            elif self.url.startswith("postgresql"):
                self._advisory()
        except ConfigError:
            raise
        except Exception as err:
            raise cannot_open(self.url, err) from None
        return self

    def _flock(self) -> None:
        db = Path(self.url.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)  # taken before the database is made
        safe = hashlib.sha256(self.study.encode()).hexdigest()[:16]
        path = db.with_name(f"{db.name}.{safe}.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(
                f"study {self.study!r} is being run by another invocation ({holder}); "
                "wait for it to finish, or name another study with --study"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self._fd = fd

    def _advisory(self) -> None:
        import sqlalchemy

        key = int.from_bytes(
            hashlib.sha256(f"flairseg:{self.study}".encode()).digest()[:8], "big", signed=True
        )
        engine = sqlalchemy.create_engine(self.url)
        conn = engine.connect()
        got = conn.execute(sqlalchemy.text("select pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        if not got:
            conn.close()
            raise ConfigError(
                f"study {self.study!r} is being run by another invocation; wait for it to "
                "finish, or name another study with --study"
            )
        self._conn = conn

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def load_study(storage, name: str, direction: str, search_name: str):
    """Open (or create) the Optuna study `name`; a study of another search or direction fails."""
    import optuna

    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize" if direction == "max" else "minimize",
        load_if_exists=True,
    )
    want = "maximize" if direction == "max" else "minimize"
    if study.direction.name.lower() != want:
        raise ConfigError(
            f"--study {name}: it was made to {study.direction.name.lower()} its objective, this "
            f"search wants to {want}; name another study"
        )
    owner = study.user_attrs.get("search")
    if owner is None:
        study.set_user_attr("search", search_name)
    elif owner != search_name:
        raise ConfigError(
            f"--study {name}: it belongs to search {owner!r}, not {search_name!r}; "
            "name another study with --study"
        )
    return study


def invocations(study) -> list[Invocation]:
    """The study's records (a field a newer version added and this one does not know is
    ignored)."""
    known = {f.name for f in fields(Invocation)}
    return [
        Invocation(**{k: v for k, v in i.items() if k in known})
        for i in study.user_attrs.get(LEDGER_KEY, [])
    ]


def save(study, records: list[Invocation]) -> None:
    study.set_user_attr(LEDGER_KEY, [r.to_dict() for r in records])


def start(study, record: Invocation) -> None:
    records = invocations(study)
    records.append(record)
    save(study, records)


def mark(study, number: int, state: str, **fields: Any) -> None:
    """Set invocation `number`'s state (and any other of its `fields`)."""
    records = invocations(study)
    for r in records:
        if r.number == number:
            r.state = state
            for key, value in fields.items():
                setattr(r, key, value)
    save(study, records)


def release_connections(err: BaseException | None = None) -> None:
    """Let go of database connections that an interrupted storage call left open (and
    locked): the frames `err`'s traceback holds them in are cleared, and what is left
    unreachable is collected (SQLAlchemy rolls such a connection back when it goes; its
    pool's complaint about the cursor it could not close is not ours to print)."""
    import gc
    import logging
    import traceback

    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        traceback.clear_frames(err.__traceback__)
        err = err.__context__
    pool = logging.getLogger("sqlalchemy.pool")
    level = pool.level
    pool.setLevel(logging.CRITICAL)
    try:
        gc.collect()
    finally:
        pool.setLevel(level)


def unfinished(study) -> Invocation | None:
    """The last invocation, if it never finished (its driver is gone: we hold the lock)."""
    records = invocations(study)
    if records and records[-1].state in ("running", "interrupted"):
        return records[-1]
    return None


def close_out_trials(study) -> int:
    """Record every RUNNING Optuna trial of the study as failed (killed); returns how many."""
    import optuna

    n = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        adapters.running_trial(study, t).set_user_attr("status", "killed")
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        n += 1
    return n


def stop_for_budget(study) -> int:
    """Record every RUNNING Optuna trial as stopped by the time budget (study.budget) at its
    last epoch: PRUNED, with that epoch's value (Optuna's own rule for a pruned trial)."""
    import optuna

    n = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        trial = adapters.running_trial(study, t)
        if t.last_step is None:  # cut before its first epoch: nothing to rank it by (TPE
            # ignores a FAIL; a value-less PRUNED would count as the worst)
            trial.set_user_attr("status", schema.Status.NOT_STARTED)
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        else:
            trial.set_user_attr("status", schema.budget_status(t.last_step))
            study.tell(t.number, state=optuna.trial.TrialState.PRUNED)
        n += 1
    return n


def best_trial(study):
    """The study's best trial: Optuna's best of its COMPLETE trials, where a trial ASHA
    stopped early counts too, with its last epoch's objective, as it did while the searcher
    told it COMPLETE (it is PRUNED since the live view: study.searcher). Ties go to the
    earliest trial, as Optuna's SQL storage picks them. None when no trial has a value."""
    import optuna

    state = optuna.trial.TrialState
    scored = [
        t
        for t in study.get_trials(deepcopy=False, states=(state.COMPLETE, state.PRUNED))
        if t.value is not None
        and not math.isnan(t.value)
        and (t.state == state.COMPLETE or schema.is_stopped(t.user_attrs.get("status", "")))
    ]
    if not scored:
        return None
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return min(scored, key=lambda t: (sign * t.value, t.number))


def now() -> float:
    return time.time()
