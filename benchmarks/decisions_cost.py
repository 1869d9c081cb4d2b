"""What do ordered decisions and the confirmation stage cost? The main job, three ways, side by side.

    python -m benchmarks.decisions_cost [--search combo_alpha] [--json FILE] [-- STUDY FLAGS]

Each run is `python -m study.run --search S` in a fresh folder (its own MLflow store,
Optuna storage and Ray), on the synthetic default, timed as a whole:

- arrival: `--decisions arrival --no-confirm` (the old way: nothing waits, not reproducible);
- fixed: `--decisions fixed --no-confirm` (proposals and ASHA's stops in the trials' order);
- fixed + confirm: the main job as the README gives it (fixed, confirmation on).

It prints the wall times, the search's own time and epochs from each summary, and the
ratios to `arrival`: fixed/arrival is the idle cost of deterministic decisions, the third
line what the confirmation adds. Flags after `--` go to every run (e.g. `--trials 6`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WAYS = {
    "arrival": ["--decisions", "arrival", "--no-confirm"],
    "fixed": ["--decisions", "fixed", "--no-confirm"],
    "fixed + confirm": ["--decisions", "fixed"],
}


def run_one(search: str, flags: list[str], extra: list[str]) -> dict:
    """One study in a fresh folder: wall seconds and its --json summary."""
    with tempfile.TemporaryDirectory(prefix="flairseg-decisions-") as folder:
        out = Path(folder) / "summary.json"
        argv = [sys.executable, "-m", "study.run", "--search", search, "--json", str(out)]
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_AUTH_MODE": "disabled"}
        started = time.monotonic()
        done = subprocess.run(
            argv + flags + extra + ["--no-register"],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.monotonic() - started
        if done.returncode != 0:
            raise SystemExit(f"study failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        summary = json.loads(out.read_text())
    confirmation = summary.get("confirmation") or {}
    return {
        "wall_s": round(wall, 1),
        "search_s": summary["seconds"],
        "confirm_s": confirmation.get("seconds", 0.0),
        "epochs": summary["epochs_spent"],
        "best_trial": summary.get("best_trial"),
        "objective": summary.get(summary["objective"]),
        "test_iou": summary.get("test_iou"),
        "closing_line": done.stdout.strip().splitlines()[-1],  # what the user reads last
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.decisions_cost")
    p.add_argument("--search", default="combo_alpha")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(own)
    rows = {way: run_one(args.search, flags, extra) for way, flags in WAYS.items()}
    base = rows["arrival"]["wall_s"]
    print(f"{'way':<16} {'wall s':>7} {'search s':>9} {'confirm s':>9} {'epochs':>6} "
          f"{'x arrival':>9}  best (objective, test iou)")  # fmt: skip
    for way, r in rows.items():
        print(
            f"{way:<16} {r['wall_s']:>7.1f} {r['search_s']:>9.1f} {r['confirm_s']:>9.1f} "
            f"{r['epochs']:>6} {r['wall_s'] / base:>9.2f}  #{r['best_trial']} "
            f"({r['objective']:.4f}, {r['test_iou']:.4f})"
        )
    for way, r in rows.items():
        print(f"{way}: {r['closing_line']}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"search": args.search, "flags": extra, **rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
