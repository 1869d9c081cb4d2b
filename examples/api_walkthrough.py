"""A study from Python, as in a notebook: run it, read its trials as a table, plot one
figure, open the report. Run from the project's root:

    .venv/bin/python examples/api_walkthrough.py [--out FOLDER] [--open]

It runs a small study on the synthetic default (3 trials of up to 3 epochs at 32 px, about
a minute on a laptop) with its stores in FOLDER (default: a new temporary folder), prints
the answer and the trials, writes `lr_vs_iou.html` (each trial's learning rate against its
best val IoU) beside them, and prints where the report is (`--open`: in the browser).
"""

from __future__ import annotations

import argparse
import tempfile
import webbrowser
from pathlib import Path

import plotly.express as px

from study import api


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="where the study's stores go (default: a temporary folder)")
    p.add_argument("--open", action="store_true", help="open the report in the browser")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="flairseg-walkthrough-"))
    out.mkdir(parents=True, exist_ok=True)

    # 1. run a study: each keyword is the flag of the same name (--image-size 32 ...)
    result = api.run(
        "combo_alpha",
        study="walkthrough",
        trials=3,
        max_epochs=3,
        image_size=32,
        confirm=False,
        storage=str(out / "studies"),
        mlflow_uri=f"sqlite:///{out / 'mlflow.db'}",
    )
    print(f"\nanswer: trial #{result.best_trial}, {result.objective} {result.best_value:.4f}")
    print(f"test IoU {result.scores.get('test_iou', float('nan')):.4f}; {result.trial_counts}")

    # 2. the trials as a pandas DataFrame: one row per trial, params and final metrics
    frame = result.trials()
    print(frame[["trial", "status", "epochs", "params.lr", "objective_best"]].to_string())

    # 3. one figure of your own
    figure = px.scatter(
        frame, x="params.lr", y="objective_best", log_x=True, hover_name="name",
        title="learning rate against the best val IoU each trial reached",
    )  # fmt: skip
    figure.write_html(out / "lr_vs_iou.html")
    print(f"figure: {out / 'lr_vs_iou.html'}")

    # 4. the study's own report
    print(f"report: {result.report}")
    if args.open and result.report:
        webbrowser.open(Path(result.report).as_uri())


if __name__ == "__main__":
    main()
