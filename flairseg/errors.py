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
) -> None:
    """Run a CLI entry point; a `FlairsegError` becomes `error: ...` on stderr and exit status 2.

    What the command writes is not readable by others (the umask gains 0o007): results, run
    databases, checkpoints and reports can hold patient-derived data and the study's setup.

    `hard_exit_on_interrupt`: after a Ctrl+C, the exit handlers run and the process ends
    without the interpreter's teardown, in which a native library caught half-started (Ray's
    core worker) at times crashes (SIGSEGV instead of exit 130). `interrupted_status`: the
    exit status then (130 for a Ctrl+C; a caller that turns other signals into one says).
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
    raise SystemExit(code or 0)


def _exit_now(code: int) -> None:
    """Run the exit handlers (temporary files, a Ray shutdown), flush, and end the process."""
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
