"""A full disk pauses a study as SIGTERM does (study.stops): `--resume` finishes it.

A write that fails for space (a trial's checkpoint, the MLflow or Optuna store, Tune's
state) stops the study with one line naming the folder and what a checkpoint needs; what
was written before stays, and `--resume` goes on from there once there is room.

- In a trial: a checkpoint that cannot be written is not reported to Tune (Tune registers
  a checkpoint only once it is whole, and `study.settled` reads back only checkpoints that
  load), the trial tells the driver through a small named actor (`NoSpaceNotes`) and waits
  to be paused, so Tune and Optuna keep it as running, to be resumed, not as failed.
- In the driver: a Tune callback (study.callbacks.FullDisk) asks the actor at each step;
  a note pauses the study (`stops.pause`: Tune stops every trial at its last checkpoint and
  saves its state). A write of the driver's own that fails for space ends it the same way
  (`is_full`).
"""

from __future__ import annotations

import atexit
import errno
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

EXIT_NO_SPACE = 75  # EX_TEMPFAIL: try again later (once there is room)
ACTOR = "flairseg-no-space"  # one per driver: named actors live in the driver's namespace
WAIT_S = 900.0  # a trial waits this long to be paused before it fails instead
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_FULL_WORDS = ("no space left on device", "database or disk is full", "disk quota exceeded")
_LAST_SIZE: list[int] = []  # the size of the newest checkpoint this trial wrote


RESERVE_BYTES = 16 * 2**20  # kept free for the pause's own writes (Tune's state, closing)
RESERVE_NAME = ".flairseg-reserve"
_RESERVED: list[Path] = []  # this driver's reserve files


def reserve(places: list[str]) -> None:
    """Set RESERVE_BYTES aside on each disk the driver writes to (a file of zeros per
    disk): released when a disk is found full, it gives Tune room to save its state whole
    and the stores room to record the pause. A disk without that much room is refused."""
    try:
        _reserve(places)
    except BaseException:  # refused, or interrupted part way: nothing set aside stays
        release()
        raise
    atexit.register(release)  # whatever way the driver ends, short of SIGKILL


def _reserve(places: list[str]) -> None:
    from flairseg.errors import ConfigError

    devices: set[int] = set()
    for folder in folders(places):
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)  # the Tune folder: the study makes it anyway
        if path.stat().st_dev in devices:
            continue
        devices.add(path.stat().st_dev)
        _forget_stale(path)
        target = path / f"{RESERVE_NAME}-{socket.gethostname()}-{os.getpid()}"
        _RESERVED.append(target)  # before the first byte: an interrupted write is removed too
        try:
            with target.open("wb") as f:
                for _ in range(RESERVE_BYTES // 2**20):
                    f.write(bytes(2**20))
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            if not is_full(err):
                raise
            raise ConfigError(
                f"{folder}: no space left there; a study needs at least "
                f"{_mb(RESERVE_BYTES)} free on it besides its checkpoints"
            ) from None


def _forget_stale(folder: Path) -> None:
    """Remove the reserves a killed driver of this machine left in `folder`."""
    mine = re.compile(rf"{re.escape(RESERVE_NAME)}-{re.escape(socket.gethostname())}-(\d+)")
    for stale in folder.glob(f"{RESERVE_NAME}-*"):
        found = mine.fullmatch(stale.name)  # this host's exactly (not host-b's for host)
        if found is None:
            continue
        try:
            os.kill(int(found.group(1)), 0)
        except ProcessLookupError:
            stale.unlink(missing_ok=True)
        except PermissionError:  # another user's live driver
            continue


def release() -> None:
    """Give the reserve back (a disk found full, or the study's end)."""
    while _RESERVED:
        _RESERVED.pop().unlink(missing_ok=True)


class NoSpace(OSError):
    """A trial that could not write its checkpoint and was not paused in time."""


def is_full(err: BaseException | None) -> bool:
    """Whether `err`, or an error it was raised from or during, is a write that failed for
    space (an OSError's errno, or the words of SQLite, pyarrow, or a trial's traceback)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _FULL_ERRNOS:
            return True
        if any(words in str(err).lower() for words in _FULL_WORDS):
            return True
        err = err.__cause__ or err.__context__
    return False


def folder_size(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def measured(folder: str | Path) -> None:
    """Note the size of a checkpoint just written (what the next one will need)."""
    _LAST_SIZE[:] = [folder_size(folder)]


def fullest(candidates: list[str]) -> str:
    """Of the folders a write went to, the one with the least room left."""
    known = [c for c in candidates if c and Path(c).exists()]
    if not known:
        return candidates[0] if candidates else "?"
    return min(known, key=lambda c: shutil.disk_usage(c).free)


def where(err: BaseException, places: list[str]) -> str:
    """The folder a failed write went to: the one its error names, else the fullest of
    `places` (folders, or SQLite URLs: their database's folder)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and isinstance(err.filename, str):
            return str(Path(err.filename).parent)
        err = err.__cause__ or err.__context__
    return fullest(folders(places))


def folders(places: list[str]) -> list[str]:
    """The folders on this machine of `places`: Tune folders, and SQLite URLs (their
    database's folder); other URLs are not on this machine's disks."""
    found = []
    for place in places:
        if place.startswith("sqlite:///"):
            path = Path(place.removeprefix("sqlite:///").partition("?")[0]).resolve().parent
        elif "://" not in place:
            path = Path(place)
        else:
            continue
        found.append(str(path))
    return found


def note(where: str) -> str:
    """The line a full disk is said in."""
    size = f"; a checkpoint needs about {_mb(_LAST_SIZE[0])}" if _LAST_SIZE else ""
    return f"no space left in {where}{size}"


def _mb(n: int) -> str:
    return f"{max(n / 2**20, 0.1):.1f} MB"


@contextmanager
def checkpointing(trial_folder: str) -> Iterator[None]:
    """Around a trial's checkpoint and report: a write that fails for space pauses the
    study (the driver is told and stops this trial) instead of failing the trial; once
    another trial has found its disk full, this one writes nothing and waits too."""
    hold_if_paused()
    try:
        yield
    except OSError as err:
        if not is_full(err):
            raise
        where = err.filename if isinstance(err.filename, str) else None
        folder = (
            str(Path(where).parent) if where else fullest([trial_folder, tempfile.gettempdir()])
        )
        wait_to_be_paused(note(folder))


def hold_if_paused() -> None:
    """In a trial, before its checkpoint: if another trial has found its disk full, write
    nothing more (the room set aside is for the pause's own writes) and wait to be paused."""
    import ray

    try:
        notes = ray.get_actor(ACTOR)
        said = ray.get(notes.said.remote(), timeout=60)
    except ValueError:  # not started by a study's driver
        return
    except Exception:  # the notes lost (with the driver's node, or Ray shutting down):
        return  # nothing can be known; a full disk is still found at the write itself
    if said:
        wait_to_be_paused(said, tell=False)


def wait_to_be_paused(message: str, tell: bool = True) -> None:
    """Tell the driver (unless it was told), then wait until it stops this trial (or fail
    after WAIT_S)."""
    import ray

    try:
        notes = ray.get_actor(ACTOR)
        if tell:
            ray.get(notes.say.remote(message), timeout=60)
    except Exception:  # not started by a study's driver, or the notes lost: nobody to tell
        raise NoSpace(errno.ENOSPC, message) from None
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        time.sleep(1.0)
    raise NoSpace(errno.ENOSPC, f"{message} (the driver did not pause the study)")


class NoSpaceNotes:
    """The first full disk a trial met, kept for the driver (a Ray actor)."""

    def __init__(self) -> None:
        self.message: str | None = None

    def say(self, message: str) -> None:
        if self.message is None:
            self.message = message

    def said(self) -> str | None:
        return self.message


def start() -> Any:
    """The driver's notes actor (one per driver; the same one again if it exists), on the
    driver's own node: on a cluster, one placed on a worker would be lost with it, and
    every trial's next checkpoint with it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    actor = ray.remote(num_cpus=0)(NoSpaceNotes)
    return actor.options(name=ACTOR, get_if_exists=True, scheduling_strategy=here).remote()


def heard(notes: Any) -> str | None:
    """What a trial said of a full disk, if anything (None also when the actor is gone)."""
    import ray

    try:
        return ray.get(notes.said.remote(), timeout=10)
    except Exception:  # Ray shutting down, or the actor lost with its node: nothing heard
        return None
