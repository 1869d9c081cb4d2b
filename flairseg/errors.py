"""Errors a user can fix, and the CLI wrapper that turns them into one line and exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence


class FlairsegError(ValueError):
    """A problem with the user's input: a file, a folder or a setting. The message names it."""


class DataError(FlairsegError):
    """A data folder or file that does not follow the kaggle_3m contract."""


class ConfigError(FlairsegError):
    """A setting with a value that cannot work; the message names the key."""


EXIT_USAGE = 2
PRIVATE_UMASK = 0o007  # no access for others to what a command writes


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block) with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def keep_private() -> None:
    """What this process writes from now on is not readable by others (umask |= 0o007)."""
    os.umask(os.umask(0) | PRIVATE_UMASK)


def run_cli(
    main: Callable[[Sequence[str] | None], int | None],
    argv: Sequence[str] | None = None,
    hard_exit_on_interrupt: bool = False,
    interrupted_status: Callable[[], int] = lambda: 130,
    hard_exit: bool = False,
) -> None:
    """Run a CLI entry point; a `FlairsegError` becomes `error: ...` on stderr and exit status 2.

    What the command writes is not readable by others (the umask gains 0o007): results, run
    databases, checkpoints and reports can hold patient-derived data and the study's setup.

    `hard_exit_on_interrupt`: after a Ctrl+C, the exit handlers run and the process ends
    without the interpreter's teardown, in which a native library caught half-started (Ray's
    core worker) at times crashes (SIGSEGV instead of exit 130). `interrupted_status`: the
    exit status then (130 for a Ctrl+C; a caller that turns other signals into one says).

    `hard_exit`: the same ending after a command that ran to its end (its threads joined
    first, as the interpreter would): the teardown of a process that imported torch, Ray and
    MLflow took 1.3-2.5 s after the last line (measured: a study's driver, 2.5 s),
    paid by every study and every report it writes. Only for a `__main__`: an entry point
    called inside another program returns through SystemExit as before.
    """
    keep_private()
    try:
        code = main(argv)
    except FlairsegError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = interrupted_status()
        if hard_exit_on_interrupt:
            _exit_now(code)
        raise SystemExit(code) from None
    if hard_exit:
        _join_threads()
        _exit_now(code or 0)
    raise SystemExit(code or 0)


def _join_threads() -> None:
    """What the interpreter does first at its exit: `threading._shutdown` runs the callbacks
    that tell pools to stop (concurrent.futures' workers are not daemons and wait for
    one), then joins every thread that is not a daemon."""
    import threading

    threading._shutdown()  # type: ignore[attr-defined]


def _exit_now(code: int) -> None:
    """Run the exit handlers (temporary files, a Ray shutdown), flush, and end the process."""
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
