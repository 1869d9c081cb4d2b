"""Real servers for cluster tests, on loopback only: PostgreSQL, an MLflow server, Ray nodes.

Ray nodes use 127.0.0.2 and 127.0.0.3 (Ray replaces 127.0.0.1 by the network card's
address; other loopback addresses are kept, see ../shared/STACK-NOTES.md). Each server is a
child process this test owns and stops.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest

from benchmarks import loopback
from benchmarks.loopback import RAY_ENV, free_port, stop, wait_nodes, wait_port
from tests import reaper

__all__ = ["RAY_ENV", "MlflowServer", "Postgres", "RayNode", "free_port", "stop", "wait_nodes",
           "wait_port"]  # fmt: skip


def _skip(reason: str) -> None:
    if os.environ.get("FLAIRSEG_REQUIRE_POSTGRES"):
        pytest.fail(reason)
    pytest.skip(reason)


class Postgres:
    """Debian's PostgreSQL in a fresh data folder, as the `postgres` user, on 127.0.0.1."""

    def __init__(self, password: str | None = None) -> None:
        """`password`: the `postgres` user's, required on TCP (scram-sha-256); None: trust."""
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not bins:
            _skip(
                "PostgreSQL is not installed (Debian's postgresql package; scripts/setup.sh --tests)"
            )
        if os.geteuid() != 0 or not shutil.which("runuser"):
            _skip("starting PostgreSQL here needs root (to run it as the postgres user)")
        self.bin = Path(bins[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="flairseg-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        self.password = password
        auth = ["-A", "trust"]
        if password is not None:  # the socket stays trusted (createdb below); TCP asks
            pwfile = self.dir / "pw"
            pwfile.write_text(password + "\n")
            shutil.chown(pwfile, "postgres", "postgres")
            auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        self._as_postgres(self.bin / "initdb", "-D", self.dir / "data", *auth, "-U", "postgres")
        reaper.own(id(self), f"PostgreSQL in {self.dir}", self._kill)  # before it can start
        self._as_postgres(
            self.bin / "pg_ctl", "-D", self.dir / "data", "-l", self.dir / "log", "-w",
            "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir}", "start",
        )  # fmt: skip
        for db in ("mlflow", "optuna"):
            self._as_postgres(self.bin / "createdb", "-h", self.dir, "-p", self.port, db)

    def _kill(self) -> None:
        """Stop it at once (no checkpoint: its data folder goes too), for the reaper."""
        with contextlib.suppress(Exception):
            self._as_postgres(
                self.bin / "pg_ctl", "-D", self.dir / "data", "-m", "immediate", "stop"
            )
        pid_file = self.dir / "data" / "postmaster.pid"
        with contextlib.suppress(Exception):  # pg_ctl could not: the postmaster itself
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _as_postgres(self, *argv: object) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *map(str, argv)],
            check=True,
            capture_output=True,
            cwd=self.dir,
        )

    def url(self, db: str, password: bool = True) -> str:
        """The database's URL; with the password in it when there is one (and `password`)."""
        secret = f":{quote(self.password, safe='')}" if self.password and password else ""
        return f"postgresql://postgres{secret}@127.0.0.1:{self.port}/{db}"

    def close(self) -> None:
        try:
            self._as_postgres(self.bin / "pg_ctl", "-D", self.dir / "data", "-m", "fast", "stop")
        except Exception:
            self._kill()  # it did not stop: at once, then its folder
            raise
        finally:
            reaper.release(id(self))
            shutil.rmtree(self.dir, ignore_errors=True)


class MlflowServer:
    """`mlflow server` on 127.0.0.1; its store's URL in the environment, as docker/ starts it.

    `admin_password`: MLflow's basic-auth app, whose admin user (`admin`) gets that password
    at the first start; anonymous requests are then refused (all but /health).
    """

    def __init__(
        self,
        backend: str,
        artifacts: Path,
        admin_password: str | None = None,
        port: int | None = None,
    ) -> None:
        """`port`: a server's again, to bring one back where a study left it."""
        self.port = port or free_port()
        env = {
            **os.environ,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_BACKEND_STORE_URI": backend,  # not in argv: it may hold a password
        }
        argv = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--workers", "1"]
        argv += ["--artifacts-destination", str(artifacts)]
        self.auth_dir: Path | None = None
        if admin_password is not None:
            self.auth_dir = Path(tempfile.mkdtemp(prefix="flairseg-mlflow-auth-"))
            users = self.auth_dir / "basic_auth.ini"
            users.write_text(
                "[mlflow]\ndefault_permission = READ\n"
                f"database_uri = sqlite:///{users.parent / 'users.db'}\nadmin_username = admin\n"
            )
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(users)
            env["MLFLOW_AUTH_ADMIN_PASSWORD"] = admin_password
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = os.urandom(16).hex()
            argv += ["--app-name", "basic-auth"]
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        reaper.own_process(self.proc, f"mlflow server on port {self.port}")
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300  # a busy machine starts it slowly
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2)
                return
            except OSError:
                assert self.proc.poll() is None, "mlflow server exited"
                assert time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.3)

    def close(self) -> None:
        stop(self.proc)
        reaper.release(self.proc.pid)  # only once stopped: stop() raises otherwise
        if self.auth_dir is not None:
            shutil.rmtree(self.auth_dir, ignore_errors=True)


class RayNode(loopback.RayNode):
    """A Ray node (benchmarks.loopback) that the reaper stops if its test does not."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        reaper.own_process(self.proc, f"Ray node on {self.ip}")

    def close(self) -> None:
        super().close()
        reaper.release(self.proc.pid)  # only once stopped: else the reaper still has it
