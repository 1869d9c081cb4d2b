"""The array cache behind `flairseg.data.load_slices`: checked when read, rebuilt when bad.

Two kinds of file in `{cache}/arrays` per data set (`fp`: `flairseg.data.fingerprint`,
file names and sizes), named `v{CACHE_VERSION}-{fp[:24]}-...`:

- `...-{S}px.npz`: images, masks, `content` (the digest of what the data files held when
  it was written) and `checksum` (sha256 of content, shapes and array bytes). Read back it
  must have the expected shapes and dtypes, a matching checksum and masks in {0, 1}; if
  not it is damaged: one warning line on stderr, and it is rebuilt. If its `content` is
  not the data's now, a file changed since: it is rebuilt like a miss.
- `...-{folder}-files.json`: per data file its stat (size, mtime, ctime, inode) and the
  sha256 of its bytes, so that `content` costs a stat per file. A file is read and hashed
  again when its stat changed (any write changes its ctime, even one whose mtime is set
  back afterwards) or when it had changed less than `RACY_NS` before it was last hashed
  (a later write could then leave the same timestamps).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np

from flairseg.errors import DataError
from flairseg.files import atomic_write

CACHE_VERSION = 2
RACY_NS = 2_000_000_000  # coarser than any file system's timestamps (FAT: 2 s)
_KEYS = ("images", "masks", "content", "checksum")


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _why(err: BaseException) -> str:
    """An exception as a short single line."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def cache_files(cache: Path, fp: str, root: Path, size: int) -> tuple[Path, Path]:
    """(arrays .npz, content index .json) of the data set `fp` in folder `root` at `size`."""
    folder = Path(cache) / "arrays"
    where = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return (
        folder / f"v{CACHE_VERSION}-{fp[:24]}-{size}px.npz",
        folder / f"v{CACHE_VERSION}-{fp[:24]}-{where}-files.json",
    )


def _read_index(index_file: Path) -> dict[str, list]:
    """{relative path: [stat or None, sha256]} from the index; {} if absent, or damaged (warned)."""
    if not index_file.exists():
        return {}
    try:
        files = json.loads(index_file.read_text())["files"]
        for stat, digest in files.values():
            if not (stat is None or (len(stat) == 4 and all(type(v) is int for v in stat))):
                raise ValueError(f"bad stat {stat!r}")
            if not (isinstance(digest, str) and len(digest) == 64):
                raise ValueError(f"bad digest {digest!r}")
    except Exception as err:  # any failure to read it: hash every file again
        warn(f"cache {index_file} is damaged ({_why(err)}); rebuilding it")
        return {}
    return files


def _file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as err:
        raise DataError(f"{path}: unreadable ({err.strerror or err})") from None


def content_digest(files: list[tuple[str, Path]], root: Path, index_file: Path) -> str:
    """sha256 of every (path relative to `root`, file)'s name and the sha256 of its bytes.

    A file whose stat matches the index is not read; the index is rewritten if anything changed.
    """
    index = _read_index(index_file)
    now = time.time_ns()
    fresh: dict[str, list] = {}
    total = hashlib.sha256()
    for rel, path in files:
        st = os.stat(path)
        stat = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        known = index.get(rel)
        digest = known[1] if known is not None and known[0] == stat else _file_digest(path)
        settled = max(st.st_mtime_ns, st.st_ctime_ns) < now - RACY_NS
        fresh[rel] = [stat if settled else None, digest]
        total.update(f"{rel}\0{digest}\n".encode())
    if fresh != index:
        _write(index_file, lambda f: json.dump({"root": str(root), "files": fresh}, f), "w")
    return total.hexdigest()


def arrays_checksum(images: np.ndarray, masks: np.ndarray, content: str) -> str:
    """sha256 of the content digest, the arrays' shapes and dtypes, and their bytes."""
    head = f"{content}\0{images.shape}{images.dtype}\0{masks.shape}{masks.dtype}\n"
    digest = hashlib.sha256(head.encode())
    digest.update(np.ascontiguousarray(images).data)
    digest.update(np.ascontiguousarray(masks).data)
    return digest.hexdigest()


def _load_checked(file: Path, n: int, size: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(images, masks, content) of a cache file; raises, saying why, unless all checks pass."""
    if not zipfile.is_zipfile(file):
        raise ValueError("not an .npz archive")
    with np.load(file, allow_pickle=False) as stored:
        missing = [key for key in _KEYS if key not in stored.files]
        if missing:
            raise ValueError(f"no {', '.join(missing)} in it")
        content, checksum = str(stored["content"]), str(stored["checksum"])
        images, masks = stored["images"], stored["masks"]
    for name, array, shape in (
        ("images", images, (n, size, size, 3)),
        ("masks", masks, (n, size, size)),
    ):
        if array.shape != shape or array.dtype != np.uint8:
            got = "x".join(map(str, array.shape))
            want = "x".join(map(str, shape))
            raise ValueError(f"{name} are {got} {array.dtype}, expected {want} uint8")
    if arrays_checksum(images, masks, content) != checksum:
        raise ValueError("checksum mismatch")
    if masks.max() > 1:
        raise ValueError(f"masks hold values up to {masks.max()}, expected 0 and 1")
    return images, masks, content


def read_arrays(
    file: Path, n: int, size: int, content: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached (images, masks) for data of `content`, or None: a miss, stale, or damaged (warned)."""
    if not file.exists():
        return None
    try:
        images, masks, stored = _load_checked(file, n, size)
    except Exception as err:  # whatever is wrong with the file, it is rebuilt, never trusted
        warn(f"cache {file} is damaged ({_why(err)}); rebuilding it")
        return None
    return (images, masks) if stored == content else None


def write_arrays(file: Path, images: np.ndarray, masks: np.ndarray, content: str) -> None:
    """Store the arrays with their content digest and checksum, atomically."""
    checksum = arrays_checksum(images, masks, content)
    _write(
        file,
        lambda f: np.savez(
            f, images=images, masks=masks, content=np.array(content), checksum=np.array(checksum)
        ),
    )


def _write(file: Path, fill: Callable[[IO], object], mode: str = "wb") -> None:
    """Write `file` atomically with `fill(f)`; a cache that cannot be written is warned of, not fatal."""
    try:
        with atomic_write(file, mode) as f:
            fill(f)
    except OSError as err:
        warn(f"cannot write cache {file} ({_why(err)}); continuing without it")
