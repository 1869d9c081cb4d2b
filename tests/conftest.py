"""Shared fixtures: small phantom data sets, an isolated cache, the real LGG sample when present."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from flairseg.phantom import PhantomSpec, write_phantom

# one torch thread per test process (and the CLIs it starts; a Ray trial sets its own from
# its CPUs): two pytest-xdist workers then fill the two cores without oversubscribing them,
# and a machine busy with other work does not stall every step of torch's thread pool
# (seen: the fast tier's in-process training 13 s alone, 290 s beside a running study).
# `default_threads` gives a test torch's own choice back, as the first test process saw it
# (pytest-xdist's workers inherit this process's OMP_NUM_THREADS=1, and that variable).
os.environ.setdefault("FLAIRSEG_TEST_TORCH_THREADS", str(torch.get_num_threads()))
DEFAULT_THREADS = int(os.environ["FLAIRSEG_TEST_TORCH_THREADS"])
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# pytest-xdist's workers (execnet) ignore SIGINT, and an ignored signal stays ignored in a
# child across exec: the drivers the Ctrl+C tests start would never see their SIGINT. A
# handler (unlike SIG_IGN) is reset to the default at exec, so each child's Python installs
# its own KeyboardInterrupt again.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture()
def default_threads() -> Iterator[int]:
    """torch's own number of threads for this test (the machine's cores, or OMP_NUM_THREADS
    as the user set it): for a comparison of float sums whose tolerance was set with it."""
    torch.set_num_threads(DEFAULT_THREADS)
    yield DEFAULT_THREADS
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test (and every CLI it starts) caches under a temporary folder, never ~/.cache."""
    folder = tmp_path_factory.mktemp("flairseg-cache")
    old = os.environ.get("FLAIRSEG_CACHE")
    os.environ["FLAIRSEG_CACHE"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("FLAIRSEG_CACHE", None)
    else:
        os.environ["FLAIRSEG_CACHE"] = old


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 patients x 12 slices at 64 px: big enough to learn on in seconds."""
    return write_phantom(
        tmp_path_factory.mktemp("phantom") / "kaggle_3m", PhantomSpec(12, 12, 64, seed=3)
    )


@pytest.fixture()
def tiny_phantom(tmp_path: Path) -> Path:
    """A fresh, writable 3-patient x 3-slice, 32 px set that a test may damage."""
    return write_phantom(tmp_path / "tiny", PhantomSpec(3, 3, 32, seed=1))


@pytest.fixture(scope="session")
def lgg_sample() -> Path:
    """The real LGG sample (kaggle_3m folder), or skip with the reason."""
    value = os.environ.get("FLAIRSEG_LGG_SAMPLE")
    if not value:
        pytest.skip(
            "FLAIRSEG_LGG_SAMPLE is unset: point it at lgg-sample/kaggle_3m to test on real MRI"
        )
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"FLAIRSEG_LGG_SAMPLE={value} is not a folder")
    return path


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run `python -m ARGS` as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Servers a test started and did not stop (its cleanup timed out, raised or was
    interrupted) are killed here: none outlives the test run (tests/reaper.py)."""
    from tests import reaper

    killed = reaper.reap()
    if killed:
        print(f"\nstopped what tests left running: {', '.join(killed)}")
