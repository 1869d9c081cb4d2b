"""A damaged, foreign or stale array cache is never served: real files, damaged on disk.

Each damaged cache must give, on the next load, the arrays a fresh decode gives, with one
warning line on stderr and no traceback; a TIFF changed at the same size must be read
again; a truncated TIFF must cost the CLI one line on stderr and exit 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flairseg.data import decode, discover, load_slices
from tests.conftest import REPO

SIZE = 32


def npz_of(cache: Path, size: int = SIZE) -> Path:
    (file,) = sorted((cache / "arrays").glob(f"*-{size}px.npz"))
    return file


def fresh(root: Path, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    return decode(discover(root), size)


def assert_correct(root: Path, cache: Path) -> None:
    slices = load_slices(root, SIZE, cache=cache)
    images, masks = fresh(root)
    assert np.array_equal(slices.images, images) and np.array_equal(slices.masks, masks)


def assert_one_warning(err: str, file: Path, why: str = "") -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"warning: cache {file} is damaged ("), err
    assert lines[0].endswith("); rebuilding it") and why in lines[0], err


def repack(file: Path, **changes: np.ndarray) -> None:
    """Rewrite a cache file as a valid .npz with some arrays changed; its checksum kept as it was."""
    with np.load(file) as stored:
        arrays = {key: stored[key] for key in stored.files}
    arrays.update(changes)
    with open(file, "wb") as f:
        np.savez(f, **arrays)


def repack_checksummed(file: Path, **changes: np.ndarray) -> None:
    """Like `repack`, but with a checksum that matches the new arrays: only other checks can tell."""
    repack(file, **changes)
    with np.load(file) as stored:
        arrays = {key: stored[key] for key in stored.files}
    if "checksum" in arrays:
        from flairseg.cache import arrays_checksum

        arrays["checksum"] = np.array(
            arrays_checksum(arrays["images"], arrays["masks"], str(arrays["content"]))
        )
        with open(file, "wb") as f:
            np.savez(f, **arrays)


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _zero_length(file: Path) -> None:
    file.write_bytes(b"")


def _partial(file: Path) -> None:
    file.write_bytes(file.read_bytes()[:40])


def _garble(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 2048] = np.random.default_rng(0).bytes(2048)
    file.write_bytes(bytes(data))


def _garble_head(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[:64] = b"garbage!" * 8
    file.write_bytes(bytes(data))


def _flip_in_images(file: Path) -> None:
    """One bit flipped in the pixel bytes of images.npy (past its 128-byte .npy header)."""
    data = bytearray(file.read_bytes())
    start = data.index(b"\x93NUMPY", data.index(b"images.npy")) + 128
    data[start + 1000] ^= 0x01
    file.write_bytes(bytes(data))


def _pixel_changed(file: Path) -> None:
    """A valid .npz whose images differ from what was stored by one pixel value."""
    with np.load(file) as stored:
        images = stored["images"].copy()
    images[0, 5, 5, 1] ^= 0x10
    repack(file, images=images)


DAMAGE = {
    "truncated": _truncate,
    "zero-length": _zero_length,
    "partial": _partial,
    "garbled": _garble,
    "garbled-head": _garble_head,
    "flipped-bit": _flip_in_images,
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_damaged_cache_is_rebuilt_with_one_warning(
    damage: str, tiny_phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cache = tmp_path / "cache"
    load_slices(tiny_phantom, SIZE, cache=cache)
    file = npz_of(cache)
    DAMAGE[damage](file)
    capsys.readouterr()
    assert_correct(tiny_phantom, cache)
    assert_one_warning(capsys.readouterr().err, file)
    assert_correct(tiny_phantom, cache)  # rebuilt: the next load is a quiet hit
    assert capsys.readouterr().err == ""


def test_checksum_catches_what_the_zip_does_not(
    tiny_phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cache = tmp_path / "cache"
    load_slices(tiny_phantom, SIZE, cache=cache)
    file = npz_of(cache)
    _pixel_changed(file)  # a well-formed archive: its zip CRCs match the changed bytes
    capsys.readouterr()
    assert_correct(tiny_phantom, cache)
    assert_one_warning(capsys.readouterr().err, file, "checksum mismatch")


@pytest.mark.parametrize("value", [255, 7])
def test_masks_of_other_values_are_named(
    value: int, tiny_phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cache = tmp_path / "cache"
    load_slices(tiny_phantom, SIZE, cache=cache)
    file = npz_of(cache)
    with np.load(file) as stored:
        masks = stored["masks"]
    assert masks.max() == 1
    repack_checksummed(file, masks=masks * value)
    capsys.readouterr()
    assert_correct(tiny_phantom, cache)
    assert_one_warning(capsys.readouterr().err, file, f"masks hold values up to {value}")


def test_arrays_of_another_size_under_the_right_name(
    tiny_phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cache, other = tmp_path / "cache", tmp_path / "other"
    load_slices(tiny_phantom, SIZE, cache=cache)
    load_slices(tiny_phantom, 16, cache=other)
    file = npz_of(cache)
    file.write_bytes(npz_of(other, 16).read_bytes())  # a valid 16 px cache named 32 px
    capsys.readouterr()
    assert_correct(tiny_phantom, cache)
    assert_one_warning(capsys.readouterr().err, file, "images are 9x16x16x3 uint8, expected")


def _flip_pixel_byte(tif: Path) -> None:
    """Flip one byte of a TIFF's pixel data in place: same size, same name."""
    with Image.open(tif) as im:
        offset = im.tag_v2[273][0]  # StripOffsets: where the first strip's pixels start
    data = bytearray(tif.read_bytes())
    data[offset + 100] ^= 0xFF
    tif.write_bytes(bytes(data))


def test_tiff_changed_at_the_same_size_is_read_again(
    tiny_phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cache = tmp_path / "cache"
    before = load_slices(tiny_phantom, SIZE, cache=cache)
    tif = sorted(tiny_phantom.glob("*/*_2.tif"))[0]
    size = tif.stat().st_size
    _flip_pixel_byte(tif)
    assert tif.stat().st_size == size
    after = load_slices(tiny_phantom, SIZE, cache=cache)
    assert after.fingerprint == before.fingerprint  # the data identity is names and sizes
    assert not np.array_equal(after.images, before.images)
    assert np.array_equal(after.images, fresh(tiny_phantom)[0])
    assert capsys.readouterr().err == ""  # a changed data set is a miss, not a damaged cache


def test_tiff_changed_with_its_mtime_set_back_is_read_again(
    tiny_phantom: Path, tmp_path: Path
) -> None:
    """Once the files' hashes are trusted from their stat, a write that restores mtime is seen."""
    cache = tmp_path / "cache"
    load_slices(tiny_phantom, SIZE, cache=cache)
    time.sleep(2.1)  # older than any timestamp granularity: the next load records trusted stats
    before = load_slices(tiny_phantom, SIZE, cache=cache)
    (index,) = (cache / "arrays").glob("*-files.json")
    settled = index.stat().st_ino
    load_slices(tiny_phantom, SIZE, cache=cache)
    assert index.stat().st_ino == settled  # nothing changed: the index is not rewritten
    tif = sorted(tiny_phantom.glob("*/*_3.tif"))[0]
    st = tif.stat()
    _flip_pixel_byte(tif)
    os.utime(tif, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (tif.stat().st_size, tif.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    after = load_slices(tiny_phantom, SIZE, cache=cache)
    assert not np.array_equal(after.images, before.images)
    assert np.array_equal(after.images, fresh(tiny_phantom)[0])


def test_damaged_content_index_is_rebuilt(
    tiny_phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cache = tmp_path / "cache"
    load_slices(tiny_phantom, SIZE, cache=cache)
    indexes = sorted((cache / "arrays").glob("*-files.json"))
    assert len(indexes) == 1
    indexes[0].write_text('{"root": "x", "files": {"a": [[1, 2], "beef"]}}')
    capsys.readouterr()
    assert_correct(tiny_phantom, cache)
    assert_one_warning(capsys.readouterr().err, indexes[0], "bad stat")


def test_unwritable_cache_warns_and_loads(
    tiny_phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    assert_correct(tiny_phantom, blocker)
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith("warning: cannot write cache ") for line in lines), lines


def train_cli(data: Path, cache: Path) -> subprocess.CompletedProcess:
    """`python -m flairseg.train` on `data`, with Python's own warning filters (none ignored)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run(
        [sys.executable, "-m", "flairseg.train", "--data", str(data), "--image-size", str(SIZE)]
        + ["--width", "4", "--epochs", "1", "--device", "cpu"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**env, "FLAIRSEG_CACHE": str(cache)},
    )


def test_damaged_cache_through_the_cli(tiny_phantom: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_slices(tiny_phantom, SIZE, cache=cache)
    file = npz_of(cache)
    _garble(file)
    result = train_cli(tiny_phantom, cache)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert_one_warning(result.stderr, file)


@pytest.mark.parametrize("keep", [20, 600])
def test_truncated_tiff_is_one_line(keep: int, tiny_phantom: Path, tmp_path: Path) -> None:
    """Cut inside the header, PIL warns of corrupt EXIF data; the user sees only the error."""
    tif = sorted(tiny_phantom.glob("*/*_3.tif"))[0]
    tif.write_bytes(tif.read_bytes()[:keep])
    result = train_cli(tiny_phantom, tmp_path / "cache")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {tif}: unreadable TIFF"), lines[0]
