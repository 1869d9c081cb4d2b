"""Real servers for cluster tests, on loopback only: PostgreSQL, an MLflow server, Ray nodes.

Ray nodes use 127.0.0.2 and 127.0.0.3 (Ray replaces 127.0.0.1 by the network card's
address; other loopback addresses are kept, see ../shared/STACK-NOTES.md). Each server is a
child process this test owns and stops.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            assert proc.poll() is None, f"server on {host}:{port} exited ({proc.returncode})"
            time.sleep(0.3)
    raise AssertionError(f"nothing listens on {host}:{port} after {timeout} s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _skip(reason: str) -> None:
    if os.environ.get("FLAIRSEG_REQUIRE_POSTGRES"):
        pytest.fail(reason)
    pytest.skip(reason)


class Postgres:
    """Debian's PostgreSQL in a fresh data folder, as the `postgres` user, on 127.0.0.1."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not bins:
            _skip("PostgreSQL is not installed (Debian's postgresql package; scripts/setup.sh)")
        if os.geteuid() != 0 or not shutil.which("runuser"):
            _skip("starting PostgreSQL here needs root (to run it as the postgres user)")
        self.bin = Path(bins[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="flairseg-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        self._as_postgres(
            self.bin / "initdb", "-D", self.dir / "data", "-A", "trust", "-U", "postgres"
        )
        self._as_postgres(
            self.bin / "pg_ctl", "-D", self.dir / "data", "-l", self.dir / "log", "-w",
            "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir}", "start",
        )  # fmt: skip
        for db in ("mlflow", "optuna"):
            self._as_postgres(self.bin / "createdb", "-h", "127.0.0.1", "-p", self.port, db)

    def _as_postgres(self, *argv: object) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *map(str, argv)],
            check=True,
            capture_output=True,
            cwd=self.dir,
        )

    def url(self, db: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def close(self) -> None:
        try:
            self._as_postgres(self.bin / "pg_ctl", "-D", self.dir / "data", "-m", "fast", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class MlflowServer:
    def __init__(self, backend: str, artifacts: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                backend,
                "--artifacts-destination",
                str(artifacts),
            ],  # fmt: skip
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 90
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


class RayNode:
    """`ray start ... --block` as a child process: the node lives and dies with it."""

    def __init__(
        self,
        ip: str,
        cpus: int,
        head_port: int | None = None,
        address: str | None = None,
        gpus: int = 0,
    ) -> None:
        """`gpus` declares GPUs to Ray's scheduler; none need be present (trials then use the CPU)."""
        self.ip = ip
        argv = [
            "ray",
            "start",
            "--block",
            f"--node-ip-address={ip}",
            f"--num-cpus={cpus}",
            f"--num-gpus={gpus}",
        ]
        if address is None:
            argv += ["--head", f"--port={head_port}", "--include-dashboard=false"]
        else:
            argv += [f"--address={address}"]
        ray = str(Path(sys.executable).parent / "ray")
        self.proc = subprocess.Popen(
            [ray, *argv[1:]],
            env=RAY_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if address is None:
            wait_port(ip, head_port, self.proc, timeout=90)
            self.address = f"{ip}:{head_port}"

    def kill(self) -> None:
        stop(self.proc, signal.SIGKILL)

    def close(self) -> None:
        stop(self.proc)


def wait_nodes(address: str, n: int, timeout: float = 90) -> None:
    """Wait until the cluster at `address` has `n` alive nodes."""
    code = (
        "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
        "print(sum(n['Alive'] for n in ray.nodes()))"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            [sys.executable, "-c", code, address],
            capture_output=True,
            text=True,
            env=RAY_ENV,
            timeout=60,
        ).stdout.strip()
        if out.isdigit() and int(out) >= n:
            return
        time.sleep(1)
    raise AssertionError(f"the cluster at {address} did not reach {n} nodes")
