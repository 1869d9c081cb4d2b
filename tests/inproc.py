"""A command's entry point run in the test's own process, as `python -m MODULE ARGS` runs it.

For checks of what a command does and prints, where a fresh interpreter is not the point:
it saves the interpreter start (seconds of importing torch and MLflow per call). The
command goes through `flairseg.errors.run_cli` as its `__main__` does (errors in one line,
exit 2, the umask it narrows); what it prints to stdout and stderr, logging included, is
captured; the working folder, the umask and the environment it changes are put back.
Tests whose point is a real process (signals, imports, exit of an interpreter) keep
`tests.conftest.run_cli`.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def _logging_to(out: io.StringIO, err: io.StringIO) -> Iterator[None]:
    """Handlers made earlier on this process's stdout or stderr write to `out`/`err` for now:
    a line a command logs is seen as it would be in its own process."""
    handlers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    swapped = []
    for logger in handlers:
        for handler in getattr(logger, "handlers", []):
            if not isinstance(handler, logging.StreamHandler) or isinstance(
                handler, logging.FileHandler
            ):
                continue
            stream = handler.stream
            if stream in (sys.stderr, sys.__stderr__):
                swapped.append((handler, handler.setStream(err)))
            elif stream in (sys.stdout, sys.__stdout__):
                swapped.append((handler, handler.setStream(out)))
    try:
        yield
    finally:
        for handler, stream in swapped:
            handler.setStream(stream)


def call_cli(
    module: str,
    *args: str,
    cwd: Path | None = None,
    umask: int | None = None,
    env: dict[str, str | None] | None = None,
) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` in this process: its exit status, stdout and stderr.
    `umask`: the one it starts with (default: this process's); `env`: variables set for it
    (None unsets one)."""
    from flairseg.errors import run_cli

    main = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    here, saved = Path.cwd(), dict(os.environ)
    mask = os.umask(0 if umask is None else umask)
    if umask is None:
        os.umask(mask)
    code = 0
    try:
        for key, value in (env or {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if cwd is not None:
            os.chdir(cwd)
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            _logging_to(out, err),
        ):
            try:
                run_cli(main, list(args))
            except SystemExit as stop:  # run_cli always ends so
                code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
                if isinstance(stop.code, str):  # sys.exit("message"): the interpreter prints it
                    print(stop.code, file=err)
    finally:
        os.chdir(here)
        os.umask(mask)
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())
