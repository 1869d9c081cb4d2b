"""`run_cli(..., hard_exit=True)`: a command that ran to its end skips the interpreter's
teardown and loses nothing on the way out (study.run and the report end this way)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flairseg.errors import FlairsegError, run_cli

PROGRAM = textwrap.dedent(
    """
    import atexit, sys, threading, time
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path
    from flairseg.errors import run_cli

    out = Path(sys.argv[1])

    def main(argv):
        atexit.register(lambda: (out / "atexit").write_text("ran"))
        pool = ThreadPoolExecutor(1)  # its worker is no daemon: it waits for the pool's end
        pool.submit(lambda: (time.sleep(0.2), (out / "pooled").write_text("done")))
        worker = threading.Thread(target=lambda: (time.sleep(0.2), (out / "thread").write_text("done")))
        worker.start()
        sys.stdout.write("last line, unflushed")
        sys.stderr.write("and a warning")
        return int(sys.argv[2])

    run_cli(main, hard_exit=True)
    """
)


@pytest.mark.parametrize("status", [0, 1])
def test_a_hard_exit_keeps_output_threads_and_exit_handlers(tmp_path: Path, status: int) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(tmp_path), str(status)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == status, result.stderr
    assert result.stdout == "last line, unflushed"
    assert result.stderr == "and a warning"
    for name in ("atexit", "pooled", "thread"):
        assert (tmp_path / name).exists(), name


def test_an_entry_point_called_in_process_still_returns_through_systemexit() -> None:
    umask = os.umask(0o022)  # run_cli narrows this process's umask: put it back after
    os.umask(umask)
    try:
        _returns_through_systemexit()
    finally:
        os.umask(umask)


def _returns_through_systemexit() -> None:
    def main(argv: object) -> int:
        return 3

    with pytest.raises(SystemExit) as ended:
        run_cli(main, [])  # hard_exit is off unless a __main__ asks for it
    assert ended.value.code == 3

    def bad(argv: object) -> int:
        raise FlairsegError("no such file: x")

    with pytest.raises(SystemExit) as ended:
        run_cli(bad, [], hard_exit=True)  # a refusal still exits 2 the usual way
    assert ended.value.code == 2
