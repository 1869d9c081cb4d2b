"""Writing a file, or a folder of files, so that a reader sees it complete or not at all."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Yield a temporary file beside `path`; on success it replaces `path`, on error it is removed.

    The file gets the mode open() gives a new file under the process's umask (as every
    other file written here), not mkstemp's 0600, also where it replaces an older file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create(path)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _create(path: Path) -> tuple[int, str]:
    """A new file of a free name beside `path` (`.NAME.XXXXXXXX.tmp`), created as mkstemp
    creates one but with mode 0o666 less the umask, which the kernel applies (reading the
    umask would set it for a moment, under every thread of the process)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    flags |= getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


@contextmanager
def atomic_folder(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder to fill, made beside `dest` (so on its filesystem).

    On success it takes `dest`'s place by rename: it then holds what was written into it
    plus the files of an existing `dest` of other names (hard links, or copies), so a set
    of files replaces its earlier versions at once. On an error, or Ctrl+C, it is removed
    and `dest` is left as it was. The caller checks that an existing `dest` holds only
    plain files it may keep (it is swapped whole).
    """
    dest = Path(os.path.realpath(dest))
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        os.chmod(stage, _folder_mode(dest))
        yield stage
        with _no_interrupt():
            _publish(stage, dest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _folder_mode(dest: Path) -> int:
    """The mode of an existing `dest`, else that of a new folder under the current umask."""
    if dest.is_dir():
        return stat.S_IMODE(dest.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def _publish(stage: Path, dest: Path) -> None:
    """Put `stage` in `dest`'s place, keeping the files of `dest` that `stage` lacks."""
    if not dest.exists():
        os.rename(stage, dest)
        return
    for old in dest.iterdir():
        if not (stage / old.name).exists():
            try:
                os.link(old, stage / old.name)
            except OSError:  # a filesystem without hard links
                shutil.copy2(old, stage / old.name)
    # two renames: only a kill between them (Ctrl+C is held off) leaves dest missing
    backup = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
    os.rename(dest, backup)  # onto an empty folder: allowed
    try:
        os.rename(stage, dest)
    except BaseException:
        os.rename(backup, dest)
        raise
    finally:
        shutil.rmtree(backup, ignore_errors=True)


@contextmanager
def _no_interrupt() -> Iterator[None]:
    """Hold off Ctrl+C (SIGINT) until the block ends, then act on it.

    A handler, not a signal mask: the signal may reach any thread (torch starts some).
    Outside the main thread, where no handler can be set, the block runs unguarded.
    """
    caught: list[object] = []
    try:
        old = signal.signal(signal.SIGINT, lambda *args: caught.append(args))
    except ValueError:
        old = None
    try:
        yield
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
            if caught and callable(old):
                old(signal.SIGINT, None)
