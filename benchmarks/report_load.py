"""How fast does the report of a 30-trial study open, and how big is it?

    python -m benchmarks.report_load [--trials 30] [--repeats 3] [--mlflow-uri URI --experiment NAME]

Without `--mlflow-uri` it first runs a real 30-trial study (combo_alpha at 32 px, up to
3 epochs, ASHA) into a temporary folder. It then builds the report and opens it in
headless Chromium (Debian's package) `--repeats` times, reading back two moments the
page records: `first screen` (plotly.js parsed and the figures in the first 1400x900
window drawn) and `all drawn` (every figure drawn; the rest are drawn one after another
once the first screen is up). Also printed: the build time, the file size, and the
Chromium process's wall time (start-up included) as an outer bound.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from flairseg.train import default_data, write_json

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--window-size=1400,900", "--virtual-time-budget=30000", "--dump-dom",
]  # fmt: skip


def make_study(folder: Path, trials: int) -> tuple[str, str]:
    search = {
        "description": "report benchmark",
        "fixed": {"model": "unet", "loss": "combo", "image_size": 32, "unet": {"width": 8}},
        "space": {"alpha": {"uniform": [0.0, 1.0]}, "lr": {"loguniform": [1e-4, 3e-3]}},
        "trials": trials,
        "asha": {"max_epochs": 3, "grace_period": 1, "reduction_factor": 3},
        "concurrency": 2,
        "resources": {"cpus": 1, "gpus": 0},
    }
    path = folder / "report30.yaml"
    path.write_text(yaml.safe_dump(search))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    argv = [
        sys.executable, "-m", "study.run", "--search", str(path), "--data", str(default_data()),
        "--storage", str(folder / "studies"), "--mlflow-uri", uri, "--status-every", "3600",
    ]  # fmt: skip
    subprocess.run(argv, check=True, cwd=folder, stdout=subprocess.DEVNULL)
    return uri, "report30"


def open_once(page: Path, browser: str) -> tuple[int, int, float]:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        started = time.perf_counter()
        dom = subprocess.run(
            [browser, *FLAGS, f"--user-data-dir={profile}", page.resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        wall = time.perf_counter() - started
    first = re.search(r'data-first-screen-ms="(\d+)"', dom)
    drawn = re.search(r'data-all-drawn-ms="(\d+)"', dom)
    if not first or not drawn:
        raise SystemExit("the page did not finish drawing in the browser")
    return int(first.group(1)), int(drawn.group(1)), wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mlflow-uri")
    p.add_argument("--experiment")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        raise SystemExit("needs Debian's chromium (scripts/setup.sh installs it)")
    with tempfile.TemporaryDirectory(prefix="flairseg-report-bench-") as tmp:
        folder = Path(tmp)
        if args.mlflow_uri:
            uri, experiment = args.mlflow_uri, args.experiment
        else:
            started = time.perf_counter()
            uri, experiment = make_study(folder, args.trials)
            print(f"ran a {args.trials}-trial study in {time.perf_counter() - started:.0f} s")
        page = folder / "report.html"
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "dashboards.report", "--mlflow-uri", uri,
             "--experiment", experiment, "--out", str(page)],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        build_s = time.perf_counter() - started
        size_mb = page.stat().st_size / 1e6
        runs = [open_once(page, browser) for _ in range(args.repeats)]
    first = statistics.median(r[0] for r in runs)
    drawn = statistics.median(r[1] for r in runs)
    wall = statistics.median(r[2] for r in runs)
    print(f"report of {experiment}: {size_mb:.1f} MB, built in {build_s:.1f} s")
    print(f"in headless Chromium, median of {args.repeats}:")
    print(f"  first screen drawn  {first / 1000:.2f} s")
    print(f"  every figure drawn  {drawn / 1000:.2f} s")
    print(f"  browser process     {wall:.2f} s (start-up included)")
    if args.json:
        write_json(
            args.json,
            {
                "size_mb": round(size_mb, 2),
                "build_s": round(build_s, 2),
                "first_screen_s": first / 1000,
                "all_drawn_s": drawn / 1000,
                "browser_wall_s": round(wall, 2),
                "runs": runs,
            },
        )


if __name__ == "__main__":
    main()
