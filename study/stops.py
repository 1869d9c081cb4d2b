"""SIGTERM and SIGHUP pause a study as Ctrl+C does: `--resume` finishes it.

Kubernetes, SLURM, `docker stop`, a node drain and a CronJob's deadline send the driver
SIGTERM; a closed terminal sends SIGHUP. Each is turned into the driver's own SIGINT, so
whatever handles a Ctrl+C at that moment handles it: Tune's handler during the trials
(they stop at their last checkpoint and Tune saves its state), the driver's elsewhere.
The invocation is recorded as interrupted and nothing is left RUNNING. The exit status
says which signal came: 128 + its number (143 for SIGTERM, 129 for SIGHUP; 130 for
Ctrl+C). `ray.init` puts in a SIGTERM handler of its own (an exit mid-run: the study
FAILED and nothing to resume), so `install` runs again once Ray is up.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

PAUSES = (signal.SIGTERM, signal.SIGHUP)
# what paused this driver ("by SIGTERM", or a full disk's line) and its exit status
_CAUGHT: list[tuple[str, int]] = []
_IGNORED: set[int] = set()  # ignored when the driver started (`nohup`: SIGHUP): left so


def reset() -> None:
    """Forget what paused an earlier study of this process (study.api runs several)."""
    _CAUGHT.clear()


def install() -> None:
    """SIGTERM and SIGHUP act as a Ctrl+C from now on (main thread only: Python's rule),
    but for one the driver was started ignoring (`nohup` ignores SIGHUP: a logout must not
    pause a study started so)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in PAUSES:
        if signal.getsignal(sig) is signal.SIG_IGN:
            _IGNORED.add(sig)
        if sig not in _IGNORED:
            signal.signal(sig, _as_interrupt)


def _as_interrupt(signum: int, frame: Any) -> None:
    pause(f"by {signal.Signals(signum).name}", 128 + signum)


def pause(why: str, status: int) -> None:
    """Stop the study as a Ctrl+C does, `why` said and `status` its exit status (a signal,
    or a disk found full: study.diskfull)."""
    if _CAUGHT:  # one pause is enough: a second signal (a hangup often comes twice) must
        return  # not break into Tune's saving its state; SIGKILL stops at once if need be
    record(why, status)
    handler = signal.getsignal(signal.SIGINT)
    if handler in (signal.SIG_IGN, signal.SIG_DFL, None):  # a background job ignores SIGINT
        raise KeyboardInterrupt
    os.kill(os.getpid(), signal.SIGINT)


def record(why: str, status: int) -> None:
    """Note what paused the driver (the first thing only) without stopping anything."""
    if not _CAUGHT:
        _CAUGHT.append((why, status))


def interrupted() -> bool:
    """Whether a pausing signal came (one raised where Python swallows it included)."""
    return bool(_CAUGHT)


def caught() -> str | None:
    """What paused this driver ("by SIGTERM", a full disk's line; None: nothing, or a
    Ctrl+C)."""
    return _CAUGHT[0][0] if _CAUGHT else None


def exit_status(interrupted: int = 130) -> int:
    """128 + the first pausing signal's number (a full disk: 75); `interrupted` (Ctrl+C's)
    when none came."""
    return _CAUGHT[0][1] if _CAUGHT else interrupted
