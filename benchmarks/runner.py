"""Measurements in child processes, each under its own time limit and the run's budget.

A benchmark that runs for minutes on a borrowed GPU must bring back every figure it
measured, whatever fails after it: a child that crashes, hangs or runs out of time
costs its own row and nothing else. Every row is printed and appended to a JSON-lines
file the moment it arrives; failures are kept as rows too (`"error": ...`), so the
record says what is missing and why.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MIN_LIMIT_S = 5.0  # below this a child cannot even import torch: skip it instead


class Stopped(Exception):
    """SIGTERM (e.g. `timeout` in gpu.sh): stop now, keeping what was measured."""


def _on_sigterm(signum, frame) -> None:
    raise Stopped


class Runner:
    """Runs `python -m benchmarks.train_step --child SPEC` processes and keeps their rows.

    `budget_s`: the whole run's wall-clock budget; a child's limit is the smaller of its
    own and what is left, and a child that cannot get `MIN_LIMIT_S` is skipped.
    `rows_path`: a JSON-lines file each row is appended to at once (None: console only).
    """

    def __init__(
        self,
        budget_s: float,
        rows_path: str | None = None,
        on_row: Callable[[], None] | None = None,
    ) -> None:
        self.deadline = time.monotonic() + budget_s
        self.rows_path = Path(rows_path) if rows_path else None
        self.on_row = on_row  # e.g. rewrite the JSON record: a hard kill loses nothing kept
        self.rows: list[dict[str, Any]] = []
        self.failed: list[str] = []
        self._live: list[subprocess.Popen] = []
        signal.signal(signal.SIGTERM, _on_sigterm)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def keep(self, row: dict[str, Any]) -> dict[str, Any]:
        """Record a row (measured or failed): in memory, in the JSON-lines file, on stdout."""
        self.rows.append(row)
        if self.rows_path is not None:
            with self.rows_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        if "error" in row:
            self.failed.append(f"{row['name']} ({row['error']})")
            print(f"  {row['name']}: FAILED: {row['error']}", flush=True)
        elif "images_per_s" in row:
            print(
                f"  {row['name']}: {row['images_per_s']:.1f} images/s ({row['precision']}), "
                f"{row['step_ms']:.1f} ms/step, peak {row['peak_mb']:.0f} MB",
                flush=True,
            )
        else:
            shown = {k: v for k, v in row.items() if k not in ("section", "name")}
            print(f"  {row['name']}: {json.dumps(shown)}", flush=True)
        if self.on_row is not None:
            self.on_row()
        return row

    def run(
        self,
        section: str,
        name: str,
        spec: dict[str, Any],
        limit_s: float,
        env: dict[str, str] | None = None,
    ) -> dict[str, Any] | None:
        """One child; its row (kept), or None when it failed (the failure is kept)."""
        rows = self.run_together(section, [name], [spec], limit_s, env)
        return rows[0]

    def run_together(
        self,
        section: str,
        names: list[str],
        specs: list[dict[str, Any]],
        limit_s: float,
        env: dict[str, str] | None = None,
    ) -> list[dict[str, Any] | None]:
        """Children side by side under one limit (packing); each keeps its own row."""
        limit = min(limit_s, self.left())
        if limit < MIN_LIMIT_S:
            for name in names:
                self.keep({"section": section, "name": name, "error": "skipped: budget spent"})
            return [None] * len(names)
        print(f"  {', '.join(names)} ... (limit {limit:.0f} s)", flush=True)
        procs = [self._start(spec, env) for spec in specs]
        ends = time.monotonic() + limit
        results: list[dict[str, Any] | None] = []
        for name, proc in zip(names, procs, strict=True):
            try:
                proc.wait(timeout=max(0.1, ends - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill(proc)
                proc.wait()
                _, err = _read(proc)
                results.append(self._failed(section, name, f"timed out after {limit:.0f} s", err))
                continue
            out, err = _read(proc)
            if proc.returncode != 0:
                why = f"exit {proc.returncode}: {_last_line(err)}"
                results.append(self._failed(section, name, why, err))
                continue
            try:
                row = json.loads(out.strip().splitlines()[-1])
            except (IndexError, ValueError):  # something else printed last: keep going
                results.append(self._failed(section, name, "exit 0 but no JSON row", err + out))
                continue
            results.append(self.keep({"section": section, "name": name, **row}))
        self._live.clear()
        return results

    def stop_children(self) -> None:
        for proc in self._live:
            self._kill(proc)

    def _start(self, spec: dict[str, Any], env: dict[str, str] | None) -> subprocess.Popen:
        argv = [sys.executable, "-m", "benchmarks.train_step", "--child", json.dumps(spec)]
        # output to files, not pipes: children side by side must never block on a full
        # pipe that nobody reads yet; its own process group, so a timeout takes its
        # workers (compile threads) with it
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # noqa: SIM115  (closed by _read)
        proc = subprocess.Popen(
            argv, stdout=out, stderr=err, text=True, env=env, start_new_session=True
        )
        proc.outputs = (out, err)  # type: ignore[attr-defined]
        self._live.append(proc)
        return proc

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def _failed(self, section: str, name: str, why: str, stderr: str) -> None:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        if tail:
            print(f"--- {name}: the end of its stderr ---\n{tail}\n---", file=sys.stderr)
        self.keep({"section": section, "name": name, "error": why})
        return None


def _read(proc: subprocess.Popen) -> tuple[str, str]:
    """A finished child's stdout and stderr (from its files), which are then closed."""
    texts = []
    for f in proc.outputs:  # type: ignore[attr-defined]
        f.seek(0)
        texts.append(f.read())
        f.close()
    return texts[0], texts[1]


def _last_line(text: str) -> str:
    """The exception line of a traceback (torch adds hints after it), else the last line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", line)]
    return (errors or lines or ["no message"])[-1][:300]
