"""Every output a study writes, tried before its first trial (and before any file is made).

A study that trains for hours and then cannot write its `--json` summary, or finds its
tracking database unreachable only after MLflow's minutes of retries, has wasted the
night. `check` runs with the other flag checks: each file's folder must take a new file
(a probe is written and removed: nothing is left), a database server must answer a TCP
connection within seconds. Each failure is one ConfigError line naming the flag.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from flairseg.errors import ConfigError
from study import secrets

CONNECT_S = 5.0  # how long a database server has to accept a connection
DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433}


def writable_folder(folder: Path, flag: str, shown: str) -> None:
    """`folder` (or, where it is still to be made, its nearest existing parent) takes a new
    file; the probe file is removed again."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {shown}: {existing} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".flairseg-probe-", dir=existing)
    except OSError as err:
        raise ConfigError(f"{flag} {shown}: cannot write in {existing} ({err.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def writable_file(path: str, flag: str) -> None:
    """A file the study writes at its end (`--json`): its folder takes files, and an
    existing file can be replaced."""
    target = Path(path)  # as write_json takes it: a shell has expanded any `~`
    if target.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder; give a file name")
    writable_folder(target.parent, flag, path)


def database_answers(url: str, flag: str) -> None:
    """A database server URL (PostgreSQL, MySQL, ...) whose host accepts a TCP connection
    within CONNECT_S; SQLite and other local stores are checked as folders elsewhere."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+")[0]
    if scheme not in DEFAULT_PORTS:
        return
    if parts.hostname is None or "host=/" in parts.query or "unix_socket=" in parts.query:
        return  # a local socket (`postgresql:///db`, `?host=/run/postgresql`): no host to try
    host = parts.hostname
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise ConfigError(f"{flag} {secrets.redact(url)}: not a valid port") from None
    try:
        socket.create_connection((host, port), timeout=CONNECT_S).close()
    except OSError as err:
        why = "no answer" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise ConfigError(
            f"{flag} {secrets.redact(url)}: the server at {host}:{port} does not answer ({why})"
        ) from None


def check(storage_root: str, storage_flag: str, optuna_url: str, mlflow_uri: str) -> None:
    """The stores of a study, before anything is written: the Tune folder (checkpoints
    and the report), Optuna's and MLflow's (`--json`: `writable_file`, with the flags)."""
    if "://" not in storage_root:
        writable_folder(Path(storage_root), "--storage", storage_flag)
    for url, flag in ((optuna_url, "--optuna-storage"), (mlflow_uri, "--mlflow-uri")):
        if url.startswith("sqlite://") and ":memory:" in url:
            continue  # nothing on disk
        if url.startswith("sqlite:///"):
            db = Path(url.removeprefix("sqlite:///").partition("?")[0])
            if db.parent.is_dir():  # a missing folder: the store's own check says so
                writable_folder(db.parent, flag, secrets.redact(url))
        else:
            database_answers(url, flag)
