"""What an MLflow outage costs the driver per write: up, refusing, hanging, side by side.

    python -m benchmarks.outbox_stall [--writes 20]

One real MLflow server on loopback (a SQLite store in a temporary folder). The driver's
writes go through `study.outbox.Outbox`, as the trial logger's do. Timed, per write:

- up: a tag written to the server;
- refused: the server killed (connection refused): the first write finds it away, the
  rest are kept on disk until the next retry;
- hanging: a socket that accepts and never answers (a host whose server hangs): the first
  write waits out the outbox's timeout, the rest are kept.

Then the server comes back on its port and the kept writes are replayed (timed).
"""

from __future__ import annotations

import argparse
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from study import outbox, tracking
from study.outbox import Outbox


def _times(box: Outbox, run_id: str, n: int) -> list[float]:
    out = []
    for k in range(n):
        start = time.perf_counter()
        box.set_tag(run_id, f"k{k}", "v")
        out.append(time.perf_counter() - start)
    return out


def _row(name: str, times: list[float]) -> str:
    rest = times[1:] or [0.0]
    return (
        f"{name:<9} first {times[0] * 1000:9.1f} ms   later (median) "
        f"{statistics.median(rest) * 1000:8.2f} ms   all {sum(times):7.2f} s"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--writes", type=int, default=20)
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from cluster import MlflowServer, stop

    root = Path(tempfile.mkdtemp(prefix="flairseg-outbox-"))
    backend = f"sqlite:///{root / 'server.db'}"
    server = MlflowServer(backend, root / "artifacts")
    c = tracking.client(server.url)
    run_id = c.create_run(c.create_experiment("stall")).info.run_id
    print(f"retry every {outbox.RETRY_S:.0f} s; timeout {outbox.TIMEOUT_S} s")
    up = _times(Outbox(server.url, root / "box-up"), run_id, args.writes)
    print(_row("up", up))
    stop(server.proc, signal.SIGKILL)
    refused_box = Outbox(server.url, root / "box-refused")
    print(_row("refused", _times(refused_box, run_id, args.writes)))
    with socket.socket() as hang:  # accepts (the backlog) and never answers
        hang.bind(("127.0.0.1", 0))
        hang.listen(64)
        url = f"http://127.0.0.1:{hang.getsockname()[1]}"
        print(_row("hanging", _times(Outbox(url, root / "box-hang"), run_id, args.writes)))
    back = MlflowServer(backend, root / "artifacts", port=server.port)
    try:
        start = time.perf_counter()
        replayed = refused_box.pending()
        ok = refused_box.flush()
        took = time.perf_counter() - start
        print(f"replay    {replayed} kept writes in {took:.2f} s ({'done' if ok else 'FAILED'})")
    finally:
        back.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
