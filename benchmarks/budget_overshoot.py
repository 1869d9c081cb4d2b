"""How long after its time budget does a study really end? The main job under budgets.

    python -m benchmarks.budget_overshoot [--search combo_alpha] [--budgets 2m 4m]
        [--json FILE] [-- STUDY FLAGS]

Each run is `python -m study.run --search S --time-budget B` in a fresh folder (its own
MLflow store, Optuna storage and Ray) on the synthetic default, with the confirmation on
as the README's main job has it, timed from the process's start to its exit (what a
scheduler sees). It prints, side by side, the budget, the wall time, the overshoot (wall
less budget: negative is early) and its share of the budget, the trials that ran of those
planned, what the budget did (ended the search, cut running trials, cut or skipped the
confirmation), and the answer (objective, test IoU). Flags after `--` go to every run.
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

from study import budget


def run_one(search: str, seconds: float, extra: list[str]) -> dict:
    """One budgeted study in a fresh folder: wall seconds and its --json summary."""
    with tempfile.TemporaryDirectory(prefix="flairseg-budget-") as folder:
        out = Path(folder) / "summary.json"
        argv = [sys.executable, "-m", "study.run", "--search", search, "--json", str(out)]
        argv += ["--time-budget", budget.describe(seconds), "--no-register", *extra]
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_AUTH_MODE": "disabled"}
        started = time.monotonic()
        done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True)
        wall = time.monotonic() - started
        if done.returncode != 0:
            raise SystemExit(f"study failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        summary = json.loads(out.read_text())
    made = summary.get("time_budget") or {}
    confirmation = summary.get("confirmation")
    confirm_line = next(
        (line.strip() for line in done.stdout.splitlines() if "time budget" in line
         and "confirmation" in line), ""
    )  # fmt: skip
    return {
        "budget_s": seconds,
        "wall_s": round(wall, 1),
        "overshoot_s": round(wall - seconds, 1),
        "trials": made.get("trials"),
        "planned": made.get("planned_trials"),
        "ended_search": made.get("ended_search"),
        "cut_running_trials": made.get("cut_running_trials"),
        "confirmed": bool(confirmation and confirmation.get("winner") is not None),
        "confirmation_note": confirm_line,
        "objective": summary.get(summary["objective"]),
        "test_iou": summary.get("test_iou"),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.budget_overshoot")
    p.add_argument("--search", default="combo_alpha")
    p.add_argument("--budgets", nargs="+", default=["2m", "4m"])
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(own)
    rows = [run_one(args.search, budget.parse(b, "--budgets"), extra) for b in args.budgets]
    print(f"{'budget':>7} {'wall s':>7} {'over s':>7} {'over %':>7} {'trials':>7}  "
          "budget ended / cut trials / confirmed   objective  test iou")  # fmt: skip
    for r in rows:
        share = 100 * r["overshoot_s"] / r["budget_s"]
        print(
            f"{budget.describe(r['budget_s']):>7} {r['wall_s']:>7.1f} {r['overshoot_s']:>+7.1f} "
            f"{share:>+6.1f}% {r['trials']:>3}/{r['planned']:<3}  "
            f"{str(r['ended_search']):>5} / {str(r['cut_running_trials']):>5} / "
            f"{str(r['confirmed']):>5}       {r['objective'] or float('nan'):.4f}    "
            f"{r['test_iou'] or float('nan'):.4f}"
        )
        if r["confirmation_note"]:
            print(f"{'':>9}{r['confirmation_note']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
