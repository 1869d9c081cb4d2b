"""Ray nodes on loopback, as child processes: for the cluster tests and benchmarks.

Ray nodes use 127.0.0.2 and 127.0.0.3 (Ray replaces 127.0.0.1 by the network card's
address; other loopback addresses are kept, see ../shared/STACK-NOTES.md). Each node is a
child process in its own process group, which its owner stops.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# RAY_worker_niceness 0, as study.run gives a Ray it starts: trials at the node's niceness,
# not Ray's 15, which starves them on a machine busy with anything else
RAY_ENV = {
    **os.environ,
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_worker_niceness": "0",
}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, proc: subprocess.Popen, timeout: float = 300) -> None:
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


class RayNode:
    """`ray start ... --block` as a child process: the node lives and dies with it."""

    def __init__(
        self,
        ip: str,
        cpus: int,
        head_port: int | None = None,
        address: str | None = None,
        gpus: int = 0,
        env: dict[str, str] | None = None,
    ) -> None:
        """`gpus` declares GPUs to Ray's scheduler; none need be present (trials then use the CPU).
        `env`: variables over RAY_ENV (`RAY_AUTH_MODE=token` and the token: a locked cluster)."""
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
            env={**RAY_ENV, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if address is None:
            wait_port(ip, head_port, self.proc, timeout=300)
            self.address = f"{ip}:{head_port}"

    def kill(self) -> None:
        stop(self.proc, signal.SIGKILL)

    def close(self) -> None:
        # `ray start --block` ends its node on SIGINT (about a second); SIGTERM leaves it
        # running until stop's fallback SIGKILL
        stop(self.proc, signal.SIGINT)


def wait_nodes(
    address: str, n: int, timeout: float = 300, env: dict[str, str] | None = None
) -> None:
    """Wait until the cluster at `address` has `n` alive nodes (`env`: as for RayNode)."""
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
            env={**RAY_ENV, **(env or {})},
            timeout=60,
        ).stdout.strip()
        if out.isdigit() and int(out) >= n:
            return
        time.sleep(1)
    raise AssertionError(f"the cluster at {address} did not reach {n} nodes")
