"""What the array cache's checks cost on a cache hit: before (unchecked) and after, side by side.

    python -m benchmarks.cache_check [--data DIR] [--size 128] [--repeats 7]

`--data` defaults to $FLAIRSEG_LGG_32 (the kaggle_3m folder of lgg-32). The cache goes to
a temporary folder. After one cold load (decode, hash, write), each repeat times, with the
files in the page cache:

- before: what a hit cost before the checks: discover, fingerprint, read the arrays.
- after: `load_slices`, a checked hit: the same, plus a stat per file against the content
  index, the arrays' sha256, their shapes and mask values.
- after, no index: a checked hit whose content index is gone, so every data file is read
  and hashed again (also what hashing every file's bytes on each load would cost).

Medians over the repeats, interleaved, and their ratios to `before`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from flairseg.cache import cache_files
from flairseg.data import discover, fingerprint, load_slices


def unchecked_hit(root: Path, file: Path) -> int:
    """The hit path before the checks: discover, fingerprint, read the arrays."""
    pairs = discover(root)
    fingerprint(pairs, root)
    with np.load(file) as stored:
        images, masks = stored["images"], stored["masks"]
    return len(images) + len(masks)


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("FLAIRSEG_LGG_32"))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if not args.data:
        parser.error("give --data or set FLAIRSEG_LGG_32 to the kaggle_3m folder of lgg-32")
    root = Path(args.data)
    with tempfile.TemporaryDirectory(prefix="cache-check-") as tmp:
        cache = Path(tmp)
        cold = timed(lambda: load_slices(root, args.size, cache=cache))
        pairs = discover(root)
        arrays, index = cache_files(cache, fingerprint(pairs, root), root, args.size)
        files = sum(1 + (p.mask is not None) for p in pairs)
        data_mb = sum(p.stat().st_size for p in root.rglob("*.tif")) / 1e6
        print(
            f"{root}: {len(pairs)} slices, {files} TIFFs ({data_mb:.0f} MB), {args.size} px; "
            f"cache {arrays.stat().st_size / 1e6:.0f} MB; cold load {cold:.2f} s",
            flush=True,
        )
        load_slices(root, args.size, cache=cache)  # settles the index: stats now trusted

        def no_index() -> None:
            index.unlink()
            load_slices(root, args.size, cache=cache)

        runs: dict[str, Callable[[], object]] = {
            "before (unchecked hit)": lambda: unchecked_hit(root, arrays),
            "after (checked hit)": lambda: load_slices(root, args.size, cache=cache),
            "after, no index (rehash all)": no_index,
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                times[name].append(timed(fn))
    base = statistics.median(times["before (unchecked hit)"])
    print(f"{'':32}{'median ms':>10}{'min ms':>9}{'x before':>10}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:32}{median * 1e3:10.1f}{min(values) * 1e3:9.1f}{median / base:10.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
